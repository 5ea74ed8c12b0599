"""The outbox body format: readings and events as compact orjson arrays, one array per item.

A reading is ``[source, tag, ts_ns, value, quality, unit, reason]`` and an event is
``[kind, source, ts_ns, severity, score, detail]``. JSON has no NaN or infinity and orjson would
write them as ``null``; so that a driver's mistake is neither hidden nor turned into a missing value,
a non-finite float ``value`` (or event ``score``) is written as the string ``"nan"``, ``"inf"`` or
``"-inf"`` with one extra trailing element ``"f"`` marking it. Everything else round-trips exactly:
ints stay ints, bools stay bools, ``None`` stays ``None``, ``-0.0`` keeps its sign. A reading whose
``repeat`` flag is set (a report-by-exception heartbeat) has the trailing marker ``"r"`` (``"fr"``
with a spelled non-finite value); readings without it are written exactly as before the flag existed.

Limits, each raising `BufferError` at encode time: ints must fit orjson's 64-bit range and strings
must be valid Unicode (no lone surrogates). An event's ``detail`` is plain JSON: it must have string
keys, tuples come back as lists, and NaN or infinity inside it becomes ``null``.

Any change to this layout is a schema change (see `buffer.schema.SCHEMA_VERSION`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import orjson

from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading, ReadingFields

_QUALITIES: Final = frozenset(("good", "uncertain", "bad"))
_SEVERITIES: Final = frozenset(("info", "warning", "alarm", "critical"))
_VALUE_TYPES: Final = frozenset((float, int, bool, str, type(None)))
_NONFINITE: Final = frozenset(("nan", "inf", "-inf"))
_FLOAT_MARK: Final = "f"
_REPEAT_MARK: Final = "r"
_READING_MARKS: Final = frozenset(("f", "r", "fr"))


def _is_nonfinite(value: object) -> bool:
    # x - x is 0.0 for every finite float and NaN for NaN and both infinities.
    return type(value) is float and value - value != 0.0


def _spell(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def encode_readings(readings: Sequence[Reading]) -> bytes:
    """Encode readings as one compact JSON array of arrays.

    Fields are type-checked here, not only at decode, so that a committed row can always be
    decoded: a malformed reading fails the append instead of poisoning the outbox.
    """
    rows: list[list[Any]] = [
        [r.source, r.tag, r.ts_ns, r.value, r.quality, r.unit, r.reason] for r in readings
    ]
    for i, row in enumerate(rows):
        if not _valid_reading(row):
            raise BufferError(f"cannot encode reading {i}: a field has the wrong type: {row!r}")
        mark = ""
        if _is_nonfinite(row[3]):
            row[3] = _spell(row[3])
            mark = _FLOAT_MARK
        if readings[i].repeat is True:
            mark += _REPEAT_MARK
        if mark:
            row.append(mark)
    return _dumps(rows, "readings")


def encode_events(events: Sequence[Event]) -> bytes:
    """Encode events as one compact JSON array of arrays (type-checked, as for readings)."""
    rows: list[list[Any]] = [[e.kind, e.source, e.ts_ns, e.severity, e.score, e.detail] for e in events]
    for i, row in enumerate(rows):
        if not _valid_event(row):
            raise BufferError(f"cannot encode event {i}: a field has the wrong type: {row!r}")
        if _is_nonfinite(row[4]):
            row[4] = _spell(row[4])
            row.append(_FLOAT_MARK)
    return _dumps(rows, "events")


def _valid_reading(fields: Sequence[object]) -> bool:
    source, tag, ts_ns, value, quality, unit, reason = fields
    return (
        type(source) is str
        and type(tag) is str
        and type(ts_ns) is int
        and type(value) in _VALUE_TYPES
        and quality in _QUALITIES
        and type(unit) is str
        and (reason is None or type(reason) is str)
    )


def _valid_event(fields: Sequence[object]) -> bool:
    kind, source, ts_ns, severity, score, detail = fields
    return (
        type(kind) is str
        and type(source) is str
        and type(ts_ns) is int
        and severity in _SEVERITIES
        and (score is None or type(score) in (float, int))
        and type(detail) is dict
    )


def _dumps(rows: list[list[Any]], what: str) -> bytes:
    try:
        return orjson.dumps(rows)
    except orjson.JSONEncodeError as exc:
        raise BufferError(f"cannot encode {what} for the outbox: {exc}") from exc


def decode_readings(body: bytes) -> list[Reading]:
    """Decode a body written by `encode_readings`; anything else raises `BufferError`."""
    return [Reading(*fields) for fields in decode_reading_fields(body)]


def decode_reading_fields(body: bytes) -> list[ReadingFields]:
    """`decode_readings` as plain tuples: what the uplink's JSON encoding reads, without building
    a `Reading` per value (a frozen dataclass's constructor sets each field through
    `object.__setattr__`: the costliest part of decoding)."""
    out: list[ReadingFields] = []
    for i, row in enumerate(_loads(body, "readings")):
        if type(row) is not list or not 7 <= len(row) <= 8:
            raise BufferError(f"outbox body: reading {i} is not a 7-element array")
        fields = row[:7]
        repeat = False
        if len(row) == 8:
            mark = row[7]
            if type(mark) is not str or mark not in _READING_MARKS:
                raise BufferError(f"outbox body: reading {i} has an unknown marker {mark!r}")
            repeat = _REPEAT_MARK in mark
            if _FLOAT_MARK in mark:
                fields[3] = _unspell(fields[3], _FLOAT_MARK, "reading", i)
        if not _valid_reading(fields):
            raise BufferError(f"outbox body: reading {i} has a field of the wrong type: {row!r}")
        source, tag, ts_ns, value, quality, unit, reason = fields
        out.append((source, tag, ts_ns, value, quality, unit, reason, repeat))
    return out


def decode_events(body: bytes) -> list[Event]:
    """Decode a body written by `encode_events`; anything else raises `BufferError`."""
    out: list[Event] = []
    for i, row in enumerate(_loads(body, "events")):
        if type(row) is not list or not 6 <= len(row) <= 7:
            raise BufferError(f"outbox body: event {i} is not a 6-element array")
        fields = row[:6]
        if len(row) == 7:
            fields[4] = _unspell(fields[4], row[6], "event", i)
        if not _valid_event(fields):
            raise BufferError(f"outbox body: event {i} has a field of the wrong type: {row!r}")
        out.append(Event(*fields))
    return out


def _loads(body: bytes, what: str) -> list[Any]:
    try:
        rows = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BufferError(f"outbox body is not valid JSON {what}: {exc}") from exc
    if type(rows) is not list:
        raise BufferError(f"outbox body is not a JSON array of {what}")
    return rows


def _unspell(spelled: object, mark: object, what: str, i: int) -> float:
    if mark != _FLOAT_MARK or not isinstance(spelled, str) or spelled not in _NONFINITE:
        raise BufferError(f"outbox body: {what} {i} has a bad non-finite float marker")
    return float(spelled)
