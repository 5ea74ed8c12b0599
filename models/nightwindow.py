"""Nights in the gateway's local time: which night a UTC instant belongs to, DST included.

A night window is a local clock range, e.g. 02:00-04:00 (it may cross midnight: 23:00-01:00), of at
most 12 hours: a longer one is most likely a night written the wrong way round (04:00-02:00 is the
22 hours of day around 02:00-04:00), refused with the other way round offered when that is a night.
An instant is in the window when its *local* wall-clock time is; the night is named by the local
date the window began on. Time zones come from the IANA database (`zoneinfo`): `None` means the
system's local zone. On the spring-forward night a 02:00-04:00 window lasts one hour, on the
fall-back night three: each night holds whatever local time actually passed in its window, and
`minutes_on` says how long that was (what a night's coverage is measured against).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Final

from water_edge.core.night_length import (
    check_night_length,
    minutes,
)

NS: Final = 1_000_000_000


def night_option(text: str) -> str:
    """argparse type of a `--night HH:MM-HH:MM` option: the text, or a usage error naming the option
    and why ("argument --night: '04:00-02:00' is a 22 h night: ...")."""
    try:
        NightWindow.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


@dataclass(frozen=True)
class NightWindow:
    """`start`-`end` local time in `tz` (see the module docstring)."""

    start: str = "02:00"
    end: str = "04:00"
    tz: tzinfo = UTC

    def __post_init__(self) -> None:
        if minutes(self.start) == minutes(self.end):
            raise ValueError("night start and end must differ")
        check_night_length(self.start, self.end)

    @classmethod
    def parse(cls, text: str, tz: tzinfo = UTC) -> NightWindow:
        """'02:00-04:00' -> NightWindow."""
        parts = text.split("-")
        if len(parts) != 2:
            raise ValueError(f"expected a night window 'HH:MM-HH:MM', e.g. '02:00-04:00' (got {text!r})")
        return cls(parts[0].strip(), parts[1].strip(), tz)

    @property
    def length_min(self) -> int:
        return (minutes(self.end) - minutes(self.start)) % 1440

    def local(self, ts_ns: int) -> datetime:
        return datetime.fromtimestamp(ts_ns / NS, UTC).astimezone(self.tz)

    def night_of_local(self, local: datetime) -> date | None:
        """The night (date the window began) that local wall-clock time `local` is in, or None."""
        minute = local.hour * 60 + local.minute
        into = (minute - minutes(self.start)) % 1440
        if into >= self.length_min:
            return None
        return (local - timedelta(minutes=into)).date() if into > minute else local.date()

    def night_of(self, ts_ns: int) -> date | None:
        """The night a UTC instant belongs to, or None outside the window."""
        return self.night_of_local(self.local(ts_ns))

    def minutes_on(self, night: date) -> int:
        """How many minutes the window of `night` (the local date it begins on) really lasts: its
        length, less an hour the clocks skip inside it, plus one they repeat (120 for 02:00-04:00,
        60 on the spring-forward night, 180 on the fall-back night in Europe)."""
        start = datetime.combine(night, time(minutes(self.start) // 60, minutes(self.start) % 60))
        end = start + timedelta(minutes=self.length_min)
        edges = [int(t.replace(tzinfo=self.tz, fold=f).timestamp()) for t in (start, end) for f in (0, 1)]
        lo, hi = min(edges[:2]), max(edges[2:])
        if edges[0] == edges[1] and edges[2] == edges[3] and hi - lo == self.length_min * 60:
            return self.length_min  # no clock change in or at the edges of the window
        # A clock change: count the minutes whose local time is in this night's window.
        return sum(1 for t in range(lo - 3600, hi + 3600, 60) if self.night_of(t * NS) == night)
