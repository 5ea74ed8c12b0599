"""The simulator's wireless M-Bus meters on the air, for the wmbus driver's tests: a started
`WmbusComponent` (`air_started`; the `air_factory` fixture in conftest.py), its meters as driver
config (`Air.meter`, `stick_config`, `rtlwmbus_config`; `rtlwmbus_device` for an agent config
against a plant's meters) and the volumes a driver read (`volumes`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from water_edge.core.reading import Reading
from water_edge.drivers.wmbus.config import WmbusConfig
from water_edge.sim.component import SimContext
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.wmbus_air import WmbusComponent

TAMPER = {"record": "error_flags", "bit": 2, "alarm": "tamper"}  # the simulator's data sheet
CLOCK_S = 0.02  # wall seconds between two steps of the air's model clock


class Air:
    def __init__(self, component: WmbusComponent, detail: dict[str, Any]) -> None:
        self.component = component
        self.detail = detail
        self.meters: list[dict[str, Any]] = detail["meters"]

    def meter(self, index: int, **extra: Any) -> dict[str, Any]:
        m = self.meters[index]
        return {"name": f"m{index}", "id": m["id"], "key": m["key"], "alarm_bits": [TAMPER], **extra}


def stick_config(air: Air, meters: list[dict[str, Any]], mode: str = "T1", **extra: Any) -> WmbusConfig:
    return WmbusConfig.model_validate(
        {"name": "w", "kind": "wmbus", "receiver": "im871a", "port": air.detail["path"],
         "link_modes": [mode], "meters": meters, **extra}
    )  # fmt: skip


def rtlwmbus_config(air: Air, meters: list[dict[str, Any]]) -> WmbusConfig:
    """A device `sdr` hearing T1 and C1 over `air`'s rtl_wmbus TCP stream."""
    return WmbusConfig.model_validate(
        {"name": "sdr", "kind": "wmbus", "receiver": "rtlwmbus", "host": "127.0.0.1",
         "tcp_port": air.detail["rtlwmbus"]["port"], "link_modes": ["T1", "C1"], "meters": meters}
    )  # fmt: skip


def rtlwmbus_device(air: Mapping[str, Any], meters: Mapping[str, Mapping[str, Any]]) -> str:
    """The `[[devices]]` table (TOML) of a device `wmeters` hearing T1 and C1 over the rtl_wmbus
    TCP stream a plant announced (`air`: its `endpoints["wmbus"]`), with `meters` (name: one of
    `air["meters"]`)."""
    text = f"""
[[devices]]
name = "wmeters"
kind = "wmbus"
receiver = "rtlwmbus"
host = "{air["rtlwmbus"]["host"]}"
tcp_port = {air["rtlwmbus"]["port"]}
link_modes = ["T1", "C1"]
"""
    for name, m in meters.items():
        text += f'\n[[devices.meters]]\nname = "{name}"\nid = "{m["id"]}"\nkey = "{m["key"]}"\n'
    return text


def volumes(readings: list[Reading], name: str) -> list[float]:
    return [float(r.value or 0) for r in readings if r.tag == f"{name}.volume"]


@contextlib.asynccontextmanager
async def air_started(workdir: Path) -> AsyncIterator[Callable[..., Awaitable[Air]]]:
    """`await start(**options)` starts the simulator's meters on the air (a clock of `speed` model
    seconds per wall second, 50 by default, in steps of a tenth of a model second); all are stopped
    on leaving."""
    started: list[tuple[WmbusComponent, asyncio.Task[None]]] = []

    async def start(*, speed: float = 50.0, **options: Any) -> Air:
        station = PumpStation(5)
        ticks = max(1, round(speed * CLOCK_S / station.tick_s))  # per CLOCK_S of wall time
        station.step(10)
        ctx = SimContext(
            station=station, points=[], seed=5, host="127.0.0.1", workdir=workdir,
            options={"meters": 6, "interval_s": 1.0, **options},
        )  # fmt: skip
        component = WmbusComponent()
        (announcement,) = await component.start(ctx)

        async def clock() -> None:
            while True:
                station.step(ticks)
                await asyncio.sleep(CLOCK_S)

        started.append((component, asyncio.create_task(clock())))
        return Air(component, announcement.detail)

    try:
        yield start
    finally:
        for component, task in started:
            task.cancel()
            await component.stop()
