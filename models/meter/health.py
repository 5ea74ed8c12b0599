"""`MeterProcessor.health()`: per group, the meters followed and the conditions active now."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupStatus:
    meters: int
    readings: int  # total-volume readings used
    events: int
    active: list[str]  # "<meter> <condition or alarm>" active now
    skipped: int = 0  # register readings that were not a finite number (text, NaN, inf)


@dataclass(frozen=True, slots=True)
class MeterHealth:
    groups: dict[str, GroupStatus]

    def status_lines(self) -> list[str]:
        lines = []
        for name, g in self.groups.items():
            active = ", ".join(g.active[:8]) + (" ..." if len(g.active) > 8 else "") if g.active else "none"
            skipped = f", {g.skipped} readings skipped" if g.skipped else ""
            lines.append(f"{name}: {g.meters} meters, {g.events} events, active: {active}{skipped}")
        return lines or ["no meter groups"]
