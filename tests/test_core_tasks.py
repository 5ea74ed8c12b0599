"""`core.tasks.cancel_all`: a stop ends even when a task loses a cancellation (asyncio.wait_for on
Python 3.11 does when its inner call completes at the same moment)."""

from __future__ import annotations

import asyncio
import contextlib

from water_edge.core.tasks import cancel_all


async def test_a_task_that_loses_one_cancellation_is_cancelled_again_and_the_stop_ends() -> None:
    cancelled = 0
    closed = []

    async def swallows_once() -> None:
        nonlocal cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        cancelled += 1  # ran on, as after a lost cancellation
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # its cleanup still runs
            closed.append(True)

    async def plain() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(swallows_once()), asyncio.create_task(plain())]
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_all(tasks, recancel_s=0.05)
    assert all(t.cancelled() for t in tasks)
    assert cancelled == 1
    assert closed == [True]


async def test_a_task_cleaning_up_within_the_interval_is_not_cancelled_twice() -> None:
    steps = []

    async def closes_slowly() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.1)  # e.g. an OPC UA session being closed
            steps.append("closed")

    task = asyncio.create_task(closes_slowly())
    await asyncio.sleep(0)
    await cancel_all([task], recancel_s=5.0)
    assert steps == ["closed"]
    assert task.cancelled()


async def test_finished_tasks_are_left_as_they_are() -> None:
    async def result() -> int:
        return 7

    task = asyncio.create_task(result())
    await task
    await cancel_all([task])
    assert task.result() == 7
