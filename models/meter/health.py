"""`MeterProcessor.health()`: per group, the meters followed and the conditions active now."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupStatus:
    meters: int
    readings: int  # total-volume readings taken in (register_glitches among them)
    events: int
    active: list[str]  # "<meter> <condition or alarm>" active now
    skipped: int = 0  # register readings that were not a finite number (text, NaN, inf)
    register_glitches: int = 0  # register readings dropped as misread (the next reading contradicted them)
    register_resets: int = 0  # registers that went down and stayed down (a meter exchanged, a rollover)


@dataclass(frozen=True, slots=True)
class MeterHealth:
    groups: dict[str, GroupStatus]

    def status_lines(self) -> list[str]:
        lines = []
        for name, g in self.groups.items():
            active = ", ".join(g.active[:8]) + (" ..." if len(g.active) > 8 else "") if g.active else "none"
            counts = [(g.skipped, "readings skipped"), (g.register_glitches, "register glitches")]
            counts.append((g.register_resets, "register resets"))
            extra = "".join(f", {n} {what}" for n, what in counts if n)
            lines.append(f"{name}: {g.meters} meters, {g.events} events, active: {active}{extra}")
        return lines or ["no meter groups"]
