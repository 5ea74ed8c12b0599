"""Gathers readings and events from the drivers and commits them to the outbox in batched transactions.

Readings wait in memory for at most one flush interval (or until a batch fills), then one
transaction commits everything gathered; only then is the uplink told there is work. The memory
in front of the durable store is bounded: past `max_pending` a submitting driver waits for the
commit instead of the queue growing (a crash would lose the queue).

Two more things see every submitted reading:
- while the clock is not synchronised (`agent.clock_sync`), every good reading becomes `uncertain`
  with reason `clock not synchronised`; the first forward step of the clock after that moves the
  readings stamped before it by the step (in memory, and in the outbox where nobody has leased
  them yet) and gives them reason `clock restamped`;
- a wall-clock step (`core.clock`) found at a submit marks that submit's readings and the next
  submit of every other stream `uncertain` with reason `clock_step`, and adds a `clock_step`
  event; seqs and ordering are untouched (they never depend on the wall clock);
- analytics processors read a `ReadingFeed` each: bounded, and lossless unless a processor falls
  behind by more than `max_wait_s` — a submit waits for room (backpressure on the poll loop,
  visible as overruns) and only then drops the batch for that feed, counting it.

`Pipeline.health()` and `ReadingFeed.health()` are their typed health (`core.health.Health`): the
status document's `pipeline` section and each processor's `feed`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from water_edge.agent.clock_sync import UNSYNC_REASON, ClockSync, restamped
from water_edge.agent.storable import replace_unstorable, too_large
from water_edge.buffer.types import Batch
from water_edge.core.clock import ClockStep, ClockWatch
from water_edge.core.errors import BufferError, QuotaExceededError
from water_edge.core.reading import EVENTS_STREAM, GOOD, UNCERTAIN, Event, Reading, now_ns

log = structlog.get_logger(__name__)


class _AppendStoppedError(Exception):
    """An append failed (not for the quota): the batches not committed, and why."""

    def __init__(self, remaining: list[Batch], error: BufferError) -> None:
        super().__init__(str(error))
        self.remaining, self.error = remaining, error


def _halves(batches: list[Batch]) -> list[list[Batch]] | None:
    """`batches` split in two, in order (a single batch by its items); None for a single item."""
    if len(batches) > 1:
        mid = len(batches) // 2
        return [batches[:mid], batches[mid:]]
    (batch,) = batches
    items: list[Any] = batch.readings if batch.readings is not None else list(batch.events or ())
    if len(items) < 2:
        return None
    mid = len(items) // 2
    if batch.readings is not None:
        return [[Batch(batch.stream, readings=items[:mid])], [Batch(batch.stream, readings=items[mid:])]]
    return [[Batch(batch.stream, events=items[:mid])], [Batch(batch.stream, events=items[mid:])]]


def _unbatched(batches: list[Batch]) -> tuple[dict[str, list[Reading]], list[Event]]:
    """The readings by stream and the events of `batches`, in order."""
    pending: dict[str, list[Reading]] = {}
    events: list[Event] = []
    for batch in batches:
        if batch.events is not None:
            events += batch.events
        else:
            pending.setdefault(batch.stream, []).extend(batch.readings or ())
    return pending, events


class Appender(Protocol):
    async def append(self, batches: Sequence[Batch]) -> list[int]: ...


CLOCK_STEP_REASON = "clock_step"


@dataclass(frozen=True, slots=True)
class FeedHealth:
    """One processor's feed: what waits in it, what it delivered and dropped, how often a submit waited."""

    held_readings: int
    delivered_readings: int
    dropped_readings: int
    waits: int

    def status_lines(self) -> list[str]:
        return [
            f"held {self.held_readings}  delivered {self.delivered_readings}  "
            f"dropped {self.dropped_readings}  waits {self.waits}"
        ]


