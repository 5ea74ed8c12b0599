"""Timestamps as SCADA and historian exports write them: ISO 8601, 'YYYY-MM-DD' or 'YYYY/MM/DD'
(Japanese exports), or a numeric date with the year last — 'DD.MM.YYYY', and 'DD/MM/YYYY' or
'MM/DD/YYYY' (US exports), whose order `day_first` reads from a whole column — followed by a time
'HH:MM[:SS]' or 'h:MM[:SS] AM/PM'. Shared by the offline commands that read such exports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo

_TIMES = ("%H:%M:%S", "%H:%M", "%I:%M:%S %p", "%I:%M %p")
_YEAR_FIRST = ("%Y-%m-%d", "%Y/%m/%d")
_DAY_FIRST = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y")
_MONTH_FIRST = ("%m/%d/%Y", "%d.%m.%Y", "%m-%d-%Y")  # dotted dates are day first everywhere
_YEAR_LAST = re.compile(r"\s*(\d{1,2})[/.-](\d{1,2})[/.-]\d{4}\b")


def _formats(dates: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{d} {t}" for d in (*_YEAR_FIRST, *dates) for t in _TIMES)


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
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        for fmt in _DAY_FIRST_FORMATS if day_first else _MONTH_FIRST_FORMATS:
            try:
                when = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"{text!r} is not a timestamp") from None
    if when.tzinfo is None and naive_tz is not None:
        when = when.replace(tzinfo=naive_tz)
    return when.astimezone(tz).replace(tzinfo=None) if when.tzinfo is not None else when


def skipped_hour(local: datetime, tz: tzinfo) -> bool:
    """Whether `local` (naive) is a wall-clock time `tz` never shows: in the hour its clocks skip
    when daylight saving begins. A file stamped there is not that zone's wall clock."""
    return local.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) != local
