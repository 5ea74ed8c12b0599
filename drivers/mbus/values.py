"""EN 13757-3 value decoding: integers, BCD, reals, variable-length data and the date/time types, as
values every output path can carry (JSON, the outbox, MQTT).

An integer that does not fit a signed 64-bit number (a wide binary LVAR, a huge scaled counter) is
given as its hexadecimal digits, most significant first, so no writer downstream can choke on it.
"""

from __future__ import annotations

import calendar
import math
import struct
from typing import Final

from water_edge.core.reading import Value
from water_edge.drivers.mbus import vif as vifs

# Bytes per data-field code (DIF bits 0-3); 0xD is variable length (LVAR), 0xF special.
DATA_LENGTH: Final[dict[int, int]] = {
    0x0: 0, 0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x5: 4, 0x6: 6, 0x7: 8,
    0x8: 0, 0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6,
}  # fmt: skip
BCD_CODES: Final = frozenset({0x9, 0xA, 0xB, 0xC, 0xE})
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
WIDE_NOTE: Final = "value wider than 64 bits, shown as hex"


def bcd_digits(data: bytes) -> str:
    """Little-endian BCD bytes as the digit string a meter prints (hex where a nibble is A-F)."""
    return data[::-1].hex().upper()


def lvar_size(lvar: int) -> int | None:  # noqa: PLR0911 - one return per LVAR range
    """Bytes of data an LVAR announces (EN 13757-3 table 5); None for the reserved codes."""
    if lvar <= 0xBF:
        return lvar  # ASCII text
    if 0xC0 <= lvar <= 0xC9 or 0xD0 <= lvar <= 0xD9:
        return lvar & 0x0F  # positive / negative BCD, (LVAR & 0xF) bytes
    if 0xE0 <= lvar <= 0xEF:
        return lvar - 0xE0  # binary number
    if 0xF0 <= lvar <= 0xF4:
        return 4 * (lvar - 0xEC)  # binary number of 16, 20, 24, 28 or 32 bytes
    if lvar == 0xF5:
        return 48
    if lvar == 0xF6:
        return 64
    return None


def number(raw: bytes, data_code: int, *, bits: bool = False) -> tuple[int | float | None, str | None]:
    """The record's number; `bits`: a bit field (type D), whose top bit is a flag, not a sign."""
    if data_code == 0x5:
        (real,) = struct.unpack("<f", raw)
        if not math.isfinite(real):
            return None, "real value is not finite"
        return real, None
    if data_code in BCD_CODES:
        return bcd(raw)
    return int.from_bytes(raw, "little", signed=not bits), None


def bcd(raw: bytes) -> tuple[int | None, str | None]:
    digits = bcd_digits(raw)
    negative = digits.startswith("F")
    if negative:
        digits = digits[1:]
    if not digits.isdigit():
        return None, f"invalid BCD digits {bcd_digits(raw)}"
    value = int(digits) if digits else 0
    return (-value if negative else value), None


def lvar_value(raw: bytes, lvar: int) -> tuple[Value, str | None]:
    if lvar <= 0xBF:
        return raw[::-1].decode("latin-1"), None
    if 0xC0 <= lvar <= 0xC9:
        return bcd(raw)
    if 0xD0 <= lvar <= 0xD9:
        value, error = bcd(raw)
        return (None if value is None else -value), error
    return int.from_bytes(raw, "little", signed=False), None


def scale(value: int | float, info: vifs.VifInfo, vife_list: list[vifs.Vife]) -> int | float:
    factor = info.scale
    offset = 0.0
    for v in vife_list:
        factor *= v.factor
        offset += v.offset * info.scale
    if factor == 1.0 and offset == 0.0:
        return value
    if isinstance(value, int) and offset == 0.0 and factor >= 1.0 and factor.is_integer():
        return value * int(factor)  # 10 Wh steps stay integers
    if (decimal := _as_decimal(factor, offset)) is not None:
        # An integer times a decimal factor (10^-3, 60 x 10^-6 for per minute in m3/h) plus a
        # decimal offset is a decimal: divided once, it is the nearest float to it, not
        # 12345 * 6e-05 = 0.7406999999999999.
        multiplier, added, places = decimal
        divisor: int = 10**places
        return (value * multiplier + added) / divisor
    return value * factor + offset


