"""Pump anomaly detection through the whole chain: a firmware-sim PLC whose pump 1 bearing starts to
fail, `edge-agent run` polling it over Modbus TCP, the pump processor calibrating on the pump's own
normal duty and raising `pump_anomaly`, and the event arriving at a real Mosquitto.

The plant runs 20x faster than real time and the agent samples every 0.05 s, so one sample is one
model second: the pump calibrates on ~110 s of night duty (a steady operating point, which a short
calibration covers; a pump that follows demand needs a day, see test_pump_detector.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.plant import running_plant
from tests.support.testing import (
    AGENT_GATEWAY,
    AGENT_SITE,
    FAST_CALIBRATING_PUMP,
    demo_devices,
    write_agent_config,
)

pytestmark = pytest.mark.slow

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
SPEED = 20.0  # model seconds per wall second
FAULT_AT_S = 250  # model time of the bearing fault

SCENARIO = f"""
[scenario]
name = "pump1-bearing-live"
description = "pump 1's bearing fails at {FAULT_AT_S} s (night duty, steady)"
start_time = "03:00"
seed = 5
speed = {SPEED}

[[events]]
at = "{FAULT_AT_S}s"
fault = "bearing_wear"
pump = 1
severity = 1.0
ramp = "5s"
"""


def anomalies(messages: Sequence[Received]) -> list[dict[str, Any]]:
    return [
        event
        for m in messages if m.topic == f"{TOPIC}/events"
        for event in m.json()["events"] if event["kind"] == "pump_anomaly"
    ]  # fmt: skip


def test_a_failing_bearing_on_a_live_plc_reaches_the_broker_as_a_named_pump_anomaly(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    started = time.monotonic()  # the plant's clock starts a little later
    with running_plant(seed=5, scenario=scenario) as plant:
        devices = demo_devices(plant.port, poll_interval_ms=50)
        config = write_agent_config(
            tmp_path, broker_port=mosquitto.port, devices=devices, models=FAST_CALIBRATING_PUMP
        )
        with (
            Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/events") as sub,
            running_agent(config) as agent,
        ):
            armed = agent.wait_status(
                lambda s: any(
                    p["name"] == "pump_anomaly"
                    and p["health"].get("pumps", {}).get("pump1", {}).get("state") == "armed"
                    for p in s["processors"]
                ),
                timeout=60,
            )
            pump = next(p for p in armed["processors"] if p["name"] == "pump_anomaly")
            calibration = pump["health"]["pumps"]["pump1"]["calibration"]
            assert calibration["version"] == 1
            assert calibration["rows"] >= 108
            assert not anomalies(sub.snapshot()), "alarm on normal duty before the fault"

            got = sub.wait_until(anomalies, timeout=FAULT_AT_S / SPEED + 60)
            assert time.monotonic() - started >= FAULT_AT_S / SPEED, "alarm before the fault"
            event = anomalies(got)[0]
            detail = event["detail"]
            assert event["source"] == "pump1"
            assert detail["calibration_version"] == 1
            # A worn bearing shakes and adds friction: the strongest channel named is a vibration or
            # the motor current, and a vibration is among them. The second of the two named may be a
            # signal the calibration predicts from those (its residual rises with theirs): seen once
            # on a loaded machine, ['vibration_x', 'speed'], the plant's speed unchanged by the fault;
            # and ['motor_current', 'vibration_x'] in another run.
            named = [signal["signal"] for signal in detail["signals"]]
            assert named[0] in {"vibration_x", "vibration_y", "motor_current"}, named
            assert any(name.startswith("vibration") for name in named), named
            assert len(named) <= 2, named
            assert "vibration" in detail["explanation"]
            status = agent.status()
            pump = next(p for p in status["processors"] if p["name"] == "pump_anomaly")
            assert pump["health"]["pumps"]["pump1"]["state"] == "alarm"
