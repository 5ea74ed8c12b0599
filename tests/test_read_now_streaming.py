"""The signed `read_now` command on streaming devices: answered from the latest readings their
streams delivered, never by a second read beside the stream (docs/security.md, "read_now").

A second read on a wireless M-Bus receiver's byte stream crashed it (asyncio allows one reader) and
took the device down for a backoff, every time; on an OPC UA subscription it sent Read results the
subscription had not (past deadbands, out of order with the publishes). Real parts throughout:
firmware-sim's meters on its rtl_wmbus TCP stream and its OPC UA server, `edge-agent run`,
Mosquitto, and an operator signing commands with its own Ed25519 key; a hydrophone WAV played by
the audio driver; a polled device (firmware-sim's wired M-Bus bus) read between its polls, never
beside one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy.io import wavfile
from structlog.testing import capture_logs

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Publisher, Received, Subscriber
from tests.support.commands import command_results, events, operator_security
from tests.support.mbus_sim import bus_config, running_bus
from tests.support.plant import Plant, running_plant
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, eventually, write_agent_config
from tests.support.wmbus_air import Air, rtlwmbus_config, rtlwmbus_device
from water_edge.agent.remote.result import MAX_DETAIL_BYTES
from water_edge.agent.supervisor import DeviceRunner, bound_latest
from water_edge.core.envelope import sign
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Event, Reading
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.driver import AudioDriver
from water_edge.drivers.mbus.config import MbusConfig
from water_edge.drivers.mbus.driver import MbusDriver
from water_edge.drivers.wmbus.driver import WmbusDriver

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
TARGET = f"{AGENT_SITE}/{AGENT_GATEWAY}"
UA_TAGS = ("pump1.flow", "pump1.speed")
SCENARIO = """
[scenario]
name = "meters-every-second"
seed = 4

[components.wmbus]
meters = 3
interval_s = 1.0
compact_share = 0.0
"""


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    workdir = tmp_path_factory.mktemp("plant")
    scenario = workdir / "scenario.toml"
    scenario.write_text(SCENARIO)
    # OPC UA on a free port, beside a demo on 4840.
    with running_plant(
        seed=4, scenario=scenario, components="wmbus,opcua", workdir=workdir, opcua_port=0
    ) as p:
        yield p


def readings(messages: list[Received], stream: str) -> list[dict[str, Any]]:
    return [r for m in messages if m.topic == f"{TOPIC}/{stream}" for r in m.json()["readings"]]


def devices(plant: Plant) -> str:
    air: dict[str, Any] = plant.endpoints["wmbus"]
    text = rtlwmbus_device(air, {f"flat{index}": air["meters"][index] for index in (0, 1)})
    text += f"""
[[devices]]
name = "ua"
kind = "opcua"
endpoint = "{plant.endpoints["opcua"]["url"]}"
mode = "subscribe"
publishing_interval_ms = 200
"""
    for tag in UA_TAGS:
        pump, what = tag.split(".")
        text += f"""
