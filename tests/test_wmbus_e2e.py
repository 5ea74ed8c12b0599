"""Wireless meters through the whole chain: firmware-sim's meters broadcasting encrypted telegrams,
heard by two receivers of one device (its simulated iM871A on a pseudo-terminal and its rtl_wmbus
TCP stream), `edge-agent run` with the wmbus driver (one key from a secret file) and the meter
processor, and a tamper alarm starting and clearing at a real Mosquitto. `edge-agent probe --listen`
lists every meter in range, and which receiver heard it, for commissioning."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.plant import running_plant
from tests.support.testing import write_agent_config

TOPIC = "water/test-site/gw-test"
SCENARIO = """
[scenario]
name = "wmbus-tamper"
seed = 9

[components.wmbus]
meters = 4
interval_s = 1.0
compact_share = 0.0
security = "mixed"

[[events]]
at = "4s"
component = "wmbus"
meter = 1
meter_fault = "tamper"

[[events]]
at = "9s"
component = "wmbus"
meter = 1
meter_fault = "clear"
"""


def alarms(messages: Sequence[Received]) -> list[dict[str, Any]]:
    return [
        event
        for m in messages if m.topic == f"{TOPIC}/events"
        for event in m.json()["events"] if event["kind"] == "meter_alarm"
    ]  # fmt: skip


def devices(air: dict[str, Any], key_file: Path) -> str:
    meters = air["meters"]
    text = f"""
[[devices]]
name = "wmeters"
kind = "wmbus"

[[devices.receivers]]
name = "roof"
receiver = "im871a"
port = "{air["path"]}"
link_modes = ["T1"]

[[devices.receivers]]
name = "cellar"
receiver = "rtlwmbus"
host = "{air["rtlwmbus"]["host"]}"
tcp_port = {air["rtlwmbus"]["port"]}
link_modes = ["T1", "C1"]
"""
    for index in (0, 1, 2):
        key = f'{{ file = "{key_file}" }}' if index == 0 else f'"{meters[index]["key"]}"'
        text += f"""
[[devices.meters]]
name = "flat{index}"
id = "{meters[index]["id"]}"
key = {key}
alarm_bits = [{{ record = "error_flags", bit = 2, alarm = "tamper" }}]
"""
    return text


GROUP = """
[[models.meter]]
name = "block-a"
device = "wmeters"
"""


def test_tamper_on_an_encrypted_meter_reaches_the_broker_and_clears(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    with running_plant(seed=9, scenario=scenario, components="wmbus", workdir=tmp_path) as plant:
        air: dict[str, Any] = plant.endpoints["wmbus"]
        meters = air["meters"]
        key_file = tmp_path / "flat0.key"
        key_file.write_text(meters[0]["key"])
        key_file.chmod(0o600)
        config = write_agent_config(
            tmp_path, broker_port=mosquitto.port, devices=devices(air, key_file), extra=GROUP
        )
        with (
            Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub,
            running_agent(config) as agent,
        ):
            got = sub.wait_until(lambda ms: len(alarms(ms)) >= 2, timeout=40)
            started, cleared = alarms(got)[:2]
            assert (started["source"], started["detail"]["alarm"], started["detail"]["state"]) == (
                "flat1", "tamper", "start",
            )  # fmt: skip
            assert (cleared["detail"]["alarm"], cleared["detail"]["state"]) == ("tamper", "clear")
            readings = [r for m in got if m.topic == f"{TOPIC}/wmeters" for r in m.json()["readings"]]
            for flat in ("flat0", "flat1", "flat2"):
                assert any(r["tag"] == f"{flat}.volume" and r["quality"] == "good" for r in readings), flat
            status = agent.status()
            device = next(d for d in status["drivers"] if d["name"] == "wmeters")
            assert device["driver"]["decoded"] > 3
            assert device["driver"]["duplicates"] > 0
            assert [r["name"] for r in device["driver"]["receivers"] if r["open"]] == ["roof", "cellar"]
            assert meters[0]["key"].lower() not in json.dumps(status).lower()
            assert meters[0]["key"].lower() not in agent.log().lower()
        listen = subprocess.run(
            [sys.executable, "-m", "water_edge.agent.cli", "probe", "-c", str(config), "wmeters",
             "--listen", "4", "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert listen.returncode == 0, listen.stderr
    heard = {row["heard"]: row for row in map(json.loads, listen.stdout.splitlines())}
    assert set(heard) == {m["id"] for m in meters}
    assert heard[meters[3]["id"]]["configured"] is None
    # Not in the config and the device without listen = true: still found encrypted by the probe.
    assert heard[meters[3]["id"]]["encrypted"] is True
    assert heard[meters[0]["id"]]["encrypted"] is True
    assert heard[meters[0]["id"]]["configured"] == "flat0"
    assert heard[meters[0]["id"]]["total_volume_m3"] is not None
    assert set(heard[meters[0]["id"]]["receivers"]) == {"roof", "cellar"}
