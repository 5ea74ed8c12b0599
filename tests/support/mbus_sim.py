"""firmware-sim's wired M-Bus meters on a pseudo-terminal for a test, and one read of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from water_edge.core.reading import Reading
from water_edge.drivers.mbus.config import MbusConfig
from water_edge.drivers.mbus.driver import MbusDriver
from water_edge.sim.component import SimContext
from water_edge.sim.mbus_bus import MbusBus, MbusComponent
from water_edge.sim.pumpstation import PumpStation


@contextlib.asynccontextmanager
async def running_bus(workdir: Path, **options: Any) -> AsyncIterator[MbusBus]:
    """Four meters (seed 7) at 9600 Bd unless `options` (`MbusComponent`'s) say otherwise."""
    station = PumpStation(7)
    station.step(100)
    ctx = SimContext(
        station=station, points=[], seed=7, host="127.0.0.1", workdir=workdir,
        options={"baudrate": 9600, **options},
    )  # fmt: skip
    component = MbusComponent()
    await component.start(ctx)
    assert component.bus is not None
    try:
        yield component.bus
    finally:
        await component.stop()


def bus_config(bus: MbusBus, meters: list[dict[str, Any]], **extra: Any) -> MbusConfig:
    return MbusConfig.model_validate(
        {
            "name": "meters",
            "kind": "mbus",
            "port": bus.path,
            "baudrate": bus.baudrate,
            "meters": meters,
            **extra,
        }
    )


async def read_once(cfg: MbusConfig) -> tuple[dict[str, Reading], MbusDriver]:
    """Open, read every meter once, close: the readings by tag, and the driver (for its health)."""
    driver = MbusDriver.from_config(cfg)
    await driver.open()
    try:
        readings = await driver.read()
    finally:
        await driver.aclose()
    return {r.tag: r for r in readings}, driver
