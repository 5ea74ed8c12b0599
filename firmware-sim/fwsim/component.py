"""What a part of the simulated plant (OPC UA server, M-Bus bus, hydrophones, ...) looks like.

`edge-sim run` builds the pump-station model, then starts each component with a `SimContext`
and announces the endpoints each returns. A component reads the live plant through the context;
it never advances the model itself (the runner's tick does).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from water_edge.sim.faults import CommFaults
from water_edge.sim.pumpstation import PumpStation, StationState
from water_edge.sim.registers import Plant, Point


@dataclass
class SimContext:
    station: PumpStation
    points: Sequence[Point]
    seed: int
    host: str
    workdir: Path
    # The component's own settings (CLI flags or its scenario section), validated by it.
    options: dict[str, Any] = field(default_factory=dict)
    # The register images the Modbus faces answer from (RTU shares the TCP PLC's map).
    plant: Plant | None = None
    # Communication faults in force (silence, latency, garbage), on model time.
    comm: CommFaults = field(default_factory=CommFaults)
    # Scenario events addressed to this component (`component = "<name>"`), `at` in seconds.
    events: list[dict[str, Any]] = field(default_factory=list)

    def state(self) -> StationState:
        return self.station.state

    def rng(self, salt: str) -> random.Random:
        """A generator deterministic for (seed, component), independent of the other components."""
        return random.Random(f"{self.seed}:{salt}")  # noqa: S311 - simulation, not cryptography


@dataclass(frozen=True)
class Announcement:
    """One endpoint: `protocol` is the key in the endpoints JSON; `detail` its fields."""

    protocol: str
    detail: dict[str, Any]

    def __str__(self) -> str:
        where = (
            self.detail.get("url")
            or self.detail.get("path")
            or (f"{self.detail.get('host')}:{self.detail.get('port')}")
        )
        return f"{self.protocol} {where}"


class Component(Protocol):
    name: str

    async def start(self, ctx: SimContext) -> list[Announcement]: ...

    async def stop(self) -> None: ...


ComponentFactory = Callable[[], Component]
