"""OPC UA DataValues to `Reading` parts: status code → quality, timestamps → UTC ns, variants → values.

Status codes follow OPC UA Part 4 §7.34: the top two bits give the class (00 Good, 01 Uncertain,
10/11 Bad). A non-good reading carries the status code's name as its reason
(e.g. "BadSensorFailure"); a bad reading has no value.
"""

from __future__ import annotations

import datetime as dt
import math
from functools import lru_cache
from typing import Any, Final

from asyncua import ua
from asyncua.ua.uatypes import MAX_FILETIME_EPOCH_AS_UTC_DATETIME, MAX_OPC_FILETIME

from water_edge.core.reading import BAD, GOOD, UNCERTAIN, Quality, Value

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE: Final = dt.datetime(1970, 1, 1)  # asyncua decodes UTC as naive datetimes
_FILETIME_1970_US: Final = 11_644_473_600_000_000  # 1601-01-01 to 1970-01-01 in microseconds


@lru_cache(maxsize=256)
def status_quality(code: int) -> tuple[Quality, str | None]:
    """(quality, reason) for a StatusCode value; reason is None for Good."""
    severity = code >> 30
    if severity == 0:
        return GOOD, None
    return (UNCERTAIN if severity == 1 else BAD), status_name(code)


def status_name(code: int) -> str:
    """The symbolic name of a status code (its severity and subcode), else its hex value."""
    name = ua.status_codes.code_to_name_doc.get(code & 0xFFFF0000, (None, None))[0]
    return str(name) if name else f"0x{code:08X}"


def to_ns(stamp: dt.datetime | None) -> int | None:
    """A DataValue timestamp as UTC nanoseconds; None when absent (the OPC UA 'null' time)."""
    if stamp is None:
        return None
    delta = stamp - (_EPOCH_NAIVE if stamp.tzinfo is None else _EPOCH)
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return ns if ns > 0 else None


# A text or byte string longer than this is no measurement: a bad reading, not megabytes in the
# outbox (an untrusted server's 40 MB string filled it in seconds and evicted other devices' data).
MAX_TEXT_CHARS: Final = 4096


def to_value(raw: Any) -> tuple[Value, str | None]:
    """A variant's Python value as a Reading value, or (None, reason) when it cannot be one."""
    value, problem = _plain(raw)
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        return None, f"value too long: {len(value)} characters (at most {MAX_TEXT_CHARS})"
    return value, problem


def _plain(raw: Any) -> tuple[Value, str | None]:  # noqa: PLR0911 - one case per type
    if raw is None or isinstance(raw, bool | int | str):
        return raw, None
    if isinstance(raw, float):
        return (raw, None) if math.isfinite(raw) else (None, "not a number")
    if isinstance(raw, dt.datetime):
        return raw.isoformat(), None
    if isinstance(raw, ua.LocalizedText):
        return raw.Text, None
    if isinstance(raw, bytes):
        return raw.hex(), None
    if isinstance(raw, ua.StatusCode):
        return raw.value, None
    return None, f"unsupported value type {type(raw).__name__}"


