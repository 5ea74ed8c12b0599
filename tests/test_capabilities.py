"""Optional capabilities are protocols found with `isinstance`: a part that offers one is treated
as having it, a part that lacks it (or merely has an attribute of the name) is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.testing import write_agent_config
from water_edge.agent.assembly import build_drivers, build_processors, calibration_targets, model_slots
from water_edge.agent.config import load_config
from water_edge.agent.runtime import Agent
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core.health import Health
from water_edge.core.processor import (
    Calibratable,
    EventSink,
    HasModelSlot,
    Processor,
    ProcessorContext,
    ReadingSource,
    WantsStreams,
)
from water_edge.drivers import registry
from water_edge.drivers.base import Streaming, WindowSource, Writable
from water_edge.models.leak.processor import LeakHealth
from water_edge.models.pump.factory import PumpFactory

DEVICES: dict[str, dict[str, Any]] = {
    "fake": {"name": "f", "kind": "fake", "tags": [{"name": "a"}]},
    "audio": {"name": "h", "kind": "audio", "source": "file", "path": "/tmp/none.wav"},
    "modbus_tcp": {
        "name": "m",
        "kind": "modbus_tcp",
        "host": "127.0.0.1",
        "tags": [{"name": "a", "address": 0, "type": "uint16"}],
    },
    "opcua": {
        "name": "o",
        "kind": "opcua",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "tags": [{"name": "a", "node": "ns=2;s=a"}],
    },
}


@pytest.mark.parametrize(
    ("kind", "streaming", "writable", "windows"),
    [
        ("fake", False, False, False),
        ("audio", True, False, True),
        ("modbus_tcp", False, True, False),
        ("opcua", True, False, False),
    ],
)
def test_each_driver_has_exactly_the_capabilities_it_offers(
    kind: str, streaming: bool, writable: bool, windows: bool
) -> None:
    factory = registry.load(kind)
    assert factory is not None
    driver = factory.from_config(factory.config_model.model_validate(DEVICES[kind]))
    assert isinstance(driver, Streaming) is streaming
    assert isinstance(driver, Writable) is writable
    assert isinstance(driver, WindowSource) is windows


def test_an_attribute_that_is_not_offered_is_not_a_capability() -> None:
    class Lookalike:
        stream = None  # a None attribute marks a method as not offered
        write = None

    assert not isinstance(Lookalike(), Streaming)
    assert not isinstance(Lookalike(), Writable)


class Plain:
    """A processor with no optional capability."""

    name = "plain"

    async def run(self, source: ReadingSource, emit: EventSink) -> None:
        async for _ in source:
            pass

    def health(self) -> LeakHealth:
        return LeakHealth(0, 0, None)


class Slotted(Plain):
    name = "leak:hyd"

    def __init__(self) -> None:
        self.slot = object()


class OnlyCalibrates(Plain):
    """Has a `calibrate` method but does not say which command it answers: not Calibratable."""

    async def calibrate(self, target_name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {}


class Narrow(Plain):
    name = "narrow"
    streams = frozenset({"plc"})


class Deaf(Plain):
    name = "deaf"
    streams: frozenset[str] = frozenset()


def test_processor_capabilities_are_found_only_where_offered(tmp_path: Path) -> None:
    plain, slotted, calibrates = Plain(), Slotted(), OnlyCalibrates()
    assert not isinstance(plain, HasModelSlot)
    assert not isinstance(plain, WantsStreams)
    assert not isinstance(calibrates, Calibratable)
    assert model_slots([plain, slotted, calibrates]) == {"leak-hyd": slotted.slot}
    factory = PumpFactory([], ProcessorContext(tmp_path))
    assert calibration_targets([plain, slotted, calibrates, factory]) == {"pump_calibration": factory}
    assert isinstance(plain.health(), Health)


async def test_a_processor_gets_every_stream_unless_it_names_the_ones_it_wants(tmp_path: Path) -> None:
    config = load_config(write_agent_config(tmp_path))
    processors: list[Processor] = [Plain(), Narrow(), Deaf()]
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=1 << 26) as box:
        agent = Agent(config, box, processors=processors)
        feeds = {p.name: feed for p, feed in agent.processors}
        assert feeds["plain"].streams is None
        assert feeds["narrow"].streams == frozenset({"plc"})
        assert feeds["deaf"].streams == frozenset()
        assert feeds["plain"].wants("anything")
        assert not feeds["deaf"].wants("plc")


async def test_models_are_fed_only_the_streams_their_tags_come_in(tmp_path: Path) -> None:
    # The pump, night-flow and machine-sound models were handed every device's readings: another
    # PLC's 5,000 tags went through a pump model's feed, and queued there while it calibrated.
    def fake(name: str, *tags: str) -> dict[str, Any]:
        return {"name": name, "kind": "modbus_tcp", "host": "127.0.0.1",
                "tags": [{"name": t, "address": i} for i, t in enumerate(tags)]}  # fmt: skip

    meters = {"name": "meters", "kind": "mbus", "port": "/dev/ttyUSB0",
              "meters": [{"name": "m1", "address": 1}]}  # fmt: skip
    devices = [fake("plc", "inlet", "outlet"), fake("other", "x", "y"), fake("spare", "inlet2"), meters]
    models = {
        "flow_leak": [{"name": "north", "inflow": ["inlet"], "outflow": ["spare/inlet2"], "timezone": "UTC"}],
        "pump": [{"name": "p1", "signals": {"flow": "other/x", "motor_current": "y"}}],
    }
    config = load_config(write_agent_config(tmp_path, devices=devices, models=models))
    night_flow, pump = build_processors(config, build_drivers(config)).processors
    assert isinstance(night_flow, WantsStreams)
    assert isinstance(pump, WantsStreams)
    # a bare tag: the device that reads it, and the meters (their tags are known once read)
    assert night_flow.streams == frozenset({"plc", "spare", "meters"})
    assert pump.streams == frozenset({"other", "meters"})
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=1 << 26) as box:
        agent = Agent(config, box, processors=[night_flow, pump])
        feeds = [feed for _, feed in agent.processors]
        assert [feed.wants("plc") for feed in feeds] == [True, False]
        assert [feed.wants("other") for feed in feeds] == [False, True]
