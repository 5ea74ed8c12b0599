"""Faults the simulated plant can suffer, each switched on at an onset time and ramped to a severity.

Three families, each a frozen description plus a pure "how bad is it at time t" (`Ramp.at`):

- process faults (`Fault`) change the physics of one pump or of the station: bearing wear,
  cavitation, impeller imbalance, inlet or outlet valve closure, a downstream leak, a supply sag;
- sensor faults (`SensorFault`) change only what the PLC reports for one tag: drift, stuck,
  dropout; the physics carries on underneath;
- communication faults (`CommFault`) change how a protocol face of the PLC answers: silence
  (no answer at all), latency, garbage bytes (RTU), unplug (RTU: the serial port disappears).

`PumpStation.inject(...)` builds and registers the first two; `CommFaults` is the live table the
Modbus servers consult per request. Severities and what they do are in docs/firmware-sim.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

PumpFaultKind = Literal["bearing_wear", "cavitation", "imbalance", "inlet_valve", "outlet_valve"]
StationFaultKind = Literal["leak", "supply_sag"]
SensorMode = Literal["drift", "stuck", "dropout"]
CommKind = Literal["silence", "latency", "garbage", "unplug"]

PUMP_FAULTS: Final[tuple[str, ...]] = get_args(PumpFaultKind)
STATION_FAULTS: Final[tuple[str, ...]] = get_args(StationFaultKind)
SENSOR_MODES: Final[tuple[str, ...]] = get_args(SensorMode)
COMM_KINDS: Final[tuple[str, ...]] = get_args(CommKind)
# Every kind `PumpStation.inject` takes; sensor faults are "sensor_<mode>".
FAULT_KINDS: Final[tuple[str, ...]] = (*PUMP_FAULTS, *STATION_FAULTS, *(f"sensor_{m}" for m in SENSOR_MODES))


@dataclass(frozen=True, slots=True)
class Ramp:
    """Zero before `onset_s`, linear to `target` over `ramp_s`, held; zero again after `duration_s`
    (counted from the onset) when one is given. Times are model seconds since the start."""

    onset_s: float
    target: float
    ramp_s: float = 0.0
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.onset_s < 0 or self.ramp_s < 0 or (self.duration_s is not None and self.duration_s <= 0):
            raise ValueError("onset, ramp and duration must be >= 0 (duration > 0)")
        if not math.isfinite(self.target):
            raise ValueError("severity must be a finite number")

    def at(self, t: float) -> float:
        if t < self.onset_s:
            return 0.0
        if self.duration_s is not None and t >= self.onset_s + self.duration_s:
            return 0.0
        if self.ramp_s <= 0.0:
            return self.target
        return self.target * min(1.0, (t - self.onset_s) / self.ramp_s)

    def active(self, t: float) -> bool:
        return t >= self.onset_s and (self.duration_s is None or t < self.onset_s + self.duration_s)


@dataclass(frozen=True, slots=True)
class Fault:
    """A process fault. `pump` (1-based) for pump faults, None for station faults (`leak`:
    severity is the leak flow in m3/h at nominal network pressure; `supply_sag`: fraction of the
    supply voltage lost, 0..0.3)."""

    kind: str
    ramp: Ramp
    pump: int | None = None

    def __post_init__(self) -> None:
        if self.kind in PUMP_FAULTS:
            if self.pump is None:
                raise ValueError(f"fault {self.kind!r} needs a pump number")
        elif self.kind in STATION_FAULTS:
            if self.pump is not None:
                raise ValueError(f"fault {self.kind!r} is a station fault; it takes no pump")
        else:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(FAULT_KINDS)})")
        limit = {"inlet_valve": 1.0, "outlet_valve": 1.0, "supply_sag": 0.3}.get(self.kind)
        if self.ramp.target < 0 or (limit is not None and self.ramp.target > limit):
            raise ValueError(f"fault {self.kind!r}: severity must be 0..{limit or 'inf'}")


@dataclass(slots=True)
class SensorFault:
    """What the PLC reports for tag `tag` (a register-map point name such as `pump2.flow`).

    drift: reported = true + offset, the offset ramping to `ramp.target` (tag units);
    stuck: the value at the onset is repeated; dropout: floats read NaN, integers 0."""

    tag: str
    mode: SensorMode
    ramp: Ramp
    held: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in SENSOR_MODES:
            raise ValueError(f"unknown sensor fault {self.mode!r} (known: {', '.join(SENSOR_MODES)})")


class SensorFaults:
    """The sensor faults in force, applied to a point's true value when the PLC image is built."""

    def __init__(self) -> None:
        self.faults: list[SensorFault] = []
        self.now_s = 0.0  # the station keeps this at its elapsed time

    def add(self, fault: SensorFault) -> None:
        self.faults.append(fault)

    def apply(self, tag: str, value: float | int | bool | str) -> float | int | bool | str:
        if not self.faults or isinstance(value, str):
            return value
        for fault in self.faults:
            if fault.tag != tag:
                continue
            t = self.now_s
            if not fault.ramp.active(t):
                fault.held = None
                continue
            if fault.mode == "drift":
                value = float(value) + fault.ramp.at(t)
            elif fault.mode == "stuck":
                if fault.held is None:
                    fault.held = float(value)
                value = fault.held
            else:
                value = math.nan
        return value


@dataclass(frozen=True, slots=True)
class CommFault:
    """A window in which a protocol face misbehaves. `protocol`: "modbus_tcp", "modbus_rtu" or
    "all"; `value`: latency in seconds, or for garbage the share of answers replaced (0..1)."""

    kind: CommKind
    start_s: float
    duration_s: float
    protocol: str = "all"
    value: float = 0.0
    unit_id: int | None = None  # None: every unit on that face


class CommFaults:
    """The live communication-fault table; servers ask it per request."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.windows: list[CommFault] = []
        self._clock = clock

    def bind(self, clock: Callable[[], float]) -> None:
        """Use `clock()` (model seconds since start) for 'now'."""
        self._clock = clock

    def add(self, fault: CommFault) -> None:
        self.windows.append(fault)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else 0.0

    def active(self, kind: str, protocol: str, unit_id: int | None) -> list[CommFault]:
        t = self._now()
        return [
            w for w in self.windows
            if w.kind == kind and w.protocol in ("all", protocol)
            and (w.unit_id is None or unit_id is None or w.unit_id == unit_id)
            and w.start_s <= t < w.start_s + w.duration_s
        ]  # fmt: skip

    def silent(self, protocol: str, unit_id: int | None = None) -> bool:
        return bool(self.active("silence", protocol, unit_id))

    def latency_s(self, protocol: str, unit_id: int | None = None) -> float:
        return sum(w.value for w in self.active("latency", protocol, unit_id))

    def garbage(self, protocol: str, unit_id: int | None = None) -> float:
        return max((w.value for w in self.active("garbage", protocol, unit_id)), default=0.0)
