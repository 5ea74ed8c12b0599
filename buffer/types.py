"""Plain records exchanged between the outbox, the pipeline that fills it and the uplink that drains it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from water_edge.core.reading import Event, Reading

# Eviction order when the outbox is full: telemetry goes first, events (alarms) last.
RowClass = Literal["telemetry", "event"]


@dataclass(frozen=True, slots=True)
class Batch:
    """What the pipeline appends: readings (or events) for one stream, to become one outbox row."""

    stream: str
    readings: list[Reading] | None = None
    events: list[Event] | None = None

    @property
    def row_class(self) -> RowClass:
        return "event" if self.events is not None else "telemetry"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored batch; `seq` is its stream's message sequence number, assigned at append."""

    id: int
    stream: str
    seq: int
    row_class: RowClass
    created_ns: int
    count: int
    body: bytes
    # The epoch of the outbox that holds it (`Outbox.lease` sets it); None: the uplink's own. Rows
    # of the outbox in memory while the card is read-only carry that outbox's (`AsyncOutbox`).
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    rows: int
    readings: int
    bytes: int
    max_bytes: int
    oldest_created_ns: int | None
    evicted_rows: int
    evicted_readings: int
    streams: dict[str, int]
    expired_rows: int = 0  # telemetry removed for being older than max_age_s
    expired_readings: int = 0
    disk_full: int = 0  # times an append found the disk (or max_page_count) full
    max_age_s: float | None = None
    epoch: int = 0  # the outbox's (docs/payload.md): a new outbox has a new one
    # The running agent's, while its card is read-only (`AsyncOutbox`): "<directory>: <error>" and
    # since when; readings since start stored in memory only; rows in memory now.
    read_only: str | None = None
    read_only_since_ns: int | None = None
    not_durable_readings: int = 0
    memory_rows: int = 0
