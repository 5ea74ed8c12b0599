"""Runs the simulated plant: the pump-station model on its tick (optionally faster than real time,
with a scenario's faults), the Modbus TCP server, the extra components, and the endpoints
announcement tests and demos wait for."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from water_edge.sim.component import Announcement, Component, ComponentFactory, SimContext
from water_edge.sim.faults import CommFaults
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import Plant, apply_write
from water_edge.sim.scenario import Scenario
from water_edge.sim.server import start_modbus_tcp

TICK_S = 0.1


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol} {self.host}:{self.port}"


# Components beyond the Modbus TCP PLC, imported only when present and asked for.
KNOWN_COMPONENTS: dict[str, str] = {
    "modbus_rtu": "water_edge.sim.rtu:RtuComponent",
    "opcua": "water_edge.sim.opcua_server:OpcUaComponent",
    "mbus": "water_edge.sim.mbus_bus:MbusComponent",
    "wmbus": "water_edge.sim.wmbus_air:WmbusComponent",
    "hydrophones": "water_edge.sim.hydrophone_stream:HydrophoneComponent",
}


def available_components(wanted: Sequence[str] | None = None) -> list[tuple[str, ComponentFactory]]:
    """The component factories that exist in this tree, in a fixed order; `wanted` filters them."""
    found = []
    for name, target in KNOWN_COMPONENTS.items():
        if wanted is not None and name not in wanted:
            continue
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        found.append((name, getattr(module, attr)))
    return found


def write_endpoints(path: Path, endpoints: Sequence[Endpoint | Announcement]) -> None:
    """Atomically write {"modbus_tcp": {"host": ..., "port": ...}, ...} (readers never see half)."""
    doc: dict[str, Any] = {}
    for e in endpoints:
        if isinstance(e, Endpoint):
            doc[e.protocol] = {"host": e.host, "port": e.port}
        else:
            doc[e.protocol] = e.detail
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
    components: Sequence[str] | None = None,
    workdir: Path | None = None,
    scenario: Scenario | None = None,
    speed: float | None = None,
    max_read_registers: int = 125,
    any_unit: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation). `speed`: model seconds per wall second
    (default: the scenario's, else 1). `max_read_registers`: the PLC refuses longer reads.
    `any_unit`: the TCP PLC answers every unit ID as unit 1 (it ignores the unit ID)."""
    local = time.localtime()
    start_tod = scenario.start_time_of_day_s if scenario is not None else None
    if start_tod is None:
        start_tod = local.tm_hour * 3600 + local.tm_min * 60
    station = PumpStation(seed, tick_s=TICK_S, start_time_of_day_s=start_tod)
    comm = CommFaults(lambda: station.state.elapsed_s)
    if scenario is not None:
        scenario.apply(station, comm)
    plant = Plant(bench_tags=bench_tags, max_read_registers=max_read_registers)
    plant.on_write = lambda name, raw: apply_write(station, name, raw)
    plant.update(station.state)
    plant.update_bench(0)
    server, bound = await start_modbus_tcp(plant, host, port, comm, any_unit)
    endpoints: list[Endpoint | Announcement] = [Endpoint("modbus_tcp", host, bound)]
    # Without --workdir the parts' files (the OPC UA server's key, pty links) go in a temporary
    # folder that is removed at stop; a given workdir is kept (a client may pin the certificate).
    own_tmp = None if workdir is not None else Path(tempfile.mkdtemp(prefix="edge-sim-"))
    ctx = SimContext(
        station=station,
        points=plant.points,
        seed=seed,
        host=host,
        workdir=workdir or own_tmp or Path("."),
        plant=plant,
        comm=comm,
    )
    started: list[Component] = []
    for name, factory in available_components(components):
        component = factory()
        own = ctx
        if scenario is not None:
            own = dataclasses.replace(
                ctx, options=dict(scenario.components.get(name, {})), events=scenario.component_events(name)
            )
        endpoints.extend(await component.start(own))
        started.append(component)
    # Handlers first, then readiness: whoever waits for the endpoints may stop the plant at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for endpoint in endpoints:
        announce(str(endpoint))
    if endpoints_file is not None:
        write_endpoints(endpoints_file, endpoints)
    rate = speed if speed is not None else (scenario.header.speed if scenario is not None else 1.0)
    try:
        await _tick(station, plant, stop, rate)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for component in reversed(started):
            await component.stop()
        await server.shutdown()  # type: ignore[no-untyped-call]
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)


async def _tick(station: PumpStation, plant: Plant, stop: asyncio.Event, rate: float = 1.0) -> None:
    """Advance the model at `rate` model seconds per wall second (catching up after a stall,
    never drifting); the wall clock between ticks is TICK_S / rate."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    ticks = 0
    period = TICK_S / rate
    while not stop.is_set():
        due = int((loop.time() - start) / period) - ticks
        if due > 0:
            station.step(due)
            ticks += due
            plant.update(station.state)
            if ticks % 10 < due:  # a whole second passed
                plant.update_bench(int(ticks * TICK_S))
        next_at = start + (ticks + 1) * period
        with contextlib.suppress(TimeoutError):
            # at high rates, wake every 20 ms and catch up in a batch rather than per tick
            floor = 0.02 if period < 0.02 else 0.0
            await asyncio.wait_for(stop.wait(), max(floor, next_at - loop.time()))
