"""How long a night window is, and the rule that a night is at most 12 hours: a longer one is most
likely a night written the wrong way round (04:00-02:00 is the 22 hours of day around 02:00-04:00),
refused with the other way round offered when that is a night. Plain clock arithmetic on 'HH:MM'
texts, shared by the models' night windows (`models.nightwindow`) and the audio driver's own."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
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
