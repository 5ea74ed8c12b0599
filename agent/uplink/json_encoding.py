"""The JSON payload encoding (documented in docs/payload.md, schema in docs/payload.schema.json).

One outbox row becomes one message. Timestamps are integer UTC nanoseconds; `(epoch, stream, seq)`
is the deduplication key for the centre: `epoch` is the outbox's, so the seqs of a new outbox (a
replaced card, a damaged file moved aside) are never taken for repeats of the old one's. JSON has
no NaN or infinity: such a float `value` is sent as `null` with `"nonfinite": "nan" | "inf" |
"-inf"` beside it, so it is neither hidden nor mistaken for a missing value.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import orjson

from water_edge.agent.uplink.compression import Compression
from water_edge.agent.uplink.compression import codec as compressor
from water_edge.agent.uplink.interfaces import BodyCodec, EncodeError, Message
from water_edge.agent.uplink.topics import Topics
from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import BufferError, UplinkError
from water_edge.core.reading import GOOD, Event, Reading, ReadingFields, now_ns

PAYLOAD_VERSION: Final = 2
CONTENT_TYPE: Final = "application/json"
_OPTS: Final = orjson.OPT_NON_STR_KEYS
_R = TypeVar("_R")


def _reading(fields: ReadingFields) -> dict[str, Any]:
    source, tag, ts_ns, value, quality, unit, reason, repeat = fields
    out: dict[str, Any] = {
        "tag": tag,
        "ts": ts_ns,
        "value": value,
        "quality": quality,
        "unit": unit,
        "source": source,
    }
    if quality != GOOD:
        out["reason"] = reason or ""
    if repeat:
        out["repeat"] = True
    # x - x is 0.0 for every finite float and NaN for NaN and both infinities.
    if type(value) is float and value - value != 0.0:
        out["value"] = None
        out["nonfinite"] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return out


def _event(e: Event) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "source": e.source,
        "ts": e.ts_ns,
        "severity": e.severity,
        "score": e.score,
        "detail": e.detail,
    }


def _default(obj: object) -> str:
    # Event.detail is free-form; a value orjson cannot serialise must not wedge the outbox.
    return repr(obj)


def encode_items(
    row: OutboxRow,
    site: str,
    gateway: str,
    *,
    epoch: int,
    readings: Sequence[ReadingFields] | None,
    events: list[Event] | None,
    sent_ns: int | None = None,
) -> bytes:
    """The JSON document for one row whose body is already decoded (readings as `ReadingFields`)."""
    doc: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "epoch": epoch,
        "stream": row.stream,
        "seq": row.seq,
        "site": site,
        "gateway": gateway,
        "sent_ns": now_ns() if sent_ns is None else sent_ns,
    }
    if events is not None:
        doc["events"] = [_event(e) for e in events]
    else:
        doc["readings"] = [_reading(r) for r in readings or ()]
    try:
        return orjson.dumps(doc, default=_default, option=_OPTS)
    except orjson.JSONEncodeError as exc:
        raise EncodeError(f"row {row.id} of stream {row.stream!r}: {exc}") from exc


def default_codec() -> BodyCodec:
    """`buffer.codec`, imported on first use."""
    codec: BodyCodec = importlib.import_module("water_edge.buffer.codec")
    return codec


def decode_body(codec: BodyCodec, row: OutboxRow) -> tuple[list[Reading] | None, list[Event] | None]:
    """Readings or events of a row, by its row class; a corrupt body raises `EncodeError`."""
    return _decode(row, codec.decode_readings, codec.decode_events)


def decode_body_fields(
    codec: BodyCodec, row: OutboxRow
) -> tuple[list[ReadingFields] | None, list[Event] | None]:
    """`decode_body` with readings as `ReadingFields`, for encodings that only pass values on."""
    return _decode(row, codec.decode_reading_fields, codec.decode_events)


def _decode(
    row: OutboxRow, readings: Callable[[bytes], _R], events: Callable[[bytes], list[Event]]
) -> tuple[_R | None, list[Event] | None]:
    try:
        if row.row_class == "event":
            return None, events(row.body)
        return readings(row.body), None
    except (BufferError, ValueError, TypeError) as exc:
        raise EncodeError(f"row {row.id} of stream {row.stream!r}: undecodable body: {exc}") from exc


def encode(
    row: OutboxRow, site: str, gateway: str, codec: BodyCodec | None = None, *, epoch: int = 0
) -> bytes:
    """The JSON payload of one outbox row (body decoded with `buffer.codec` unless `codec` is given),
    under the epoch of the outbox the row was leased from, else `epoch`."""
    readings, events = decode_body_fields(codec or default_codec(), row)
    epoch = epoch if row.epoch is None else row.epoch
    return encode_items(row, site, gateway, epoch=epoch, readings=readings, events=events)


class JsonEncoder:
    """The `Encoder` for JSON: topic `{prefix}/{site}/{gateway}/{stream}`, payload per `encode()`
    with the outbox's `epoch`, compressed when `compression` says so (`agent.uplink.compression`)."""

    def __init__(
        self,
        topics: Topics,
        codec: BodyCodec | None = None,
        compression: Compression = "none",
        *,
        epoch: int = 0,
    ) -> None:
        self._topics = topics
        self._epoch = epoch
        self._codec = codec
        self._topic_cache: dict[str, str] = {}
        self._compression = compressor(compression)
        self.content_type = self._compression.content_type
        self.utf8 = self._compression.utf8

    def encode(self, row: OutboxRow) -> Message:
        topic = self._topic_cache.get(row.stream)
        if topic is None:
            try:
                topic = self._topics.stream(row.stream)
            except UplinkError as exc:
                raise EncodeError(f"row {row.id}: {exc}") from exc
            self._topic_cache[row.stream] = topic
        if self._codec is None:
            self._codec = default_codec()
        readings, events = decode_body_fields(self._codec, row)
        payload = encode_items(
            row,
            self._topics.site,
            self._topics.gateway,
            epoch=self._epoch if row.epoch is None else row.epoch,
            readings=readings,
            events=events,
        )
        compress = self._compression.compress
        return Message(topic, payload if compress is None else compress(payload))
