"""`MeterProcessor.health()`: per group, the meters followed and the conditions active now."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupStatus:
    meters: int
    readings: int  # total-volume readings used
    events: int
    active: list[str]  # "<meter> <condition or alarm>" active now


@dataclass(frozen=True, slots=True)
class MeterHealth:
    groups: dict[str, GroupStatus]

    def status_lines(self) -> list[str]:
        lines = []
        for name, g in self.groups.items():
            active = ", ".join(g.active[:8]) + (" ..." if len(g.active) > 8 else "") if g.active else "none"
            lines.append(f"{name}: {g.meters} meters, {g.events} events, active: {active}")
        return lines or ["no meter groups"]
