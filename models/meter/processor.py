"""`MeterProcessor`: meter readings in, consumption and alarm events out, for every `[[models.meter]]`
group.

A reading belongs to a group when its source is the group's `device` (or any source) and its tag
starts with one of the group's meter names: `<meter>.<volume_tag>` drives the hourly accounting
(`consumption.py`), `<meter>.<backflow_tag>` the backflow check, `<meter>.alarm.<name>` the meter's
own flags. Bad readings are skipped (a reading the meter did not send is no use), and so are register
readings that are not a finite number (text, NaN, inf: counted in `skipped`). A register reading is
used when the next one confirms it; one it contradicts is dropped (`register.py`).

Events (the centre routes on `kind`; `detail.state` is "start" or "clear"):
`meter_alarm` (detail.alarm: leak, burst, backflow, dry, tamper, battery, error, alarm),
`meter_continuous_flow`, `meter_backflow`, `meter_night_use`, `meter_no_use`; each names the
group and the meter and carries what decided it (litres, hours).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from water_edge.core.reading import BAD, Event, Reading, Severity
from water_edge.models.json_record import JsonRecord
from water_edge.models.meter.config import MeterGroupConfig
from water_edge.models.meter.consumption import Change, MeterUse
from water_edge.models.meter.health import GroupStatus, MeterHealth

log = structlog.get_logger(__name__)

ALARM_SEVERITY: Final[dict[str, Severity]] = {
    "leak": "alarm", "burst": "critical", "backflow": "alarm", "tamper": "alarm",
    "dry": "warning", "battery": "warning", "error": "warning", "alarm": "warning",
}  # fmt: skip
CONDITION_SEVERITY: Final[dict[str, Severity]] = {
    "continuous_flow": "alarm", "backflow": "alarm", "night_use": "warning", "no_use": "alarm",
}  # fmt: skip
Emit = Callable[[Event], Awaitable[None]]


@dataclass
class _Group:
    cfg: MeterGroupConfig
    meters: dict[str, MeterUse] = field(default_factory=dict)
    flags: dict[tuple[str, str], bool] = field(default_factory=dict)
    events: int = 0
    readings: int = 0
    skipped: int = 0

    def owns(self, source: str, meter: str) -> bool:
        if self.cfg.device is not None and source != self.cfg.device:
            return False
        return self.cfg.meters == "all" or meter in self.cfg.meters

    def use(self, meter: str) -> MeterUse:
        if meter not in self.meters:
            self.meters[meter] = MeterUse(self.cfg)
        return self.meters[meter]


class MeterProcessor:
    name = "meter"

    def __init__(self, groups: Sequence[MeterGroupConfig], state_dir: Path | None = None) -> None:
        """With `state_dir`, the meters' own flags that are on are kept in `meter/alarms.json`, so
        an agent restart neither starts them again nor loses the clear of one that went off."""
        self.groups = [_Group(g) for g in groups]
        self._flags = (
            None
            if state_dir is None
            else JsonRecord(Path(state_dir) / "meter" / "alarms.json", "meter.flags")
        )
        self._load_flags()

    def _load_flags(self) -> None:
        if self._flags is None:
            return
        saved = self._flags.load()
        try:
            on = {
                (g, m, a)
                for g, meters in (saved or {}).items()
                for m, alarms in meters.items()
                for a in alarms
            }
        except (AttributeError, TypeError) as exc:  # JSON of another shape: start afresh and say so
            log.warning("meter.flags_unreadable", path=str(self._flags.path), error=str(exc))
            return
        for group in self.groups:
            for name, meter, alarm in on:
                if name == group.cfg.name:
                    group.flags[(meter, alarm)] = True

    def _save_flags(self) -> None:
        if self._flags is None:
            return
        saved: dict[str, dict[str, list[str]]] = {}
        for group in self.groups:
            for (meter, alarm), on in sorted(group.flags.items()):
                if on:
                    saved.setdefault(group.cfg.name, {}).setdefault(meter, []).append(alarm)
        # A card that takes no writes: kept in memory, written by `retry` once it takes them.
        self._flags.save(saved)

    async def run(self, source: AsyncIterable[tuple[str, list[Reading]]], emit: Emit) -> None:
        async for _stream, readings in source:
            for reading in readings:
                for event in self.handle(reading):
                    await emit(event)
            if self._flags is not None:
                self._flags.retry()  # flags the card did not take, at most every few seconds

    def handle(self, r: Reading) -> list[Event]:
        """Events a reading causes (pure but for the per-meter state)."""
        if r.quality == BAD or r.value is None or "." not in r.tag:
            return []
        meter, rest = r.tag.split(".", 1)
        out: list[Event] = []
        for group in self.groups:
            if not group.owns(r.source, meter):
                continue
            cfg = group.cfg
            if rest in (cfg.volume_tag, cfg.backflow_tag) and not _is_number(r.value):
                group.skipped += 1  # text, NaN or inf for a register: as if the meter had not sent it
            elif rest == cfg.volume_tag:
                group.readings += 1
                out += self._changes(group, meter, group.use(meter).volume(r.ts_ns, float(r.value)))
            elif rest == cfg.backflow_tag:
                out += self._changes(group, meter, group.use(meter).backward(r.ts_ns, float(r.value)))
            elif cfg.alarms and rest.startswith("alarm.") and isinstance(r.value, bool):
                out += self._flag(group, meter, rest.removeprefix("alarm."), r.value, r.ts_ns)
        return out

    def _flag(self, group: _Group, meter: str, alarm: str, on: bool, ts: int) -> list[Event]:
        key = (meter, alarm)
        before = group.flags.get(key)
        group.flags[key] = on
        if before == on or (before is None and not on):
            return []
        group.events += 1
        self._save_flags()
        severity: Severity = ALARM_SEVERITY.get(alarm, "warning") if on else "info"
        detail: dict[str, Any] = {
            "group": group.cfg.name,
            "meter": meter,
            "alarm": alarm,
            "state": "start" if on else "clear",
        }
        log.info("meter.alarm", group=group.cfg.name, meter=meter, alarm=alarm, on=on)
        return [Event("meter_alarm", meter, ts, severity, None, detail)]

    def _changes(self, group: _Group, meter: str, changes: list[Change]) -> list[Event]:
        out = []
        for c in changes:
            group.events += 1
            severity: Severity = CONDITION_SEVERITY[c.condition] if c.active else "info"
            state = "start" if c.active else "clear"
            detail: dict[str, Any] = {"group": group.cfg.name, "meter": meter, "state": state, **c.detail}
            log.info(
                "meter.condition", group=group.cfg.name, meter=meter, condition=c.condition, active=c.active
            )
            out.append(Event(f"meter_{c.condition}", meter, c.ts_ns, severity, None, detail))
        return out

    def health(self) -> MeterHealth:
        groups = {}
        for g in self.groups:
            active = sorted(
                f"{meter} {cond}" for meter, use in g.meters.items() for cond, on in use.active.items() if on
            )
            active += sorted(f"{meter} {alarm}" for (meter, alarm), on in g.flags.items() if on)
            registers = [r for use in g.meters.values() for r in (use.total, use.reverse)]
            groups[g.cfg.name] = GroupStatus(
                meters=len(g.meters),
                readings=g.readings,
                events=g.events,
                active=active,
                skipped=g.skipped,
                register_glitches=sum(r.glitches for r in registers),
                register_resets=sum(r.resets for r in registers),
            )
        return MeterHealth(groups)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