def _as_decimal(factor: float, offset: float) -> tuple[int, int, int] | None:
    """(M, O, d) with factor = M / 10^d and offset = O / 10^d (integers M, O); None if no d <= 15."""
    for places in range(16):
        multiplier, added = factor * 10**places, offset * 10**places
        if all(abs(x - round(x)) <= 1e-9 * max(1.0, abs(x)) for x in (multiplier, added)):
            return round(multiplier), round(added), places
    return None


def portable(value: Value, raw: bytes) -> tuple[Value, bool]:
    """`value` as every writer can carry it; True when a too-wide integer became hex text."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and not math.isfinite(value):
            return None, False
        return value, False
    if INT64_MIN <= value <= INT64_MAX:
        return value, False
    return raw[::-1].hex().upper(), True


def _year(two_digits: int) -> int:
    """The 7-bit year of types F/G/I: 0-80 are 2000-2080, 81 and above count from 1900 (as
    libmbus reads them: an old meter's 96 is 1996, and 100-127 still land in 2000-2027)."""
    return 2000 + two_digits if two_digits <= 80 else 1900 + two_digits


def _days_in(year: int, month: int) -> int:
    """The days of `month` (1-12) in `year`: 29 February only in a leap year. A day up to 31 in any
    month used to read as a date (2027-02-29, 2027-04-31), which no calendar holds."""
    return calendar.monthrange(year, month)[1]


def date(raw: bytes) -> tuple[str | None, str | None, bool]:  # noqa: PLR0911 - one per date type/fault
    """Types G (date), J (time), F (date-time, minutes) and I (date-time, seconds)."""
    b = raw
    if len(b) == 2:
        day, month = b[0] & 0x1F, b[1] & 0x0F
        year = ((b[0] & 0xE0) >> 5) | ((b[1] & 0xF0) >> 1)
        if not (1 <= month <= 12 and 1 <= day <= _days_in(_year(year), month)):
            return None, "invalid date", False
        return f"{_year(year):04d}-{month:02d}-{day:02d}", None, False
    if len(b) == 3:
        second, minute, hour = b[0] & 0x3F, b[1] & 0x3F, b[2] & 0x1F
        if second > 59 or minute > 59 or hour > 23:
            return None, "invalid time", False
        return f"{hour:02d}:{minute:02d}:{second:02d}", None, False
    sec: int | None = None
    if len(b) == 4:
        minute, hour = b[0] & 0x3F, b[1] & 0x1F
        invalid, summer = bool(b[0] & 0x80), bool(b[1] & 0x80)
        day, month = b[2] & 0x1F, b[3] & 0x0F
        year = ((b[2] & 0xE0) >> 5) | ((b[3] & 0xF0) >> 1)
    else:
        sec = b[0] & 0x3F
        minute, hour = b[1] & 0x3F, b[2] & 0x1F
        invalid, summer = bool(b[1] & 0x80), bool(b[2] & 0x80)
        day, month = b[3] & 0x1F, b[4] & 0x0F
        year = ((b[3] & 0xE0) >> 5) | ((b[4] & 0xF0) >> 1)
    if invalid:
        return None, "date/time flagged invalid by the meter", summer
    if not (1 <= month <= 12 and 1 <= day <= _days_in(_year(year), month)):
        return None, "invalid date/time", summer
    if not (hour <= 23 and minute <= 59 and (sec or 0) <= 59):
        return None, "invalid date/time", summer
    text = f"{_year(year):04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}"
    if sec is not None:
        text += f":{sec:02d}"
    return text, None, summer
