"""The pipeline: batched commits, one transaction per flush, nothing dropped while memory allows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tests.support.testing import eventually
from water_edge.agent.pipeline import Pipeline
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.codec import decode_events, decode_readings
from water_edge.buffer.types import Batch
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading


class RecordingAppender:
    """Stands in for the outbox where a failure must be injected on demand."""

    def __init__(self) -> None:
        self.calls: list[list[Batch]] = []
        self.fail = False

    async def append(self, batches: Sequence[Batch]) -> list[int]:
        if self.fail:
            raise BufferError("database or disk is full")
        self.calls.append(list(batches))
        return list(range(len(batches)))


def readings(n: int, tag: str = "t") -> list[Reading]:
    return [Reading("dev", tag, i, float(i)) for i in range(n)]


async def test_flush_commits_all_streams_in_one_call_split_by_batch_size() -> None:
    out = RecordingAppender()
    notified = []
    pipe = Pipeline(out, lambda: notified.append(1), batch_max_readings=100)
    await pipe.submit("a", readings(250))
    await pipe.submit("b", readings(10))
    await pipe.submit_event(Event("driver_down", "a", 1))
    await pipe.flush()
    (call,) = out.calls
    assert [(b.stream, len(b.readings or b.events or [])) for b in call] == [
        ("a", 100),
        ("a", 100),
        ("a", 50),
        ("b", 10),
        ("events", 1),  # submitted last
    ]
    assert [r.value for b in call[0:3] for r in b.readings or []] == [float(i) for i in range(250)]
    assert notified == [1]
    assert pipe.stats.committed_readings == 260
    assert (pipe.stats.readings_in, pipe.stats.events_in, pipe.stats.committed_events) == (260, 1, 1)
    assert pipe.stats.flushes == 1
    assert pipe.pending == 0


async def test_a_flush_commits_readings_and_events_in_the_order_they_were_submitted() -> None:
    # Events went first: a reading a device gave just before it was lost reached the outbox after
    # its driver_down, and a Sparkplug host saw the dead device reborn with a stale good value.
    out = RecordingAppender()
    pipe = Pipeline(out, lambda: None, batch_max_readings=100)
    await pipe.submit("ua", readings(2))
    await pipe.submit("plc", readings(1))
    await pipe.submit_event(Event("driver_down", "ua", 1))
    await pipe.submit_event(Event("leak", "hyd1", 2, "alarm"))  # right after it: one row
    await pipe.submit("plc", readings(3))
    await pipe.submit_event(Event("driver_up", "ua", 3))
    await pipe.submit("ua", readings(1))
    await pipe.flush()
    (call,) = out.calls
    assert [(b.stream, len(b.readings or b.events or [])) for b in call] == [
        ("ua", 2),
        ("plc", 1),
        ("events", 2),
        ("plc", 3),
        ("events", 1),
        ("ua", 1),
    ]
    assert [e.kind for b in call if b.events for e in b.events] == ["driver_down", "leak", "driver_up"]
    assert pipe.stats.committed_readings == 7
    assert pipe.pending == 0


async def test_failed_commit_keeps_readings_in_order_for_the_next_flush() -> None:
    out = RecordingAppender()
    pipe = Pipeline(out, lambda: None)
    await pipe.submit("a", readings(5))
    out.fail = True
    await pipe.flush()
    assert pipe.stats.append_errors == 1
    assert pipe.pending == 5
    await pipe.submit("a", [Reading("dev", "t", 99, 99.0)])
    out.fail = False
    await pipe.flush()
    values = [r.value for r in out.calls[0][0].readings or []]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0, 99.0]


async def test_memory_is_bounded_when_commits_keep_failing() -> None:
    out = RecordingAppender()
    out.fail = True
    pipe = Pipeline(out, lambda: None, max_pending=1000)
    for _ in range(5):
        await pipe.submit("a", readings(600))
    assert pipe.pending <= 1000
    assert pipe.stats.dropped_readings == 3000 - pipe.pending
    assert pipe.stats.dropped_readings > 0


async def test_run_loop_flushes_on_its_interval() -> None:
    out = RecordingAppender()
    pipe = Pipeline(out, lambda: None, flush_interval_s=0.02)
    task = asyncio.create_task(pipe.run())
    await pipe.submit("a", readings(3))
    await eventually(lambda: out.calls, 1.0, what="a flush by the run loop alone")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [len(b.readings or []) for b in out.calls[0]] == [3]


async def test_an_event_and_a_full_batch_are_committed_at_once_not_at_the_next_interval() -> None:
    """An alarm reaches the outbox (and the uplink) as soon as it is raised; so does a batch that
    has reached its size. The interval only bounds how long a trickle of readings waits."""
    out = RecordingAppender()
    pipe = Pipeline(out, lambda: None, flush_interval_s=3600, batch_max_readings=100)
    task = asyncio.create_task(pipe.run())
    try:
        await pipe.submit("a", readings(3))
        await pipe.submit_event(Event("leak", "hyd1", 1, "alarm"))
        await eventually(lambda: out.calls, 10.0, what="the event committed before the hour is up")
        assert [(b.stream, len(b.readings or b.events or [])) for b in out.calls[0]] == [
            ("a", 3),
            ("events", 1),
        ]
        await pipe.submit("a", readings(100))
        await eventually(lambda: len(out.calls) == 2, 10.0, what="a full batch committed at once")
        assert [len(b.readings or []) for b in out.calls[1]] == [100]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_tap_sees_live_readings_and_a_full_tap_never_blocks() -> None:
    pipe = Pipeline(RecordingAppender(), lambda: None)
    queue = pipe.tap(maxsize=2)
    await pipe.submit("a", readings(5))
    assert queue.qsize() == 2
    assert (await queue.get()).value == 0.0
    pipe.untap(queue)
    await pipe.submit("a", readings(1))
    assert queue.qsize() == 1


async def test_empty_submit_is_a_no_op() -> None:
    out = RecordingAppender()
    pipe = Pipeline(out, lambda: None)
    await pipe.submit("a", [])
    await pipe.flush()
    assert out.calls == []


class FakeClocks:
    """A wall clock the test can step, beside a monotonic clock that only moves forward."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000 * 10**9
        self.mono = 10**12

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1e9)
        self.mono += int(seconds * 1e9)