def ticks_to_ns(ticks: int) -> int | None:
    """A DateTime as sent (100 ns ticks since 1601) in UTC nanoseconds, as `to_ns` gives it for the
    datetime asyncua makes of it (whole microseconds; None for 0, negative or before 1970)."""
    if ticks >= MAX_OPC_FILETIME:
        return to_ns(MAX_FILETIME_EPOCH_AS_UTC_DATETIME)
    ns = (ticks // 10 - _FILETIME_1970_US) * 1000
    return ns if ns > 0 else None


def stamp(source_ns: int | None, server_ns: int | None, receive_ns: int, tolerance_ns: int | None) -> int:
    """A value's timestamp from its source and server timestamps (None: absent or before 1970).

    Without a tolerance: the source timestamp, else the server's, else the arrival time. With one,
    the device's clock is judged by the server timestamp (the time it sent the value: a clock that
    is right gives about now), or the source timestamp when there is no server timestamp; a clock
    further than `tolerance_ns` from the gateway's when the value arrives (a PLC clock years off,
    reset to 1970) stamps nothing: the arrival time. A clock that is right gives the source
    timestamp, or the server's when the source timestamp is that far off: a value unchanged since
    long ago, or a field device behind the server with its own wrong clock, is stamped when the
    server vouched for it, not on the day it last changed.
    """
    if tolerance_ns is None:
        return source_ns or server_ns or receive_ns
    reference = server_ns if server_ns is not None else source_ns
    if reference is None or abs(reference - receive_ns) > tolerance_ns:
        return receive_ns
    if source_ns is not None and abs(source_ns - receive_ns) <= tolerance_ns:
        return source_ns
    return reference


def reading_parts(
    datavalue: ua.DataValue, receive_ns: int, *, tolerance_ns: int | None = None
) -> tuple[int, Value, Quality, str | None]:
    """(ts_ns, value, quality, reason) of one DataValue; the time as `stamp` gives it."""
    status = datavalue.StatusCode
    variant = datavalue.Value
    return _parts(
        status.value if status is not None else 0,
        stamp(to_ns(datavalue.SourceTimestamp), to_ns(datavalue.ServerTimestamp), receive_ns, tolerance_ns),
        variant.Value if variant is not None else None,
    )


def change_parts(
    status: int,
    source_ticks: int,
    server_ticks: int,
    raw: Any,
    receive_ns: int,
    *,
    tolerance_ns: int | None = None,
) -> tuple[int, Value, Quality, str | None]:
    """The same for a data change decoded by `fast_publish` (ticks 0 = no timestamp)."""
    source = ticks_to_ns(source_ticks) if source_ticks else None
    server = ticks_to_ns(server_ticks) if server_ticks else None
    return _parts(status, stamp(source, server, receive_ns, tolerance_ns), raw)


def _parts(code: int, ts: int, raw: Any) -> tuple[int, Value, Quality, str | None]:
    quality, reason = status_quality(code)
    if quality == BAD:
        return ts, None, BAD, reason
    value, problem = to_value(raw)
    if problem is not None:
        return ts, None, BAD, problem
    if value is None and quality == GOOD:
        # A Good status with no value (a null Variant, a LocalizedText without text): a reading
        # that says nothing is not a good one.
        return ts, None, UNCERTAIN, "no value (null)"
    if isinstance(value, str):
        text = valid_text(value)
        if text is not value:
            why = "text that is not UTF-8, undecodable bytes replaced"
            return ts, text, UNCERTAIN, why if reason is None else f"{reason}; {why}"
    return ts, value, quality, reason


def valid_text(text: str) -> str:
    """`text`, or a copy with U+FFFD for the bytes that were not UTF-8: asyncua decodes a server's
    invalid UTF-8 into lone surrogates, which no JSON encoder or outbox takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # surrogates not from undecodable bytes
            return text.encode("utf-8", "replace").decode("utf-8")
    return text


# UNECE codes (OPC UA Part 8 EUInformation.UnitId) to the unit spellings the agent's other
# drivers use; anything else keeps the server's DisplayName.
_UNECE_UNITS: Final[dict[str, str]] = {
    "MQH": "m3/h", "BAR": "bar", "AMP": "A", "C16": "mm/s", "CEL": "degC", "RPM": "rpm",
    "MTR": "m", "MTQ": "m3", "LTR": "L", "E32": "L/h", "SEC": "s", "WHR": "Wh", "VLT": "V",
    "HTZ": "Hz", "KWT": "kW", "P1": "%", "KEL": "K", "KPA": "kPa", "MBR": "mbar", "G51": "L/s",
}  # fmt: skip


def unece_code(unit_id: int) -> str:
    """The UNECE common code packed into an EUInformation UnitId ("" when not ASCII)."""
    if unit_id <= 0:
        return ""
    raw = unit_id.to_bytes(4, "big").lstrip(b"\x00")
    return raw.decode("ascii") if raw.isascii() else ""


def unit_from_eu(eu: ua.EUInformation) -> str:
    """The unit string for an EngineeringUnits property."""
    known = _UNECE_UNITS.get(unece_code(eu.UnitId))
    if known:
        return known
    text = eu.DisplayName.Text if eu.DisplayName is not None else None
    return (text or "")[:32]
