"""Timestamps as SCADA and historian exports write them: ISO 8601, 'YYYY-MM-DD' or 'YYYY/MM/DD'
(Japanese exports), a numeric date with the year last — 'DD.MM.YYYY', and 'DD/MM/YYYY' or
'MM/DD/YYYY' (US exports), whose order `day_first` reads from a whole column — or one with the
month's English name ('31-Mar-24', as OSIsoft PI writes it; 'Mar 31, 2024') — followed by a time
'HH:MM[:SS[.fff]]' (or ',fff') or 'h:MM[:SS] AM/PM', and optionally ' UTC' or ' GMT'. ISO 8601's
end of a day, '24:00' or '24:00:00', is the next day's 00:00: German and Austrian SCADA exports stamp
the interval that ends at midnight '29.02.2024 24:00'. Shared by the offline commands that read such
exports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo

_TIMES = ("%H:%M:%S", "%H:%M", "%H:%M:%S.%f", "%H:%M:%S,%f", "%I:%M:%S %p", "%I:%M %p")
_YEAR_FIRST = ("%Y-%m-%d", "%Y/%m/%d")
_DAY_FIRST = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y")
_MONTH_FIRST = ("%m/%d/%Y", "%d.%m.%Y", "%m-%d-%Y")  # dotted dates are day first everywhere
_MONTH_NAMED = ("%d-%b-%y", "%d-%b-%Y", "%d %b %Y", "%b %d, %Y", "%b %d %Y")
_YEAR_LAST = re.compile(r"\s*(\d{1,2})[/.-](\d{1,2})[/.-]\d{4}\b")
_UTC_SUFFIXES = (" UTC", " GMT")
# '24:00' after the date (' ' or 'T'), before the end, an offset, 'Z' or a suffix: never '24:01'.
_END_OF_DAY = re.compile(r"(?<=[\sT])24:00(?::00(?:[.,]0+)?)?(?=$|[\sZ+-])")


def _formats(dates: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{d} {t}" for d in (*_YEAR_FIRST, *dates, *_MONTH_NAMED) for t in _TIMES)


_DAY_FIRST_FORMATS = _formats(_DAY_FIRST)
_MONTH_FIRST_FORMATS = _formats(_MONTH_FIRST)


def year_last(cell: str) -> bool:
    """Whether a cell starts with a numeric date with the year last, whose day/month order must be
    read from its column (`day_first`)."""
    return _YEAR_LAST.match(cell) is not None


def day_first(cells: Iterable[str]) -> bool | None:
    """Whether numeric dates with the year last ('03/04/2026') put the day first, read from the whole
    column: True or False when some date says so (a field above 12 is a day), None when none does."""
    for cell in cells:
        m = _YEAR_LAST.match(cell)
        if m is None:
            continue
        if int(m.group(1)) > 12:
            return True
        if int(m.group(2)) > 12:
            return False
    return None


def parse_time(text: str, tz: tzinfo, day_first: bool = True, naive_tz: tzinfo | None = None) -> datetime:
    """A local wall-clock datetime in `tz`. A timestamp without an offset is taken as local already,
    or, with `naive_tz`, as that zone's (a historian that exports UTC without saying so)."""
    text = text.strip()
    # The test for "24:00" (0.04 us a row) sends a midnight row straight to its reading, 7 us: read
    # as written first, it failed every format before it, 600 us, as long as the day's other 95 rows
    # of a 15-minute export together.
    when = _end_of_day(text, day_first) if "24:00" in text else None
    if when is None:
        when = _read(text, day_first)
    if when.tzinfo is None and naive_tz is not None:
        when = when.replace(tzinfo=naive_tz)
    return when.astimezone(tz).replace(tzinfo=None) if when.tzinfo is not None else when


def _read(text: str, day_first: bool) -> datetime:
    """The timestamp as written: naive, or aware when it gives an offset or says UTC."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        bare = next((text.removesuffix(s) for s in _UTC_SUFFIXES if text.endswith(s)), text)
        when = _strptime(bare, _DAY_FIRST_FORMATS if day_first else _MONTH_FIRST_FORMATS, text)
        return when.replace(tzinfo=UTC) if bare != text else when


def _end_of_day(text: str, day_first: bool) -> datetime | None:
    """A timestamp at '24:00' read as the next day's 00:00, on the clock it was written in (the day
    added before any conversion: a day with a daylight-saving change is still one calendar day);
    None when its time is not 24:00 ('12:24:00' holds the text too)."""
    midnight, found = _END_OF_DAY.subn("00:00", text, count=1)
    if not found:
        return None
    try:
        return _read(midnight, day_first) + timedelta(days=1)
    except ValueError:
        raise ValueError(f"{text!r} is not a timestamp") from None


def skipped_hour(local: datetime, tz: tzinfo) -> bool:
    """Whether `local` (naive) is a wall-clock time `tz` never shows: in the hour its clocks skip
    when daylight saving begins. A file stamped there is not that zone's wall clock."""
    return local.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) != local


_last_format: list[str] = []  # the format the last timestamp was read with: an export keeps to one


def _strptime(text: str, formats: tuple[str, ...], given: str) -> datetime:
    """`text` read with the first of `formats` that fits, the one the last timestamp fitted tried
    first: a day-first export's rows each failed the year-first formats before theirs, 160 us a row
    against 10 (`score flow-leak` on a year of minute rows: 102 s against 13 s)."""
    if _last_format and _last_format[0] in formats:
        try:
            return datetime.strptime(text, _last_format[0])
        except ValueError:
            pass
    for fmt in formats:
        try:
            when = datetime.strptime(text, fmt)
        except ValueError:
            continue
        _last_format[:] = [fmt]
        return when
    raise ValueError(f"{given!r} is not a timestamp") from None