[[devices.tags]]
name = "{tag}"
path = "PumpStation/{pump.capitalize()}/{what.capitalize()}"
"""
    return text


def test_read_now_leaves_streaming_devices_up_and_answers_their_latest_readings(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    ops = Ed25519PrivateKey.generate()
    security = operator_security(ops, ["read_now"])
    config = write_agent_config(
        tmp_path, broker_port=mosquitto.port, devices=devices(plant), security=security
    )
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub,
        Publisher(mosquitto.host, mosquitto.port, protocol=paho.MQTTv5) as operator,
        running_agent(config) as agent,
    ):
        agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
        # Both meters heard and both tags published: there is something to answer with.
        sub.wait_until(
            lambda ms: (
                {"flat0.volume", "flat1.volume"}
                <= {r["tag"] for r in readings(ms, "wmeters") if r["quality"] == "good"}
                and set(UA_TAGS) <= {r["tag"] for r in readings(ms, "ua") if r["quality"] == "good"}
            ),
            timeout=40,
        )
        for args in (None, {"devices": ["wmeters"]}, {"devices": ["ua", "nowhere"]}):
            operator.publish(f"{TOPIC}/cmd/read_now", sign(ops, "control-room", "read_now", TARGET, args))
        sub.wait_until(lambda ms: len(command_results(ms)) >= 3, timeout=20)
        answered = len(sub.snapshot())
        # What the devices read after the commands: still good, the devices never went down.
        got = sub.wait_until(
            lambda ms: (
                {"flat0.volume", "flat1.volume"}
                <= {r["tag"] for r in readings(ms[answered:], "wmeters") if r["quality"] == "good"}
            ),
            timeout=40,
        )
        status = agent.status()
        log = agent.log()
    # The devices' own reading undisturbed: never down, no receiver lost, nothing crashed.
    assert "receiver_read_crashed" not in log
    assert not events(got, "driver_down"), events(got, "driver_down")
    for device in status["drivers"]:
        assert (device["name"], device["state"], device["failures"], device["crashes"]) == (
            device["name"], "up", 0, 0,
        )  # fmt: skip
    wmeters = next(d for d in status["drivers"] if d["name"] == "wmeters")
    assert wmeters["driver"]["receivers"][0]["reopens"] == 0
    results = [r for r in command_results(got) if r["type"] == "read_now"]
    assert [r["status"] for r in results] == ["ok", "ok", "ok"], results
    everything, meters_only, ua_only = (r["result"] for r in results)
    assert set(everything) == {"wmeters", "ua"}
    assert set(meters_only) == {"wmeters"}
    for answer in (everything["wmeters"], meters_only["wmeters"]):
        assert "error" not in answer, answer
        assert (answer["streaming"], answer["state"]) == (True, "up")
        for flat in ("flat0", "flat1"):
            volume = answer["latest"][f"{flat}.volume"]
            assert (volume["quality"], volume["unit"]) == ("good", "m3"), volume
            assert isinstance(volume["value"], int | float)
            assert 0 <= volume["age_s"] < 60
        assert answer["tags"] == len(answer["latest"])
    for answer in (everything["ua"], ua_only["ua"]):
        assert (answer["streaming"], answer["state"]) == (True, "up"), answer
        assert set(answer["latest"]) == set(UA_TAGS)
        assert all(v["quality"] == "good" and v["age_s"] >= 0 for v in answer["latest"].values())
    # Nothing submitted by the command: no readings counted for it.
    assert "readings" not in everything["wmeters"]
    # A device the gateway does not run is named as such, not left out of the answer.
    assert ua_only["nowhere"] == {"error": "no such device on this gateway (or not enabled)"}


async def test_a_read_beside_the_running_stream_is_refused_and_the_stream_goes_on(
    air_factory: Callable[..., Any],
) -> None:
    # What `read_now` did to a wmbus device: `read()` while `stream()` waits on the receiver. The
    # second reader broke the receiver's stream and ended `stream()` ("every receiver is lost").
    air: Air = await air_factory(meters=2, compact_share=0.0, interval_s=0.5)
    cfg = rtlwmbus_config(air, [air.meter(0), air.meter(1)])
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    got: list[Reading] = []

    async def consume() -> None:
        async for batch in driver.stream():
            got.extend(batch)

    streaming = asyncio.create_task(consume())
    try:
        with capture_logs() as logs:
            await eventually(lambda: any(r.tag == "m0.volume" for r in got), 20, "m0 heard")
            for _ in range(3):
                with pytest.raises(DriverIOError, match="one listener at a time"):
                    async with asyncio.timeout(5):
                        await driver.read()
            heard = len(got)

            def both_heard_again() -> bool:
                assert not streaming.done(), streaming.exception()
                return {"m0.volume", "m1.volume"} <= {r.tag for r in got[heard:] if r.quality == "good"}

            await eventually(both_heard_again, 20, "both meters heard after the refused reads")
    finally:
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
        await driver.aclose()
    assert not [e for e in logs if e["event"] == "wmbus.receiver_read_crashed"]
    assert driver.health().receivers[0].reopens == 0
    # Once the stream has ended, a probe's read is a listener again.
    await driver.open()
    try:
        assert any(r.tag == "m0.volume" for r in await driver.listen_readings(3.0))
    finally:
        await driver.aclose()


def test_latest_values_are_cut_to_fit_one_command_answer() -> None:
    entry = {"value": 1234.567, "quality": "good", "age_s": 12.3, "unit": "m3"}
    answers: dict[str, dict[str, Any]] = {
        "big": {"streaming": True, "state": "up", "tags": 2000,
                "latest": {f"meter{i:04}.volume": dict(entry) for i in range(2000)}},
        "plc": {"readings": 43},
        "small": {"streaming": True, "state": "up", "tags": 2,
                  "latest": {"a": dict(entry), "b": dict(entry)}},
    }  # fmt: skip
    bound_latest(answers)
    big = answers["big"]
    assert 0 < len(big["latest"]) < 2000
    assert big["latest_left_out"] == 2000 - len(big["latest"])
    assert list(big["latest"]) == sorted(big["latest"])  # the first tags, in order
    assert (answers["small"]["latest"], answers["small"]["latest_left_out"]) == ({}, 2)
    assert answers["plc"] == {"readings": 43}
    assert len(orjson.dumps(answers)) <= MAX_DETAIL_BYTES
    small = {"w": {"streaming": True, "latest": {"a": dict(entry)}}}
    bound_latest(small)
    assert small == {"w": {"streaming": True, "latest": {"a": entry}}}
    json.dumps(answers)  # plain JSON, as the command result carries it


class WatchedMbus(MbusDriver):
    """The wired M-Bus driver, counting how many of its reads are in flight at once."""

    in_flight = 0
    most_in_flight = 0

    async def read(self) -> list[Reading]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().read()
        finally:
            self.in_flight -= 1


async def test_a_polled_device_is_read_now_between_its_polls_never_beside_one(tmp_path: Path) -> None:
    async with running_bus(tmp_path) as bus:
        cfg = bus_config(bus, [{"name": "house1", "address": 1}, {"name": "house2", "address": 2}],
                         poll_interval_ms=50)  # fmt: skip
        driver = WatchedMbus.from_config(cfg)
        got: list[Reading] = []
        down: list[Event] = []

        async def on_readings(_stream: str, readings: list[Reading]) -> None:
            got.extend(readings)

        async def on_event(event: Event) -> None:
            down.extend([event] if event.kind == "driver_down" else [])

        runner = DeviceRunner(cfg, driver, on_readings, on_event)
        task = asyncio.create_task(runner.run())
        try:
            await eventually(lambda: runner.stats.state == "up", 20, "the bus up")
            answers = await asyncio.gather(*(runner.read_now() for _ in range(4)))
            polls = runner.stats.polls
            await eventually(lambda: runner.stats.polls >= polls + 2, 20, "polls going on")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [set(a) for a in answers] == [{"readings"}] * 4, answers
    assert all(a["readings"] >= 4 for a in answers)
    assert driver.most_in_flight == 1
    assert not down
    assert runner.stats.failures == 0


async def test_read_now_of_a_polled_device_that_is_down_says_so_and_reads_nothing(tmp_path: Path) -> None:
    cfg = MbusConfig.model_validate(
        {"name": "meters", "kind": "mbus", "port": str(tmp_path / "no-such-port"),
         "meters": [{"name": "house1", "address": 1}]}
    )  # fmt: skip
    driver = WatchedMbus.from_config(cfg)

    async def ignore(*_args: Any) -> None:
        return None

    runner = DeviceRunner(cfg, driver, ignore, ignore, backoff_min_s=5, backoff_max_s=5)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner.stats.state == "down", 10, "the device down")
        answer = await runner.read_now()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert set(answer) == {"error"}
    assert answer["error"].startswith("device is down: "), answer
    assert driver.most_in_flight == 0


async def test_read_now_of_an_audio_device_answers_its_latest_levels_and_capture_goes_on(
    tmp_path: Path,
) -> None:
    rate = 8000
    noise = np.random.default_rng(3).normal(0, 0.05, (6 * rate, 1)).astype(np.float32)
    path = tmp_path / "hydrophone.wav"
    wavfile.write(path, rate, noise)
    cfg = AudioConfig(
        name="hyd", kind="audio", source="file", path=path, loop=True, playback_speed=20, level_interval_s=1
    )
    got: list[Reading] = []
    events: list[Event] = []

    async def on_readings(_stream: str, readings: list[Reading]) -> None:
        got.extend(readings)

    async def on_event(event: Event) -> None:
        events.append(event)

    runner = DeviceRunner(cfg, AudioDriver(cfg), on_readings, on_event)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: any(r.tag == "A.rms_dbfs" for r in got), 20, "a level")
        answer = await runner.read_now()
        levels = len(got)
        await eventually(lambda: any(r.tag == "A.rms_dbfs" for r in got[levels:]), 20, "levels after it")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (answer["streaming"], answer["state"]) == (True, "up"), answer
    rms = answer["latest"]["A.rms_dbfs"]
    assert (rms["quality"], rms["unit"]) == ("good", "dBFS")
    assert -40 < rms["value"] < -20  # noise at 0.05 full scale: about -26 dBFS
    assert rms["age_s"] >= 0
    assert not [e for e in events if e.kind == "driver_down"]
    assert runner.stats.failures == 0
