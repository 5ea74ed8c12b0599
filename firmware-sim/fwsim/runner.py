"""Runs the simulated plant: the pump-station model on its tick, the Modbus TCP server, and the
endpoints announcement tests and demos wait for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fwsim.pumpstation import PumpStation
from fwsim.registers import Plant
from fwsim.server import start_modbus_tcp

TICK_S = 0.1


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol} {self.host}:{self.port}"


def write_endpoints(path: Path, endpoints: list[Endpoint]) -> None:
    """Atomically write {"modbus_tcp": {"host": ..., "port": ...}, ...} (readers never see half)."""
    doc = {e.protocol: {"host": e.host, "port": e.port} for e in endpoints}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


async def run(
    host: str,
    port: int,
    *,
    seed: int = 0,
    bench_tags: int = 0,
    endpoints_file: Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation)."""
    local = time.localtime()
    station = PumpStation(seed, tick_s=TICK_S, start_time_of_day_s=local.tm_hour * 3600 + local.tm_min * 60)
    plant = Plant(bench_tags=bench_tags)
    plant.update(station.state)
    plant.update_bench(0)
    server, bound = await start_modbus_tcp(plant, host, port)
    endpoints = [Endpoint("modbus_tcp", host, bound)]
    for endpoint in endpoints:
        announce(str(endpoint))
    if endpoints_file is not None:
        write_endpoints(endpoints_file, endpoints)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _tick(station, plant, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.shutdown()  # type: ignore[no-untyped-call]


async def _tick(station: PumpStation, plant: Plant, stop: asyncio.Event) -> None:
    """Advance the model on a fixed rate (catching up after a stall, never drifting)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    ticks = 0
    while not stop.is_set():
        due = int((loop.time() - start) / TICK_S) - ticks
        if due > 0:
            station.step(due)
            ticks += due
            plant.update(station.state)
            if ticks % 10 < due:  # a whole second passed
                plant.update_bench(int(ticks * TICK_S))
        next_at = start + (ticks + 1) * TICK_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