class ReadingFeed:
    """One processor's bounded queue of `(stream, readings)` batches, in submit order: the
    `core.processor.ReadingSource` a processor reads.

    `put` waits (up to `max_wait_s`) while the feed holds `max_readings`; past that the batch is
    dropped for this feed only and counted in `dropped_readings`. A batch larger than the bound
    is accepted into an empty feed, so nothing is dropped merely for its size.
    """

    def __init__(
        self,
        name: str,
        *,
        streams: frozenset[str] | None = None,
        max_readings: int = 50_000,
        max_wait_s: float = 1.0,
    ) -> None:
        self.name = name
        self.streams = streams
        self.max_readings = max_readings
        self.max_wait_s = max_wait_s
        self._batches: deque[tuple[str, list[Reading]]] = deque()
        self._held = 0
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self.delivered_readings = 0
        self.dropped_readings = 0
        self.waits = 0

    def wants(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    async def put(self, stream: str, readings: list[Reading]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._held and self._held + len(readings) > self.max_readings:
            self.waits += 1
            self._room.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._room.wait()
            except TimeoutError:
                self.dropped_readings += len(readings)
                log.warning("feed.dropped", feed=self.name, stream=stream, readings=len(readings))
                return
        self._batches.append((stream, readings))
        self._held += len(readings)
        self._data.set()

    async def get(self) -> tuple[str, list[Reading]]:
        """The oldest batch, waiting for one."""
        while not self._batches:
            self._data.clear()
            await self._data.wait()
        stream, readings = self._batches.popleft()
        self._held -= len(readings)
        self.delivered_readings += len(readings)
        self._room.set()
        return stream, readings

    def __aiter__(self) -> ReadingFeed:
        return self

    async def __anext__(self) -> tuple[str, list[Reading]]:
        return await self.get()

    def health(self) -> FeedHealth:
        return FeedHealth(
            held_readings=self._held,
            delivered_readings=self.delivered_readings,
            dropped_readings=self.dropped_readings,
            waits=self.waits,
        )


@dataclass
class PipelineStats:
    """The pipeline's running counters (mutable; `Pipeline.health()` is the frozen copy)."""

    readings_in: int = 0
    events_in: int = 0
    committed_readings: int = 0
    committed_events: int = 0
    flushes: int = 0
    append_errors: int = 0
    dropped_readings: int = 0
    last_error: str | None = None
    readings_per_s: float = 0.0
    clock_steps: int = 0
    clock_flagged_readings: int = 0
    unstorable: int = 0


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    """The pipeline's counters at one moment, and the readings waiting in memory for a commit."""

    readings_in: int
    events_in: int
    committed_readings: int
    committed_events: int
    flushes: int
    append_errors: int
    dropped_readings: int  # dropped from memory after failed commits, past `max_pending`
    last_error: str | None
    readings_per_s: float
    clock_steps: int
    clock_flagged_readings: int
    pending: int  # readings and events not yet committed
    # readings committed as bad, and events with their detail replaced, because the outbox could
    # not store them as given (text that is not Unicode, an integer past 64 bits, a foreign type)
    unstorable: int = 0

    def status_lines(self) -> list[str]:
        return [
            f"{self.readings_per_s:.0f} readings/s  pending {self.pending}  committed "
            f"{self.committed_readings}  append errors {self.append_errors}  dropped {self.dropped_readings}"
        ]


class Pipeline:
    def __init__(
        self,
        outbox: Appender,
        on_committed: Callable[[], None],
        *,
        flush_interval_s: float = 0.2,
        batch_max_readings: int = 1000,
        max_pending: int = 200_000,
        clock: ClockWatch | None = None,
        sync: ClockSync | None = None,
    ) -> None:
        self._outbox = outbox
        self._on_committed = on_committed
        self._flush_interval_s = flush_interval_s
        self._batch_max = batch_max_readings
        self._max_pending = max_pending
        self._pending: dict[str, list[Reading]] = {}
        self._pending_events: list[Event] = []
        # Per pending event, how many readings of each stream were pending when it came: a flush
        # commits them in that order (`_batches`).
        self._event_cuts: list[dict[str, int]] = []
        self._pending_count = 0
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._taps: set[asyncio.Queue[Reading]] = set()
        self.stats = PipelineStats()
        self._rate_mark = (time.monotonic(), 0)
        self._clock = clock or ClockWatch()
        self._sync = sync
        self._streams_seen: set[str] = set()
        self._flag_next: set[str] = set()
        self._feeds: list[ReadingFeed] = []
        # Bumped on every pass of the flush loop: the watchdog's proof that the loop and its
        # timers run (the flush loop wakes at least every flush interval).
        self.heartbeat = 0

    def feed(self, name: str, **kwargs: Any) -> ReadingFeed:
        """A new `ReadingFeed` that gets every reading submitted from now on (see `ReadingFeed`)."""
        feed = ReadingFeed(name, **kwargs)
        self._feeds.append(feed)
        return feed

    @property
    def pending(self) -> int:
        return self._pending_count + len(self._pending_events)

    def health(self) -> PipelineHealth:
        return PipelineHealth(**dataclasses.asdict(self.stats), pending=self.pending)

    async def submit(self, stream: str, readings: list[Reading]) -> None:
        if not readings:
            return
        step = self._clock.check()
        undo = None
        if step is not None:
            self._on_clock_step(step)
            undo = None if self._sync is None else self._sync.note_step(step)
        if self._sync is not None and self._sync.unsynchronised:
            self._flag_next.discard(stream)
            readings = self._flag_unsynchronised(readings)
        elif stream in self._flag_next or step is not None:
            self._flag_next.discard(stream)
            readings = self._flag(readings)
        self._streams_seen.add(stream)
        for feed in self._feeds:
            if feed.wants(stream):
                await feed.put(stream, readings)
        self._pending.setdefault(stream, []).extend(readings)
        self._pending_count += len(readings)
        self.stats.readings_in += len(readings)
        self._feed_taps(readings)
        if self._pending_count >= self._batch_max:
            self._wake.set()
        if self._pending_count >= self._max_pending:
            await self.flush()
        if undo is not None and self._sync is not None:
            self._restamp_pending(undo)
            await self.flush()  # so that every reading stamped before the step is in the outbox
            await self._sync.restamp_committed(undo)

    def _restamp_pending(self, step: ClockStep) -> None:
        """Readings still in memory that were stamped before the step, moved by it."""
        moved = 0
        for stream, readings in self._pending.items():
            fixed = [restamped(r, step) for r in readings]
            moved += sum(a is not b for a, b in zip(readings, fixed, strict=True))
            self._pending[stream] = fixed
        if self._sync is not None:
            self._sync.restamped += moved

    def _on_clock_step(self, step: ClockStep) -> None:
        self.stats.clock_steps += 1
        self._flag_next = set(self._streams_seen)
        step_s = round(step.step_ns / 1e9, 3)
        log.warning("clock.step", step_s=step_s)
        self._event_cuts.append(self._cut())
        self._pending_events.append(
            Event(
                "clock_step",
                "agent",
                now_ns(),
                "warning",
                detail={
                    "step_s": step_s,
                    "wall_before_ns": step.wall_before_ns,
                    "wall_after_ns": step.wall_after_ns,
                },
            )
        )
        self.stats.events_in += 1
        self._wake.set()

    def _flag(self, readings: list[Reading]) -> list[Reading]:
        """Good readings whose timestamps may straddle a clock step become uncertain."""
        flagged = [
            dataclasses.replace(r, quality=UNCERTAIN, reason=CLOCK_STEP_REASON) if r.quality == GOOD else r
            for r in readings
        ]
        self.stats.clock_flagged_readings += sum(r.quality == GOOD for r in readings)
        return flagged

    def _flag_unsynchronised(self, readings: list[Reading]) -> list[Reading]:
        """Every reading says its timestamp is not to be trusted: good ones become uncertain, and
        the clock's reason goes in front of any reason a reading already has."""
        flagged = [
            dataclasses.replace(r, quality=UNCERTAIN, reason=UNSYNC_REASON)
            if r.quality == GOOD
            else dataclasses.replace(r, reason=f"{UNSYNC_REASON}; {r.reason}" if r.reason else UNSYNC_REASON)
            for r in readings
        ]
        self.stats.clock_flagged_readings += len(readings)
        if self._sync is not None:
            self._sync.marked += len(readings)
        return flagged

    async def submit_event(self, event: Event) -> None:
        self._event_cuts.append(self._cut())
        self._pending_events.append(event)
        self.stats.events_in += 1
        self._wake.set()

    def _cut(self) -> dict[str, int]:
        """Where an event comes among the pending readings: each stream's count so far."""
        return {stream: len(readings) for stream, readings in self._pending.items() if readings}

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
            self.heartbeat += 1
            await self.flush()
            self._update_rate()

    def _update_rate(self) -> None:
        mark_t, mark_n = self._rate_mark
        now = time.monotonic()
        if now - mark_t >= 5.0:
            self.stats.readings_per_s = (self.stats.readings_in - mark_n) / (now - mark_t)
            self._rate_mark = (now, self.stats.readings_in)

    async def flush(self) -> None:
        """Commit everything pending; what cannot be committed is kept for the next try."""
        async with self._flush_lock:
            if not self._pending and not self._pending_events:
                return
            pending, events, cuts = self._pending, self._pending_events, self._event_cuts
            self._pending, self._pending_events, self._event_cuts, self._pending_count = {}, [], [], 0
            remaining = self._batches(pending, events, cuts)
            committed = [0, 0]  # readings, events
            try:
                remaining = await self._append_within_quota(remaining, committed)
            except _AppendStoppedError as first:
                # One value the outbox cannot encode fails its transaction, and would again at
                # every retry: replace it and try once more at once.
                remaining, error = first.remaining, first.error
                pending, events = _unbatched(remaining)
                replaced = replace_unstorable(pending, events)
                if replaced:
                    self.stats.unstorable += replaced
                    log.warning("pipeline.unstorable", replaced=replaced, error=str(error))
                    try:
                        remaining = await self._append_within_quota(
                            self._batches(pending, events, [{}] * len(events)), committed
                        )
                    except _AppendStoppedError as again:
                        remaining, error = again.remaining, again.error
                if remaining:
                    pending, events = _unbatched(remaining)
                    count = sum(len(r) for r in pending.values())
                    self.stats.append_errors += 1
                    self.stats.last_error = str(error)
                    log.error("pipeline.append_failed", error=str(error), readings=count)
                    self._requeue(pending, events, count)
            if committed == [0, 0]:
                return
            self.stats.flushes += 1
            self.stats.committed_readings += committed[0]
            self.stats.committed_events += committed[1]
        self._on_committed()

    async def _append_within_quota(self, batches: list[Batch], committed: list[int]) -> list[Batch]:
        """Append `batches` in one transaction or, when that is more than the outbox's whole quota
        (a backlog that built up while the disk was full, under a small quota), in parts that fit,
        in order; a reading or event larger than the quota on its own is stored as what it is (see
        `storable.too_large`). Counts what was committed into `committed`; `_AppendStoppedError` with what
        was not when an append fails otherwise. Returns [] (nothing remains)."""
        parts = deque([batches])
        while parts:
            part = parts.popleft()
            try:
                await self._outbox.append(part)
            except QuotaExceededError as exc:
                halves = _halves(part)
                if halves is None:  # one reading or event alone
                    self.stats.unstorable += 1
                    log.warning("pipeline.too_large", stream=part[0].stream, error=str(exc))
                    parts.appendleft([too_large(part[0])])
                else:
                    parts.extendleft(reversed(halves))
                continue
            except BufferError as exc:
                raise _AppendStoppedError([b for p in (part, *parts) for b in p], exc) from None
            for batch in part:
                committed[0] += len(batch.readings or ())
                committed[1] += len(batch.events or ())
        return []

    def _batches(
        self, pending: dict[str, list[Reading]], events: list[Event], cuts: list[dict[str, int]]
    ) -> list[Batch]:
        """The outbox rows of one flush, in the order things were submitted: the readings pending
        when an event came, then the event (with those that came right after it), then the rest.
        Events went first before, and a reading taken just before a device was lost reached the
        outbox after its `driver_down`: a Sparkplug host saw the device reborn with it."""
        batches: list[Batch] = []
        done = dict.fromkeys(pending, 0)
        first = 0
        while first < len(events):
            cut = cuts[first]
            last = first + 1
            while last < len(events) and cuts[last] == cut:
                last += 1
            for stream, readings in pending.items():
                end = min(cut.get(stream, 0), len(readings))
                if end > done[stream]:
                    batches += self._chunks(stream, readings[done[stream] : end])
                    done[stream] = end
            batches.append(Batch(EVENTS_STREAM, events=events[first:last]))
            first = last
        for stream, readings in pending.items():
            batches += self._chunks(stream, readings[done[stream] :])
        return batches

    def _chunks(self, stream: str, readings: list[Reading]) -> list[Batch]:
        size = self._batch_max
        return [Batch(stream, readings=readings[i : i + size]) for i in range(0, len(readings), size)]

    def _requeue(self, pending: dict[str, list[Reading]], events: list[Event], count: int) -> None:
        """Put an uncommitted batch back in front; past the memory bound drop the oldest readings."""
        for stream, readings in pending.items():
            self._pending[stream] = readings + self._pending.get(stream, [])
        self._pending_events = events + self._pending_events
        # The events put back go first, as they would have; those that came meanwhile keep their
        # place behind the readings now in front of them.
        self._event_cuts = [{} for _ in events] + [
            {s: cut.get(s, 0) + len(pending.get(s, ())) for s in cut.keys() | pending.keys()}
            for cut in self._event_cuts
        ]
        self._pending_count += count
        overflow = self._pending_count - self._max_pending
        for stream, readings in self._pending.items():
            if overflow <= 0:
                break
            cut = min(overflow, len(readings))
            del readings[:cut]
            for event_cut in self._event_cuts:
                if stream in event_cut:
                    event_cut[stream] = max(0, event_cut[stream] - cut)
            overflow -= cut
            self._pending_count -= cut
            self.stats.dropped_readings += cut
