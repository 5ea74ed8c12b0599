"""How people are shown sizes, durations, times and values: one style for every status line and CLI.

Sizes are binary (`173.5 KiB`, the unit config files accept as `"256MiB"`); durations read like a
clock a technician says out loud (`4.2 s`, `3 min 12 s`, `2 h 5 min`, `3 d 4 h`); times are local
wall-clock time with milliseconds; a value is rounded to the precision its tag carries (a float32
register's shortest exact decimal, never `119.54022216796875`). JSON output keeps the exact numbers.
"""

from __future__ import annotations

import math
import re
import struct
from datetime import datetime

NS = 1_000_000_000
_FLOAT32 = struct.Struct("<f")
# Doubles that are not float32 (a scaled integer register, a computed value) are shown to this
# many significant digits: enough for any sensor, short enough to read (0.5700000000000001 -> 0.57).
DOUBLE_DIGITS = 10


def size(n: int | float) -> str:
    """`512 B`, `173.5 KiB`, `64.0 MiB`, `1.2 GiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def duration(seconds: float) -> str:
    """`0.4 s`, `59.0 s`, `3 min 12 s`, `2 h 5 min`, `3 d 4 h`."""
    seconds = max(0.0, seconds)
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def age(then_ns: int | None, now_ns: int) -> str:
    """`4.2 s ago`, or `never` for None (a clock stepped back reads as `0.0 s ago`)."""
    if then_ns is None:
        return "never"
    return f"{duration((now_ns - then_ns) / NS)} ago"


def timestamp(ts_ns: int) -> str:
    """Local wall-clock time with milliseconds: `2026-03-01 14:03:22.412`."""
    when = datetime.fromtimestamp(ts_ns / NS).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def clock(ts_ns: int) -> str:
    """Local time of day with milliseconds, for live views: `14:03:22.412`."""
    return timestamp(ts_ns)[11:]


def _is_float32(value: float) -> bool:
    try:
        (narrowed,) = _FLOAT32.unpack(_FLOAT32.pack(value))
    except OverflowError:
        return False
    return bool(narrowed == value)


def number(value: float) -> str:
    """A float at the precision it carries: float32 values at their shortest exact decimal
    (`119.54022216796875` -> `119.54022`), others at `DOUBLE_DIGITS` significant digits."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    if _is_float32(value):
        for digits in range(1, 10):
            text = f"{value:.{digits}g}"
            if _FLOAT32.unpack(_FLOAT32.pack(float(text)))[0] == value:
                return _plain(text)
    return _plain(f"{value:.{DOUBLE_DIGITS}g}")


def _plain(text: str) -> str:
    """`%g` output without an exponent for the everyday range (1e-4 .. 1e15)."""
    if "e" not in text:
        return text
    value = float(text)
    if 1e-4 <= abs(value) < 1e15:
        return f"{value:f}".rstrip("0").rstrip(".")
    return text


def value(v: object) -> str:
    """A reading's value for people: numbers at their precision, booleans and text as they are
    (control characters shown as escapes: `printable`), `-` for none (a bad reading)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return number(v)
    return printable(str(v))


# C0 and C1 control characters and DEL: a device's text must not drive the technician's terminal
# (clear the screen, retitle the window, hide text, write the clipboard) through `tail`/`status`.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` for a terminal: every control character (newlines and escapes included) as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
