"""The small interfaces the uplink is written against: the outbox it drains and the encoding it uses.

The acknowledgement logic (lease → publish → PUBACK → ack) only sees `OutboxRow`s and `Message`s,
so a new encoding (Sparkplug B) plugs in without touching it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import UplinkError
from water_edge.core.reading import Event, Reading, ReadingFields


class LeaseAckOutbox(Protocol):
    """What the uplink needs from the outbox (`buffer.async_outbox.AsyncOutbox` provides it)."""

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        """Up to `limit` rows with `after_id` < id <= `upto_id` (no bound if None), oldest first."""
        ...

    async def last_id(self) -> int:
        """The newest row id committed so far (rows above it are newer than this call)."""
        ...

    async def ack(self, row_ids: Sequence[int]) -> None:
        """Delete rows whose delivery the broker has acknowledged."""
        ...


class BodyCodec(Protocol):
    """Decodes an outbox row body (the `buffer.codec` module has this shape)."""

    def decode_readings(self, body: bytes) -> list[Reading]: ...

    def decode_reading_fields(self, body: bytes) -> list[ReadingFields]: ...

    def decode_events(self, body: bytes) -> list[Event]: ...


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publication made from one outbox row."""

    topic: str
    payload: bytes


class Encoder(Protocol):
    """Turns an outbox row into the message to publish; raises `EncodeError` if it cannot."""

    content_type: str
    utf8: bool  # the payloads are UTF-8 text (MQTT 5 payload format indicator 1)

    def encode(self, row: OutboxRow) -> Message: ...


class EncodeError(UplinkError):
    """A row cannot be turned into a message (corrupt body, invalid stream name, unencodable value)."""
