"""The pipeline: batched commits, one transaction per flush, nothing dropped while memory allows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.errors import BufferError
from agent.model import Event, Reading
from agent.pipeline import Pipeline
from buffer.types import Batch


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
        ("events", 1), ("a", 100), ("a", 100), ("a", 50), ("b", 10)
    ]
    assert [r.value for b in call[1:4] for r in b.readings or []] == [float(i) for i in range(250)]
    assert notified == [1]
    assert pipe.stats.committed_readings == 260
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
    for _ in range(100):
        if out.calls:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [len(b.readings or []) for b in out.calls[0]] == [3]


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
