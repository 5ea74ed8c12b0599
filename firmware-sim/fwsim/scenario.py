"""Scenario files: a TOML description of a plant run with timed events, validated up front.

    [scenario]
    name = "pump2-bearing"
    start_time = "06:00"          # model time of day at t = 0 (default: the wall clock)
    seed = 7                      # default seed; `edge-sim run --seed` overrides it
    speed = 1.0                   # model seconds per wall-clock second (edge-sim run)
    duration = "30m"              # how long the story lasts (datasets, `edge-sim list`)

    [[events]]                    # a process fault, ramped
    at = "60s"
    fault = "bearing_wear"        # see fwsim.faults.FAULT_KINDS
    pump = 2
    severity = 1.0
    ramp = "10m"

    [[events]]                    # the PLC stops answering for 20 s
    at = "90s"
    comm = "silence"
    duration = "20s"

Every time is model time since the start, so a scenario is deterministic for a seed whatever the
speed. `Scenario.apply` registers all faults at once (each carries its own onset). Events for
other components (`component = "hydrophones"`, free keys) are handed to them untouched through
`SimContext.events`, as are `[components.<name>]` tables through `SimContext.options`.
Schema and examples: docs/scenarios.md, deploy/scenarios/.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from water_edge.sim.faults import COMM_KINDS, FAULT_KINDS, PUMP_FAULTS, SENSOR_MODES, CommFault, CommFaults
from water_edge.sim.pumpstation import PumpStation

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the key."""


