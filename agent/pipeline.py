"""Gathers readings and events from the drivers and commits them to the outbox in batched transactions.

Readings wait in memory for at most one flush interval (or until a batch fills), then one
transaction commits everything gathered; only then is the uplink told there is work. The memory
in front of the durable store is bounded: past `max_pending` a submitting driver waits for the
commit instead of the queue growing (a crash would lose the queue).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.errors import BufferError
from agent.model import EVENTS_STREAM, Event, Reading
from buffer.types import Batch

log = structlog.get_logger(__name__)


class Appender(Protocol):
    async def append(self, batches: Sequence[Batch]) -> list[int]: ...


@dataclass
class PipelineStats:
    readings_in: int = 0
    events_in: int = 0
    committed_readings: int = 0
    committed_events: int = 0
    flushes: int = 0
    append_errors: int = 0
    dropped_readings: int = 0
    last_error: str | None = None
    readings_per_s: float = 0.0


class Pipeline:
    def __init__(
        self,
        outbox: Appender,
        on_committed: Callable[[], None],
        *,
        flush_interval_s: float = 0.2,
        batch_max_readings: int = 1000,
        max_pending: int = 200_000,
    ) -> None:
        self._outbox = outbox
        self._on_committed = on_committed
        self._flush_interval_s = flush_interval_s
        self._batch_max = batch_max_readings
        self._max_pending = max_pending
        self._pending: dict[str, list[Reading]] = {}
        self._pending_events: list[Event] = []
        self._pending_count = 0
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._taps: set[asyncio.Queue[Reading]] = set()
        self.stats = PipelineStats()
        self._rate_mark = (time.monotonic(), 0)

    @property
    def pending(self) -> int:
        return self._pending_count + len(self._pending_events)

    async def submit(self, stream: str, readings: list[Reading]) -> None:
        if not readings:
            return
        self._pending.setdefault(stream, []).extend(readings)
        self._pending_count += len(readings)
        self.stats.readings_in += len(readings)
        self._feed_taps(readings)
        if self._pending_count >= self._batch_max:
            self._wake.set()
        if self._pending_count >= self._max_pending:
            await self.flush()

    async def submit_event(self, event: Event) -> None:
        self._pending_events.append(event)
        self.stats.events_in += 1
        self._wake.set()

    def tap(self, maxsize: int = 10_000) -> asyncio.Queue[Reading]:
        """A live copy of every reading (for `edge-agent tail`); a slow reader loses copies, never data."""
        queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize)
        self._taps.add(queue)
        return queue

    def untap(self, queue: asyncio.Queue[Reading]) -> None:
        self._taps.discard(queue)

    def _feed_taps(self, readings: list[Reading]) -> None:
        for queue in self._taps:
            for reading in readings:
                if queue.full():
                    break
                queue.put_nowait(reading)

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._flush_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            self._update_rate()

    def _update_rate(self) -> None:
        mark_t, mark_n = self._rate_mark
        now = time.monotonic()
        if now - mark_t >= 5.0:
            self.stats.readings_per_s = (self.stats.readings_in - mark_n) / (now - mark_t)
            self._rate_mark = (now, self.stats.readings_in)

    async def flush(self) -> None:
        """Commit everything pending in one transaction; on failure keep it for the next try."""
        async with self._flush_lock:
            if not self._pending and not self._pending_events:
                return
            pending, events = self._pending, self._pending_events
            self._pending, self._pending_events, count = {}, [], self._pending_count
            self._pending_count = 0
            batches = self._batches(pending, events)
            try:
                await self._outbox.append(batches)
            except BufferError as exc:
                self.stats.append_errors += 1
                self.stats.last_error = str(exc)
                log.error("pipeline.append_failed", error=str(exc), readings=count)
                self._requeue(pending, events, count)
                return
            self.stats.flushes += 1
            self.stats.committed_readings += count
            self.stats.committed_events += len(events)
        self._on_committed()

    def _batches(self, pending: dict[str, list[Reading]], events: list[Event]) -> list[Batch]:
        batches = [Batch(EVENTS_STREAM, events=events)] if events else []
        size = self._batch_max
        for stream, readings in pending.items():
            batches.extend(
                Batch(stream, readings=readings[i : i + size])
                for i in range(0, len(readings), size)
            )
        return batches

    def _requeue(self, pending: dict[str, list[Reading]], events: list[Event], count: int) -> None:
        """Put an uncommitted batch back in front; past the memory bound drop the oldest readings."""
        for stream, readings in pending.items():
            self._pending[stream] = readings + self._pending.get(stream, [])
        self._pending_events = events + self._pending_events
        self._pending_count += count
        overflow = self._pending_count - self._max_pending
        for readings in self._pending.values():
            if overflow <= 0:
                break
            cut = min(overflow, len(readings))
            del readings[:cut]
            overflow -= cut
            self._pending_count -= cut
            self.stats.dropped_readings += cut
