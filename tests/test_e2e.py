"""End to end, all real: firmware-sim PLC -> `edge-agent run` -> Mosquitto -> a subscriber.

These are the promises a central data team relies on: every reading arrives, in order, with the
right values and units; each payload matches the published schema; a stopped agent leaves
nothing behind in its outbox; an outage or a dead PLC is visible rather than silent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.plant import Plant, running_plant
from tests.support.testing import STATUS_SCHEMA, demo_devices, free_port, outbox_last_seqs, write_agent_config
from water_edge.buffer.stats import read_stats

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "payload.schema.json").read_text())
TOPIC = "water/test-site/gw-test"
# The demo's PLC polled 5x as often as the demo's 1 s: the polls the tests wait for come sooner.
POLL_MS = 200


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=7) as running:
        yield running


def by_stream(messages: list[Received]) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in messages:
        if message.topic.endswith("/status"):
            continue
        body = message.json()
        assert message.topic == f"{TOPIC}/{body['stream']}"
        streams[body["stream"]].append(body)
    return streams


def said_offline(messages: list[Received]) -> bool:
    """The agent's retained status said `offline` among the messages."""
    return any(m.topic == f"{TOPIC}/status" and m.json()["state"] == "offline" for m in messages)


def demo_tags() -> dict[str, str]:
    """tag name -> unit, as the demo config declares them."""
    import tomllib

    config = tomllib.loads((ROOT / "deploy" / "demo.toml").read_text())
    return {t["name"]: t.get("unit", "") for t in config["devices"][0]["tags"]}


