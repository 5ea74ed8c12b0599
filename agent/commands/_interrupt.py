"""Ctrl-C in a command whose work runs on asyncio: one press stops it, on Python 3.11 too."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from water_edge.core.tasks import cancel_all

T = TypeVar("T")

AGAIN_S = 0.2  # an interrupted command's work is cancelled again this often until it has ended


def run_until_interrupted(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where Ctrl-C raises `KeyboardInterrupt` once `main` has ended.

    `asyncio.run` cancels `main` once. Python 3.11's `asyncio.wait_for`, which pymodbus waits for
    every answer with, can lose that cancellation (`core.tasks`): one Ctrl-C then left a scan of
    247 unit IDs running for two minutes. Here it is cancelled again every `AGAIN_S` until it has
    ended, as the agent stops its tasks."""
    return asyncio.run(_interruptible(main))


async def _interruptible(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(main)
    stopping: list[asyncio.Task[None]] = []

    def interrupt() -> None:
        if not stopping:
            stopping.append(loop.create_task(cancel_all([work], recancel_s=AGAIN_S)))

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return await work  # started with Ctrl-C ignored (a background job, nohup): it stays so
    try:
        loop.add_signal_handler(signal.SIGINT, interrupt)
    except (ValueError, RuntimeError):  # not the main thread: asyncio.run's own handling stands
        return await work
    try:
        return await work
    except asyncio.CancelledError:
        if stopping:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