async def test_a_wall_clock_step_flags_the_straddling_readings_and_says_so() -> None:
    from water_edge.core.clock import ClockWatch

    clocks = FakeClocks()
    watch = ClockWatch(wall_ns=lambda: clocks.wall, mono_ns=lambda: clocks.mono)
    sink = RecordingAppender()
    pipeline = Pipeline(sink, lambda: None, clock=watch)
    await pipeline.submit("a", readings(2))
    await pipeline.submit("b", readings(2))
    clocks.advance(1.0)
    clocks.wall -= 3600 * 10**9  # NTP steps the wall clock back an hour
    await pipeline.submit("a", readings(2))  # detected here
    clocks.advance(1.0)
    await pipeline.submit("b", readings(2))  # b's next batch may straddle the step too
    await pipeline.submit("a", readings(2))  # after that, good again
    await pipeline.submit("b", readings(2))
    await pipeline.flush()
    (call,) = sink.calls
    # The step's event comes where it was noticed: after the readings submitted before it.
    assert [b.stream for b in call] == ["a", "b", "events", "a", "b"]
    qualities = {s: [r.quality for b in call if b.stream == s for r in b.readings or []] for s in ("a", "b")}
    assert qualities["a"] == ["good"] * 2 + ["uncertain"] * 2 + ["good"] * 2
    assert qualities["b"] == ["good"] * 2 + ["uncertain"] * 2 + ["good"] * 2
    flagged = [r for b in call if b.readings for r in b.readings if r.quality == "uncertain"]
    assert {r.reason for r in flagged} == {"clock_step"}
    (step,) = [e for b in call for e in b.events or [] if e.kind == "clock_step"]
    assert step.detail["step_s"] == -3600.0
    assert pipeline.stats.clock_steps == 1
    assert pipeline.stats.clock_flagged_readings == 4


async def test_steady_clocks_flag_nothing_and_bad_readings_keep_their_reason() -> None:
    from water_edge.core.clock import ClockWatch

    clocks = FakeClocks()
    watch = ClockWatch(wall_ns=lambda: clocks.wall, mono_ns=lambda: clocks.mono)
    sink = RecordingAppender()
    pipeline = Pipeline(sink, lambda: None, clock=watch)
    for _ in range(50):
        clocks.advance(0.5)
        await pipeline.submit("a", readings(3))
    clocks.wall += 10 * 10**9
    await pipeline.submit("a", [Reading("dev", "x", 1, None, "bad", "", "timeout")])
    await pipeline.flush()
    all_readings = [r for b in sink.calls[0] if b.readings for r in b.readings]
    assert [r.quality for r in all_readings[:150]] == ["good"] * 150
    assert (all_readings[-1].quality, all_readings[-1].reason) == ("bad", "timeout")


async def test_a_processor_feed_gets_every_reading_in_order() -> None:
    pipeline = Pipeline(RecordingAppender(), lambda: None)
    feed = pipeline.feed("leak", max_readings=10, max_wait_s=5.0)
    got: list[float] = []

    async def consume() -> None:
        async for _stream, batch in feed:
            got.extend(float(r.value or 0) for r in batch)
            await asyncio.sleep(0.001)  # the stimulus: slower than the producer, which must wait

    task = asyncio.create_task(consume())
    for i in range(100):
        await pipeline.submit("s", [Reading("dev", "t", i, float(i)) for _ in range(3)])
    await eventually(lambda: len(got) >= 300, 5)
    task.cancel()
    assert got == [float(i) for i in range(100) for _ in range(3)]
    assert feed.dropped_readings == 0
    assert feed.waits > 0, "the bound held: the producer waited for room"


