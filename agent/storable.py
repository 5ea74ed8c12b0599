"""Readings and events the outbox cannot store as given, replaced so that the rest is stored.

The outbox commits a flush's batches in one transaction, so one value it cannot encode (text that
is not Unicode, as asyncua decodes a device's invalid UTF-8 into lone surrogates; an integer past 64
bits; a numpy value) failed the whole flush, at every retry: no device's telemetry moved. Such a
reading is stored `bad`, value null, with a reason `not storable: ...`; such an event keeps its
fields, its detail replaced by its repr when the detail is what cannot be stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from water_edge.buffer.codec import encode_events, encode_readings
from water_edge.buffer.types import Batch
from water_edge.core.errors import BufferError
from water_edge.core.reading import BAD, Event, Reading, now_ns

_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1
_DETAIL_REPR_MAX: Final = 1000


def replace_unstorable(pending: dict[str, list[Reading]], events: list[Event]) -> int:
    """Replace, in place, every reading and event the outbox cannot encode; return how many.

    A batch is tried whole first, so a commit that failed for another reason (a full disk) costs
    one more encoding of each batch, not one per reading.
    """
    replaced = 0
    for stream, readings in pending.items():
        if not _encodes(encode_readings, readings):
            fixed = [r if _encodes(encode_readings, [r]) else _storable_reading(r) for r in readings]
            replaced += sum(a is not b for a, b in zip(readings, fixed, strict=True))
            pending[stream] = fixed
    if events and not _encodes(encode_events, events):
        for i, event in enumerate(events):
            if not _encodes(encode_events, [event]):
                events[i] = _storable_event(event)
                replaced += 1
    return replaced


def _encodes(encode: Callable[[Any], bytes], items: Sequence[Any]) -> bool:
    try:
        encode(items)
    except BufferError:
        return False
    return True


def _text(text: object) -> str:
    """`text` as a str the outbox can store: a lone surrogate (an undecodable byte a driver kept
    with surrogateescape) becomes "?"."""
    if type(text) is not str:
        text = repr(text)
    return text.encode("utf-8", "replace").decode("utf-8")


def _unstorable_reason(reading: Reading) -> str:
    value = reading.value
    if type(value) is int and not _INT64_MIN <= value <= _UINT64_MAX:
        return "not storable: the value is an integer past 64 bits"
    if type(value) not in (float, int, bool, str, type(None)):
        return f"not storable: a value of type {type(value).__name__}"
    for name in ("value", "unit", "reason", "tag", "source"):
        field = getattr(reading, name)
        if type(field) is str and _text(field) != field:
            return f"not storable: the {name} is not valid Unicode text"
    return "not storable: a field of the wrong type"


def _storable_reading(reading: Reading) -> Reading:
    """A bad reading, with valid text, in place of one the outbox cannot encode."""
    ts_ns = reading.ts_ns if type(reading.ts_ns) is int else now_ns()
    return Reading(
        _text(reading.source),
        _text(reading.tag),
        ts_ns,
        None,
        BAD,
        _text(reading.unit),
        _unstorable_reason(reading),
        reading.repeat is True,
    )


def _storable_event(event: Event) -> Event:
    """The event with valid text and, if its detail is what cannot be stored, the detail's repr."""
    detail = event.detail
    if not _encodes(encode_events, [Event("kind", "source", 0, detail=detail)]):
        detail = {"not_storable": _text(repr(detail)[:_DETAIL_REPR_MAX])}
    score = event.score if type(event.score) is float or type(event.score) is int else None
    if type(score) is int and not _INT64_MIN <= score <= _UINT64_MAX:
        score = None
    ts_ns = event.ts_ns if type(event.ts_ns) is int else now_ns()
    severity = event.severity if event.severity in ("info", "warning", "alarm", "critical") else "warning"
    return Event(_text(event.kind), _text(event.source), ts_ns, severity, score, detail)


def too_large(batch: Batch) -> Batch:
    """In place of a batch of one reading or event that is larger than the outbox's whole quota
    (a multi-megabyte string under a small quota): the reading as a bad one without its value, the
    event without its detail."""
    why = "larger than the outbox's whole quota"
    if batch.readings:
        r = batch.readings[0]
        reading = Reading(r.source, r.tag[:200], r.ts_ns, None, BAD, r.unit[:50], f"not storable: {why}")
        return Batch(batch.stream, readings=[reading])
    e = (batch.events or [])[0]
    event = Event(e.kind[:200], e.source[:200], e.ts_ns, e.severity, None, {"not_storable": why})
    return Batch(batch.stream, events=[event])
