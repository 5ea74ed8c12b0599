"""Nights in the gateway's local time: which night a UTC instant belongs to, DST included.

A night window is a local clock range, e.g. 02:00-04:00 (it may cross midnight: 23:00-01:00), of at
most 12 hours: a longer one is most likely a night written the wrong way round (04:00-02:00 is the
22 hours of day around 02:00-04:00), refused with the other way round offered when that is a night.
An instant is in the window when its *local* wall-clock time is; the night is named by the local
date the window began on. Time zones come from the IANA database (`zoneinfo`): `None` means the
system's local zone. On the spring-forward night a 02:00-04:00 window lasts one hour, on the
fall-back night three: each night holds whatever local time actually passed in its window.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from water_edge.core.local_zone import keeps_utc, system_zone

HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
NS: Final = 1_000_000_000
LONGEST_NIGHT_MIN: Final = 12 * 60
NOON: Final = "12:00"


def minutes(hhmm: str) -> int:
    match = HHMM.match(hhmm)
    if match is None:
        raise ValueError(f"expected local time as 'HH:MM', e.g. '02:00' (got {hhmm!r})")
    return int(match.group(1)) * 60 + int(match.group(2))


def _hours(length_min: int) -> str:
    """1320 -> '22 h', 810 -> '13 h 30 min'."""
    return f"{length_min // 60} h" + (f" {length_min % 60} min" if length_min % 60 else "")


def window_text(start: str, end: str) -> str:
    """How a window is written in `--night` and `[[models.meter]]` `night`: '02:00-04:00'."""
    return f"{start}-{end}"


def night_keys(start: str, end: str) -> str:
    """How a window is written in `night_start` and `night_end` keys."""
    return f"night_start = {start!r}, night_end = {end!r}"


def _length_min(start: str, end: str) -> int:
    """Minutes from `start` to `end` ('HH:MM'), across midnight when `end` is earlier."""
    return (minutes(end) - minutes(start)) % 1440


def check_night_length(start: str, end: str, written: Callable[[str, str], str] = window_text) -> int:
    """The night's length in minutes; ValueError when it is longer than 12 hours, saying the window
    as the user wrote it (`written`: as `--night`, or as config keys), its length and a way out."""
    length = _length_min(start, end)
    if length > LONGEST_NIGHT_MIN:
        raise ValueError(
            f"{written(start, end)} is a {_hours(length)} night: a night window is at most "
            f"{_hours(LONGEST_NIGHT_MIN)} (it may cross midnight, e.g. 23:00-05:00); "
            + _way_out(start, end, written)
        )
    return length


def _way_out(start: str, end: str, written: Callable[[str, str], str]) -> str:
    """For a too long night: the window the other way round when that leaves out noon (04:00-02:00:
    02:00-04:00, start and end swapped), else a shorter one (17:30-06:00)."""
    swapped = _length_min(end, start)
    if _length_min(end, NOON) >= swapped:
        return f"did you mean {written(end, start)} ({_hours(swapped)})?"
    return "start it later or end it earlier"


def night_option(text: str) -> str:
    """argparse type of a `--night HH:MM-HH:MM` option: the text, or a usage error naming the option
    and why ("argument --night: '04:00-02:00' is a 22 h night: ...")."""
    try:
        NightWindow.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def zone(name: str | None) -> tzinfo:
    """The IANA zone `name`, or the system's local zone for None; ValueError for an unknown name."""
    if name is None:
        return system_zone()[0]
    try:
        return ZoneInfo(name)
    # OSError: a name too long for a file name (ZoneInfo looks it up as one).
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        expected = "an IANA name such as 'Europe/Amsterdam'"
        raise ValueError(f"unknown time zone {name!r} (expected {expected})") from exc


def unset_zone_warning(what: str) -> str | None:
    """For a section whose `timezone` is not set: a warning when this machine's zone is UTC or a
    fixed offset (nights and day slots would then not follow the district's clock), else None."""
    tz, source = system_zone()
    if keeps_utc(tz):
        return (
            f"not set, and this machine's zone is {source}: {what} are read in it, and do not follow "
            "daylight saving; set it to the site's IANA zone (e.g. 'Europe/Rome') unless the site keeps UTC"
        )
    return None


def check_zone(name: str | None) -> str | None:
    """Pydantic-style validator body: the name if it is a known zone."""
    zone(name)
    return name


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
