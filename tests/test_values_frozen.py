"""Values held upstream: a Modbus TCP gateway whose serial side is gone answers every poll from its
cache (firmware-sim's `TcpGateway` with `answer_from_cache`, in front of the sim PLC, real sockets).
The device is up, every read works, and nothing changes: with `frozen_after_s` the runner says so
(`values_frozen`, `status`, its readings stored `uncertain`), and says when the values move again
(`values_resumed`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import edge_agent
from tests.support.configs import config_file
from tests.support.testing import eventually, free_port
from water_edge.agent.supervisor import DeviceRunner
from water_edge.core.reading import Event, Reading
from water_edge.core.tasks import cancel_all
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import Plant
from water_edge.sim.server import start_modbus_tcp
from water_edge.sim.tcp_gateway import TcpGateway

FROZEN_AFTER_S = 1.5
TAGS = [
    {"name": "map_version", "address": 8},  # a constant: it never moves, so it never says anything
    {"name": "pump1.flow", "address": 100, "type": "float32"},
    {"name": "pump1.motor_current", "address": 106, "type": "float32"},
]


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.readings: list[Reading] = []

    async def on_readings(self, _stream: str, readings: list[Reading]) -> None:
        self.readings += readings

    async def on_event(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events if e.kind.startswith("values_")]


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TcpGateway, int]]:
    """The sim PLC, its pump running (the image updated every 50 ms), behind a gateway."""
    plant, station = Plant(), PumpStation(5, tick_s=0.05)
    server, plc_port = await start_modbus_tcp(plant, "127.0.0.1", free_port())

    async def run_plant() -> None:
        while True:
            station.step()
            plant.update(station.state)
            await asyncio.sleep(0.05)

    plant_task = asyncio.create_task(run_plant())
    gw = TcpGateway("127.0.0.1", plc_port)
    gw_port = await gw.start("127.0.0.1", free_port())
    try:
        yield gw, gw_port
    finally:
        plant_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await plant_task
        await gw.stop()
        await server.shutdown()  # type: ignore[no-untyped-call]


def runner_for(port: int, sink: Sink, **extra: Any) -> DeviceRunner:
    config = {
        "name": "station",
        "kind": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout_ms": 500,
        "poll_interval_ms": 100,
        "tags": TAGS,
        **extra,
    }
    cfg = ModbusTcpConfig.model_validate(config)
    return DeviceRunner(cfg, ModbusTcpDriver(cfg), sink.on_readings, sink.on_event)


async def test_a_gateway_answering_from_its_cache_is_told_as_values_frozen_then_resumed(
    gateway: tuple[TcpGateway, int],
) -> None:
    gw, port = gateway
    sink = Sink()
    runner = runner_for(port, sink, frozen_after_s=FROZEN_AFTER_S)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner.stats.polls >= 3 * FROZEN_AFTER_S / 0.1, 10, what="polls")
        assert sink.kinds() == []  # a running pump's values move: nothing to say
        assert runner.frozen is not None
        assert runner.frozen.moved == {"pump1.flow", "pump1.motor_current"}

        gw.answer_from_cache = True
        await eventually(lambda: sink.kinds() == ["values_frozen"], 10, what="values_frozen")
        frozen = next(e for e in sink.events if e.kind == "values_frozen")
        assert frozen.source == "station"
        assert frozen.severity == "warning"
        assert frozen.detail["unchanged_for_s"] >= FROZEN_AFTER_S
        assert frozen.detail["tags"] == 2
        assert "held upstream" in frozen.detail["reason"]
        assert gw.stats.answered_from_cache > 0
        status = runner.status()
        assert status.state == "up"  # every read works: the device is not down
        assert status.values_frozen_for_s is not None
        assert status.values_frozen_for_s >= FROZEN_AFTER_S
        assert "VALUES FROZEN" in status.status_lines()[0]
        assert "readings stored uncertain" in status.status_lines()[0]
        # What the device sent is stored, as the last usable value: uncertain, and why.
        held = sink.readings[-len(TAGS) :]
        assert [(r.quality, r.reason) for r in held] == [("uncertain", "values_frozen")] * len(TAGS)
        assert held[1].value is not None  # the value sent, not a stand-in

        gw.answer_from_cache = False
        await eventually(lambda: sink.kinds() == ["values_frozen", "values_resumed"], 10, what="resumed")
        resumed = sink.events[-1]
        assert resumed.detail["unchanged_for_s"] > frozen.detail["unchanged_for_s"]  # the whole stretch
        assert runner.status().values_frozen_for_s is None
        assert "VALUES FROZEN" not in runner.status().status_lines()[0]
        assert all(r.quality == "good" and r.reason is None for r in sink.readings[-len(TAGS) :])
    finally:
        await cancel_all([task])  # as the agent stops a runner (Python 3.11 may lose one cancel)


async def test_without_frozen_after_s_a_cached_gateway_raises_nothing(
    gateway: tuple[TcpGateway, int],
) -> None:
    gw, port = gateway
    sink = Sink()
    runner = runner_for(port, sink)
    assert runner.frozen is None
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner.stats.polls >= 5, 10, what="polls")
        gw.answer_from_cache = True
        await asyncio.sleep(3 * FROZEN_AFTER_S)
        assert gw.stats.answered_from_cache > 0
        assert sink.kinds() == []
        assert runner.status().values_frozen_since_ns is None
        assert all(r.quality == "good" for r in sink.readings)
    finally:
        await cancel_all([task])  # as the agent stops a runner (Python 3.11 may lose one cancel)


def test_frozen_after_s_must_span_several_polls() -> None:
    with pytest.raises(ValueError, match=r"frozen_after_s \(2\) must span at least 3 polls"):
        ModbusTcpConfig.model_validate(
            {"name": "d", "kind": "modbus_tcp", "host": "127.0.0.1", "poll_interval_ms": 1000,
             "frozen_after_s": 2, "tags": TAGS}
        )  # fmt: skip


OPCUA_TABLES = """
[[devices]]
name = "ua"
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
mode = "{mode}"
frozen_after_s = 600

  [[devices.tags]]
  name = "pump1.flow"
  path = "PumpStation/Pump1/Flow"
"""


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
def test_check_config_says_a_subscription_cannot_be_judged_frozen(tmp_path: Path, mode: str) -> None:
    path = config_file(tmp_path, OPCUA_TABLES.format(mode=mode))
    run = edge_agent("check-config", "-c", str(path))
    assert run.returncode == 0, run.stderr
    said = "devices[0] (ua).frozen_after_s: a subscription reports only changes" in run.stderr
    assert said == (mode == "subscribe")
