"""A firmware-sim OPC UA server of one pump station, its model ticking as `edge-sim` runs it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from water_edge.sim.component import SimContext
from water_edge.sim.opcua_server import OpcUaComponent
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import POINTS


@dataclass
class Sim:
    component: OpcUaComponent
    ctx: SimContext
    url: str


@contextlib.asynccontextmanager
async def opcua_station(workdir: Path) -> AsyncIterator[Sim]:
    """The server on a free port of 127.0.0.1 while the block runs."""
    station = PumpStation(1, tick_s=0.1, start_time_of_day_s=8 * 3600)
    ctx = SimContext(
        station=station, points=POINTS, seed=1, host="127.0.0.1", workdir=workdir, options={"port": 0}
    )

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.1)  # the model's clock, as edge-sim runs it: a tick every 100 ms
            station.step(1)

    component = OpcUaComponent()
    url = (await component.start(ctx))[0].detail["url"]
    ticker = asyncio.create_task(tick())
    try:
        yield Sim(component, ctx, str(url))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await component.stop()