def parse_duration(value: str | float | int) -> float:
    """Seconds from "90s", "10m", "1.5h", "300ms", "2d" or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '10m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"expected a duration such as '30s', '10m', '1h' or '300ms', got {value!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


Duration = float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _dur(value: Any) -> float:
    return parse_duration(value)


class Header(_Model):
    name: str = "unnamed"
    description: str = ""
    start_time: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    seed: int | None = None
    speed: float = Field(default=1.0, gt=0, le=1000)
    duration: Duration | None = None

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else _dur(v)


class EventSpec(_Model):
    """One `[[events]]` entry: exactly one of `fault`, `sensor`, `comm` or `component`."""

    model_config = ConfigDict(extra="allow", frozen=True)  # free keys only for component events

    at: Duration
    fault: str | None = None
    sensor: Literal["drift", "stuck", "dropout"] | None = None
    comm: Literal["silence", "latency", "garbage", "unplug"] | None = None
    component: str | None = None
    pump: int | None = Field(default=None, ge=1, le=3)
    tag: str | None = None
    severity: float = Field(default=1.0, ge=0)
    offset: float = 0.0  # sensor drift: the offset reached, tag units
    ramp: Duration = 0.0
    duration: Duration | None = None
    protocol: Literal["all", "modbus_tcp", "modbus_rtu"] = "all"
    unit_id: int | None = Field(default=None, ge=0, le=255)
    latency: Duration = 0.0
    share: float = Field(default=1.0, ge=0, le=1)  # garbage: share of answers spoiled

    @field_validator("at", "ramp", "latency", mode="before")
    @classmethod
    def _times(cls, v: Any) -> float:
        return _dur(v)

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else _dur(v)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in ("fault", "sensor", "comm", "component") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("each event needs exactly one of 'fault', 'sensor', 'comm' or 'component'")
        if self.component is None and self.model_extra:
            raise ValueError(f"unknown key(s): {', '.join(sorted(self.model_extra))}")
        if self.fault is not None:
            if self.fault not in FAULT_KINDS or self.fault.startswith("sensor_"):
                known = ", ".join(k for k in FAULT_KINDS if not k.startswith("sensor_"))
                raise ValueError(f"fault {self.fault!r} is not one of: {known}")
            if (self.fault in PUMP_FAULTS) != (self.pump is not None):
                raise ValueError(
                    f"fault {self.fault!r}: 'pump' is "
                    f"{'required' if self.fault in PUMP_FAULTS else 'not allowed'}"
                )
        if self.sensor is not None and not self.tag:
            raise ValueError("sensor events need 'tag' (a register-map point name, see `edge-sim list`)")
        if self.comm is not None and self.duration is None:
            raise ValueError("comm events need 'duration'")
        if self.comm == "latency" and self.latency <= 0:
            raise ValueError("comm 'latency' needs 'latency' (e.g. '300ms')")
        return self

    def describe(self) -> str:
        extra = f" for {format_duration(self.duration)}" if self.duration is not None else ""
        if self.fault is not None:
            who = f"pump {self.pump} " if self.pump else "station "
            size = f"{self.severity:g} m3/h" if self.fault == "leak" else f"severity {self.severity:g}"
            grow = f"grows to {size} over {format_duration(self.ramp)}" if self.ramp else f"at {size}"
            return f"{who}{self.fault} {grow}{extra}"
        if self.sensor is not None:
            what = f" by {self.offset:g} over {format_duration(self.ramp)}" if self.sensor == "drift" else ""
            return f"sensor {self.tag} {self.sensor}{what}{extra}"
        if self.comm is not None:
            where = self.protocol if self.unit_id is None else f"{self.protocol} unit {self.unit_id}"
            detail = {
                "silence": "stops answering",
                "latency": f"answers {format_duration(self.latency)} late",
                "garbage": f"sends garbage in {self.share:.0%} of answers",
                "unplug": "serial port unplugged",
            }[self.comm]
            return f"PLC ({where}) {detail}{extra}"
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted((self.model_extra or {}).items()))
        return f"{self.component}: {fields}"


class ScenarioFile(_Model):
    scenario: Header = Field(default_factory=Header)
    events: list[EventSpec] = Field(default_factory=list)
    components: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; `apply` installs it into a station and the comm-fault table."""

    header: Header
    events: tuple[EventSpec, ...]
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def start_time_of_day_s(self) -> float | None:
        if self.header.start_time is None:
            return None
        hh, mm = self.header.start_time.split(":")
        return int(hh) * 3600.0 + int(mm) * 60.0

    def apply(self, station: PumpStation, comm: CommFaults | None = None) -> None:
        for ev in self.events:
            if ev.fault is not None:
                station.inject(
                    ev.fault,
                    pump=ev.pump,
                    severity=ev.severity,
                    at_s=ev.at,
                    ramp_s=ev.ramp,
                    duration_s=ev.duration,
                )
            elif ev.sensor is not None:
                station.inject(
                    f"sensor_{ev.sensor}",
                    tag=ev.tag,
                    severity=ev.offset,
                    at_s=ev.at,
                    ramp_s=ev.ramp,
                    duration_s=ev.duration,
                )
            elif ev.comm is not None and comm is not None and ev.duration is not None:
                value = ev.latency if ev.comm == "latency" else ev.share
                comm.add(CommFault(ev.comm, ev.at, ev.duration, ev.protocol, value, ev.unit_id))

    def component_events(self, name: str) -> list[dict[str, Any]]:
        """The events addressed to component `name`, as plain dicts (with `at` in seconds)."""
        return [{"at": ev.at, **(ev.model_extra or {})} for ev in self.events if ev.component == name]

    def describe(self) -> list[str]:
        h = self.header
        lines = [f"scenario {h.name}" + (f": {h.description}" if h.description else "")]
        lines.append(
            f"  start {h.start_time or 'wall clock'}, "
            f"seed {h.seed if h.seed is not None else 'from --seed'}, "
            f"speed {h.speed:g}x" + (f", lasts {format_duration(h.duration)}" if h.duration else "")
        )
        for ev in sorted(self.events, key=lambda e: e.at):
            lines.append(f"  {_clock(ev.at)}  {ev.describe()}")
        for name, options in sorted(self.components.items()):
            lines.append(
                f"  component {name}: " + ", ".join(f"{k}={v!r}" for k, v in sorted(options.items()))
            )
        return lines


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; `ScenarioError` names the file and the offending key."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # Python 3.11's tomllib on values nested a thousand deep
        raise ScenarioError(f"{path}: not valid TOML: values nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        parsed = ScenarioFile.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {key or '(top level)'}: {msg}")
        raise ScenarioError("\n".join(problems)) from None
    return Scenario(parsed.scenario, tuple(parsed.events), parsed.components, path)


__all__ = [
    "COMM_KINDS",
    "SENSOR_MODES",
    "EventSpec",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_duration",
]
