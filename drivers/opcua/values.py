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


# What a value's timestamps say about the device's clock (`judge_time`).
TIME_OK: Final = "ok"  # a time to keep, or no time at all
TIME_UNCHANGED: Final = "unchanged"  # old, and nothing contradicts it: unchanged since then
TIME_CLOCK: Final = "clock"  # a wrong clock: ahead, before 1970, or source and server disagree
TimeVerdict = str
BEFORE_1970: Final = 0  # a timestamp sent, but at or before 1970-01-01 (None: none sent)


def judge_time(  # noqa: PLR0911 - one return per case of the docstring
    source_ns: int | None, server_ns: int | None, receive_ns: int, tolerance_ns: int | None
) -> tuple[int, TimeVerdict, int | None]:
    """(the reading's time, what the timestamps say, the device time judged) of a value with
    source and server timestamps in UTC ns (None: not sent; `BEFORE_1970`: sent, at or before
    1970) that arrived at `receive_ns`.

    Without a tolerance: the source timestamp, else the server's, else the arrival time. With one,
    a time further than `tolerance_ns` from the gateway's clock when the value arrives is "far":

    - a time before 1970, or one far ahead: a wrong clock (`TIME_CLOCK`), the arrival time;
    - the server timestamp about now: the source timestamp if it is about now too, else the
      server's (a value unchanged since long ago, vouched for by the server now; or a source
      timestamp far ahead: a field device's wrong clock, `TIME_CLOCK`, the arrival time);
    - the server timestamp far back while the source timestamp disagrees with it by more than the
      tolerance: a wrong server clock (`TIME_CLOCK`), the arrival time;
    - the server timestamp far back and the source timestamp equal to it (or only one of them
      sent): the value unchanged since then (`TIME_UNCHANGED`), the arrival time. Servers differ
      in the server timestamp of a value that has not changed: the time of the Read or of the
      last change (asyncua's own server, firmware-sim). One such value says nothing about the
      clock; the driver tells a clock behind by a time that moves yet stays far back.
    """
    if tolerance_ns is None:
        return source_ns or server_ns or receive_ns, TIME_OK, None
    if BEFORE_1970 in (source_ns, server_ns):
        return receive_ns, TIME_CLOCK, None
    if server_ns is None or abs(server_ns - receive_ns) <= tolerance_ns:
        if source_ns is None or abs(source_ns - receive_ns) <= tolerance_ns:
            return source_ns or server_ns or receive_ns, TIME_OK, None
        if source_ns > receive_ns:
            return receive_ns, TIME_CLOCK, source_ns
        if server_ns is None:
            return receive_ns, TIME_UNCHANGED, source_ns
        return server_ns, TIME_OK, None
    if server_ns > receive_ns or (source_ns is not None and abs(source_ns - server_ns) > tolerance_ns):
        return receive_ns, TIME_CLOCK, server_ns
    return receive_ns, TIME_UNCHANGED, server_ns


def sent_ns(stamp: dt.datetime | None) -> int | None:
    """A DataValue timestamp for `judge_time`: None when not sent, `BEFORE_1970` at or before."""
    return None if stamp is None else (to_ns(stamp) or BEFORE_1970)


def sent_ticks_ns(ticks: int) -> int | None:
    """The same for a timestamp as `fast_publish` decodes it (ticks 0 = not sent)."""
    return (ticks_to_ns(ticks) or BEFORE_1970) if ticks else None


def reading_parts(
    datavalue: ua.DataValue, receive_ns: int, *, tolerance_ns: int | None = None
) -> tuple[int, Value, Quality, str | None]:
    """(ts_ns, value, quality, reason) of one DataValue; the time as `judge_time` gives it."""
    status = datavalue.StatusCode
    variant = datavalue.Value
    ts = judge_time(
        sent_ns(datavalue.SourceTimestamp), sent_ns(datavalue.ServerTimestamp), receive_ns, tolerance_ns
    )[0]
    return value_parts(
        status.value if status is not None else 0, ts, variant.Value if variant is not None else None
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
    ts = judge_time(sent_ticks_ns(source_ticks), sent_ticks_ns(server_ticks), receive_ns, tolerance_ns)[0]
    return value_parts(status, ts, raw)


def value_parts(code: int, ts: int, raw: Any) -> tuple[int, Value, Quality, str | None]:
    """(ts, value, quality, reason) of a value with status `code` and time `ts`."""
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
