"""The outbox body codec: exact round-trips, the non-finite float rule, and garbage rejected cleanly."""

from __future__ import annotations

import contextlib
import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from water_edge.buffer.codec import decode_events, decode_readings, encode_events, encode_readings
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading

# orjson writes strings as UTF-8, so lone surrogates (category Cs) cannot be encoded.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
values = st.one_of(st.none(), st.booleans(), ints64, st.floats(), texts)
readings = st.builds(
    Reading,
    source=texts,
    tag=texts,
    ts_ns=ints64,
    value=values,
    quality=st.sampled_from(["good", "uncertain", "bad"]),
    unit=texts,
    reason=st.none() | texts,
    repeat=st.booleans(),
)
json_leaves = st.one_of(
    st.none(), st.booleans(), ints64, st.floats(allow_nan=False, allow_infinity=False), texts
)
details = st.dictionaries(
    texts,
    st.recursive(
        json_leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)
events = st.builds(
    Event,
    kind=texts,
    source=texts,
    ts_ns=ints64,
    severity=st.sampled_from(["info", "warning", "alarm", "critical"]),
    score=st.none() | st.floats(),
    detail=details,
)


def exact(value: object) -> tuple[type, str]:
    """Equality that tells 1 from 1.0 and True, -0.0 from 0.0, and matches NaN with NaN."""
    return type(value), repr(value)


def reading_key(r: Reading) -> tuple[object, ...]:
    return (r.source, r.tag, exact(r.ts_ns), exact(r.value), r.quality, r.unit, r.reason, r.repeat)


def event_key(e: Event) -> tuple[object, ...]:
    return (e.kind, e.source, exact(e.ts_ns), e.severity, exact(e.score), orjson.dumps(e.detail))


@given(st.lists(readings, max_size=20))
def test_readings_round_trip_exactly(batch: list[Reading]) -> None:
    decoded = decode_readings(encode_readings(batch))
    assert [reading_key(r) for r in decoded] == [reading_key(r) for r in batch]


@given(st.lists(events, max_size=5))
def test_events_round_trip_exactly(batch: list[Event]) -> None:
    decoded = decode_events(encode_events(batch))
    assert [event_key(e) for e in decoded] == [event_key(e) for e in batch]
    assert [e.detail for e in decoded] == [e.detail for e in batch]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_buffer_error(body: bytes) -> None:
    for decode in (decode_readings, decode_events):
        with contextlib.suppress(BufferError):
            decode(body)


json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=9) | st.dictionaries(texts, inner)
)


@given(json_values)
def test_arbitrary_json_decodes_or_raises_buffer_error(doc: object) -> None:
    body = orjson.dumps(doc)
    for decode in (decode_readings, decode_events):
        with contextlib.suppress(BufferError):
            decode(body)


def test_layout_is_compact_arrays() -> None:
    body = encode_readings([Reading("plc1", "flow", 5, 1.5, "good", "m3/h")])
    assert orjson.loads(body) == [["plc1", "flow", 5, 1.5, "good", "m3/h", None]]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_kept_not_nulled(value: float) -> None:
    [decoded] = decode_readings(encode_readings([Reading("plc1", "flow", 5, value)]))
    assert type(decoded.value) is float
    assert repr(decoded.value) == repr(value)


def test_non_finite_event_score_is_kept() -> None:
    [decoded] = decode_events(encode_events([Event("leak", "hyd1", 1, score=math.nan)]))
    assert decoded.score is not None
    assert math.isnan(decoded.score)


@pytest.mark.parametrize(
    "reading",
    [
        Reading("plc1", "flow", 5, 2**64),  # beyond orjson's 64-bit integers
        Reading("plc1", "flow\udc80", 5, 1.0),  # lone surrogate
        Reading("plc1", "flow", 5.0, 1.0),  # type: ignore[arg-type]
        Reading("plc1", "flow", 5, [1, 2]),  # type: ignore[arg-type]
        Reading("plc1", "flow", 5, 1.0, "meh"),  # type: ignore[arg-type]
    ],
)
def test_unencodable_reading_raises_buffer_error(reading: Reading) -> None:
    with pytest.raises(BufferError, match="encode"):
        encode_readings([reading])


def test_event_detail_with_non_string_keys_raises_buffer_error() -> None:
    with pytest.raises(BufferError, match="encode"):
        encode_events([Event("leak", "hyd1", 1, detail={1: "x"})])  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"[1]",
        b'["abcdefg"]',
        b'[["s","t",1,1.0,"good","u",null,"x"]]',
        b'[["s","t",1,"nan","good","u",null,"g"]]',
        b'[["s","t",true,1.0,"good","u",null]]',
        b'[["s","t",1,1.0,"excellent","u",null]]',
    ],
)
def test_malformed_reading_bodies_raise_buffer_error(body: bytes) -> None:
    with pytest.raises(BufferError, match="outbox body"):
        decode_readings(body)
