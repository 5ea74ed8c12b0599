"""A device's `driver_down`/`driver_up` pair across an agent restart (a real agent process, a real
PLC simulator that comes up while the agent is stopped, Mosquitto).

The centre tracks each device by the pair. Before, a device down when the agent stopped and answering
after its restart never got its `driver_up`: a fresh runner had no "down" to come back from, so the
centre showed it down for good.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.plant import running_plant
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, demo_devices, free_port, write_agent_config

EVENTS = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/events"


def device_events(messages: list[Received]) -> list[dict[str, Any]]:
    return [
        e
        for m in messages
        if m.topic == EVENTS
        for e in m.json()["events"]
        if e["kind"] in ("driver_down", "driver_up")
    ]


def test_a_device_down_when_the_agent_stopped_gets_its_driver_up_after_the_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=demo_devices(port))
    record = config.parent / "state" / "devices_down.json"
    with Subscriber(mosquitto.host, mosquitto.port, EVENTS) as sub:
        with running_agent(config) as agent:  # no PLC on that port yet
            sub.wait_until(device_events, timeout=30)
            assert agent.stop() == 0
        assert list(json.loads(record.read_text())) == ["pump-station"]
        (down,) = device_events(sub.messages)
        assert (down["kind"], down["source"]) == ("driver_down", "pump-station")

        with running_plant(seed=4, port=port), running_agent(config) as again:
            sub.wait_until(lambda ms: len(device_events(ms)) >= 2, timeout=30)
            status = again.wait_status(lambda s: s["drivers"][0]["state"] == "up", timeout=30)
            assert again.stop() == 0
    down, up = device_events(sub.messages)
    assert (up["kind"], up["source"]) == ("driver_up", "pump-station")
    assert up["detail"]["down_before_restart"] is True
    assert up["detail"]["down_for_s"] > 0
    assert json.loads(record.read_text()) == {}
    assert status["drivers"][0]["last_error"] is None


def test_a_device_still_down_after_the_restart_is_not_reported_down_twice(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=demo_devices(port))
    with Subscriber(mosquitto.host, mosquitto.port, EVENTS) as sub:
        for _ in range(2):
            with running_agent(config) as agent:
                status = agent.wait_status(
                    lambda s: s["drivers"][0]["failures"] > 0 and s["uplink"]["readings_acked"] > 0,
                    timeout=30,
                )
                assert agent.stop() == 0
    assert [e["kind"] for e in device_events(sub.messages)] == ["driver_down"]
    assert status["drivers"][0]["state"] == "down"