def test_every_reading_reaches_the_broker_in_order_with_values_and_units(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = write_agent_config(
        tmp_path, broker_port=mosquitto.port, devices=demo_devices(plant.port, poll_interval_ms=POLL_MS)
    )
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub, running_agent(config) as agent:
        sub.wait_for(5, timeout=20, topic=f"{TOPIC}/pump-station")
        status = agent.wait_status(lambda s: s["drivers"][0]["polls"] >= 5)
        cli = subprocess.run(
            [sys.executable, "-m", "water_edge.agent.cli", "status", "-c", str(config), "--json"],
            capture_output=True,
            check=True,
            text=True,
        )
        assert agent.stop() == 0
        # The retained offline status is the stop's last message, after agent_stopped: wait for both.
        messages = sub.wait_until(
            lambda ms: any(b'"agent_stopped"' in m.payload for m in ms) and said_offline(ms), timeout=10
        )
        retained_status = [m.json()["state"] for m in messages if m.topic == f"{TOPIC}/status"]

    driver = status["drivers"][0]
    assert (driver["name"], driver["state"], driver["bad_readings"]) == ("pump-station", "up", 0)
    assert json.loads(cli.stdout)["drivers"][0]["name"] == "pump-station"
    jsonschema.validate(json.loads(cli.stdout), STATUS_SCHEMA)  # `status --json` as documented

    for message in messages:
        if not message.topic.endswith("/status"):
            jsonschema.validate(message.json(), SCHEMA)
    streams = by_stream(messages)
    station = streams["pump-station"]
    # seq: +1 per message per stream from the first message of a fresh outbox; no gap, no repeat
    assert [m["seq"] for m in station] == list(range(1, len(station) + 1))
    assert [m["seq"] for m in streams["events"]] == list(range(1, len(streams["events"]) + 1))
    kinds = [e["kind"] for m in streams["events"] for e in m["events"]]
    assert kinds[0] == "agent_started"
    assert kinds[-1] == "agent_stopped"

    units = demo_tags()
    last_ts: dict[str, int] = {}
    polls = 0
    for body in station:
        by_tag = {r["tag"]: r for r in body["readings"]}
        # whole polls only: every configured tag once in each message
        if len(body["readings"]) == len(units):
            polls += 1
            assert set(by_tag) == set(units)
        for r in body["readings"]:
            assert r["quality"] == "good", r
            assert r["unit"] == units[r["tag"]]
            assert r["ts"] > last_ts.get(r["tag"], 0), "readings of a tag arrive in time order"
            last_ts[r["tag"]] = r["ts"]
        if "station.demand" in by_tag and "station.demand_cdab" in by_tag:
            # the same register value sent word-swapped decodes to the same number
            assert by_tag["station.demand_cdab"]["value"] == pytest.approx(
                by_tag["station.demand"]["value"], rel=1e-6
            )
        if "station.tank_level" in by_tag and "station.tank_level_cm" in by_tag:
            assert by_tag["station.tank_level_cm"]["value"] == pytest.approx(
                by_tag["station.tank_level"]["value"], abs=0.011
            )
        if "station.name" in by_tag:
            assert by_tag["station.name"]["value"] == "PS-NORTH"
    assert polls >= 5
    flows = [r["value"] for b in station for r in b["readings"] if r["tag"].endswith(".flow")]
    assert len(set(flows)) > 1, "live values change between polls"
    assert all(0 <= f < 5000 for f in flows)

    # the centre saw the clean shutdown, and nothing is left unsent
    assert retained_status[0] == "online"
    assert retained_status[-1] == "offline"
    stats = read_stats(config.parent / "state" / "outbox.sqlite")
    assert (stats.rows, stats.readings) == (0, 0)


def test_broker_down_at_start_then_up_loses_nothing(plant: Plant, tmp_path: Path) -> None:
    broker = Mosquitto()  # configured, not started: connections are refused
    config = write_agent_config(
        tmp_path,
        broker_port=broker.port,
        devices=demo_devices(plant.port, poll_interval_ms=POLL_MS),
        uplink={"reconnect_max_s": 0.5},
    )
    try:
        with running_agent(config) as agent:
            down = agent.wait_status(lambda s: s["pipeline"]["committed_readings"] >= 3 * 43)
            assert down["uplink"]["state"] != "online"
            assert down["uplink"]["last_error"]
            buffered = agent.wait_status(lambda s: s["buffer"].get("rows", 0) >= 3)["buffer"]["rows"]
            broker.start()
            with Subscriber(broker.host, broker.port, f"{TOPIC}/#") as sub:
                agent.wait_status(lambda s: s["uplink"]["state"] == "online")
                # live polls keep arriving once the broker is back
                sub.wait_until(lambda ms: len(by_stream(ms)["pump-station"]) >= 2, timeout=15)
                assert agent.stop() == 0
                sub.wait_until(lambda ms: any(b'"agent_stopped"' in m.payload for m in ms), timeout=15)
    finally:
        broker.close()
    assert buffered >= 3
    # Everything committed while the broker was away was published and acknowledged (the
    # persistent-session test below checks every seq arrives; this one that nothing is left).
    assert read_stats(config.parent / "state" / "outbox.sqlite").rows == 0


def test_buffered_backlog_is_delivered_in_full_after_the_outage(plant: Plant, tmp_path: Path) -> None:
    """A persistent-session subscriber sees every seq from 1: the backlog is complete.

    `agent_stopped` is no end marker here: it is a live row, and live rows go out before the
    backlog (agent/uplink/lanes.py), so a stop right after the reconnect publishes it before the
    buffered rows. The subscriber waits for every seq the agent ever gave (the outbox's own count).
    """
    broker = Mosquitto(persistence=True)
    config = write_agent_config(
        tmp_path,
        broker_port=broker.port,
        devices=demo_devices(plant.port, poll_interval_ms=POLL_MS),
        uplink={"reconnect_max_s": 0.5},
    )
    try:
        broker.start()
        sub = Subscriber(broker.host, broker.port, f"{TOPIC}/#", session="central-sub").start()
        sub.stop()  # the broker now queues QoS 1 messages for this session
        broker.stop()
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["buffer"].get("rows", 0) >= 5)
            broker.start()
            agent.wait_status(lambda s: s["uplink"]["state"] == "online")
            assert agent.stop() == 0
        assert read_stats(config.parent / "state" / "outbox.sqlite").rows == 0, "all acknowledged"
        last = outbox_last_seqs(config.parent / "state" / "outbox.sqlite")

        def delivered(ms: list[Received]) -> dict[str, set[int]]:
            return {stream: {m["seq"] for m in bodies} for stream, bodies in by_stream(ms).items()}

        with Subscriber(broker.host, broker.port, f"{TOPIC}/#", session="central-sub") as sub:
            sub.wait_until(
                lambda ms: all(set(range(1, n + 1)) <= delivered(ms).get(s, set()) for s, n in last.items()),
                timeout=15,
            )
    finally:
        broker.close()
    assert last["pump-station"] >= 5
    assert set(delivered(sub.snapshot())) == set(last), "no stream but the agent's"


def test_unreachable_plc_is_reported_as_bad_readings_and_an_event(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    dead_port = free_port()
    config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=demo_devices(dead_port))
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub, running_agent(config) as agent:
        status = agent.wait_status(lambda s: s["drivers"][0]["polls"] >= 3)
        sub.wait_until(lambda ms: len(by_stream(ms)["pump-station"]) >= 2, timeout=15)
        assert agent.stop() == 0
        messages = sub.snapshot()
    assert status["drivers"][0]["state"] == "down"
    assert "refused" in (status["drivers"][0]["last_error"] or "").lower()
    jsonschema.validate(status, STATUS_SCHEMA)
    streams = by_stream(messages)
    readings = [r for m in streams["pump-station"] for r in m["readings"]]
    assert readings
    assert all(r["quality"] == "bad" and r["value"] is None and r["reason"] for r in readings)
    kinds = [e["kind"] for m in streams["events"] for e in m["events"]]
    assert "driver_down" in kinds