async def test_a_stuck_processor_costs_counted_drops_not_a_stuck_pipeline() -> None:
    sink = RecordingAppender()
    pipeline = Pipeline(sink, lambda: None)
    feed = pipeline.feed("stuck", max_readings=5, max_wait_s=0.05)
    for i in range(4):
        await pipeline.submit("s", readings(3, tag=f"t{i}"))
    await pipeline.flush()
    assert feed.dropped_readings == 9  # the first batch fits, the next three wait, then drop
    assert sum(len(b.readings or []) for c in sink.calls for b in c) == 12, "the outbox got all"
    assert feed.health().held_readings == 3


async def test_values_the_outbox_cannot_store_become_counted_bad_readings_not_a_stuck_pipeline(
    outbox: AsyncOutbox,
) -> None:
    # Each of these fails the outbox's encoding, which used to fail every commit from then on,
    # for every stream, until max_pending dropped the oldest readings.
    odd = [
        Reading("ua", "big", 1, 2**64),
        Reading("ua", "numpy", 2, np.float32(1.5)),  # type: ignore[arg-type]
        Reading("ua", "text", 3, "PS-\udcff"),
        Reading("ua", "unit", 4, 1.0, unit="m\udcb3"),
    ]
    events = [
        Event("pump_anomaly", "pump1", 5, "alarm", 0.9, {"z": np.float32(3.5)}),
        Event("leak", "hydrophone1", 6, "alarm", 0.8, {"position_m": 12.5}),
    ]
    pipe = Pipeline(outbox, lambda: None)
    await pipe.submit("ua", [*odd, Reading("ua", "fine", 7, 2.5)])
    await pipe.submit("plc", readings(3))
    for event in events:
        await pipe.submit_event(event)
    await pipe.flush()
    assert pipe.pending == 0
    assert pipe.stats.append_errors == 0
    assert pipe.health().unstorable == 5
    rows = await outbox.lease(0, 10)
    telemetry = [r for row in rows if row.row_class == "telemetry" for r in decode_readings(row.body)]
    stored = {r.tag: r for r in telemetry if r.source == "ua"}
    assert {tag: (r.value, r.quality, r.reason) for tag, r in stored.items()} == {
        "big": (None, "bad", "not storable: the value is an integer past 64 bits"),
        "numpy": (None, "bad", "not storable: a value of type float32"),
        "text": (None, "bad", "not storable: the value is not valid Unicode text"),
        "unit": (None, "bad", "not storable: the unit is not valid Unicode text"),
        "fine": (2.5, "good", None),
    }
    assert stored["unit"].unit == "m?"
    assert [r.value for r in telemetry if r.source == "dev"] == [0.0, 1.0, 2.0]
    (event_row,) = [row for row in rows if row.row_class == "event"]
    anomaly, leak = decode_events(event_row.body)
    assert anomaly.detail == {"not_storable": "{'z': np.float32(3.5)}"}
    assert (anomaly.kind, anomaly.score) == ("pump_anomaly", 0.9)
    assert leak.detail == {"position_m": 12.5}


async def test_a_backlog_larger_than_the_outbox_quota_is_committed_in_parts_not_retried_forever(
    tmp_path: Path,
) -> None:
    """Readings kept in memory while the disk was full can come to more than a small quota: one
    transaction of all of them never fits, and the pipeline retried it at every flush until
    max_pending dropped them. Now they go in parts that fit, in order; the quota evicts the oldest,
    counted, as for any full outbox. A reading larger than the quota on its own is stored bad."""
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=2**20, synchronous="normal") as box:
        pipe = Pipeline(box, lambda: None, max_pending=200_000)
        backlog = [Reading("plc", f"t{i % 500}", 1_000 + i, float(i), unit="m3/h") for i in range(40_000)]
        await pipe.submit("plc", backlog)  # ~2.5 MB encoded: more than the 1 MiB quota
        await pipe.submit("ua", [Reading("ua", "name", 5, "x" * 2**21), Reading("ua", "ok", 6, 1.0)])
        await pipe.flush()
        assert pipe.pending == 0
        assert pipe.stats.append_errors == 0
        assert pipe.stats.committed_readings == 40_002
        assert pipe.health().unstorable == 1
        stats = await box.stats()
        assert stats.evicted_readings > 0  # the quota made room, as it does for any outbox
        rows = await box.lease(0, 10_000)
        kept = [r for row in rows if row.row_class == "telemetry" for r in decode_readings(row.body)]
        assert stats.evicted_readings + len(kept) == 40_002  # and the eviction notice, an event
        plc = [r.value for r in kept if r.source == "plc"]
        assert plc == [float(i) for i in range(40_000 - len(plc), 40_000)]  # the newest, in order
        ua = {r.tag: (r.value, r.quality, r.reason) for r in kept if r.source == "ua"}
        assert ua == {
            "name": (None, "bad", "not storable: larger than the outbox's whole quota"),
            "ok": (1.0, "good", None),
        }
