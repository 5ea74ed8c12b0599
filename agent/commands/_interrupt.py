"""Ctrl-C in a command whose work runs on asyncio: one press stops it, on Python 3.11 too."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

AGAIN_S = 0.2  # how often an interrupted command's work is cancelled again until it has ended


def run_until_interrupted(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where Ctrl-C raises `KeyboardInterrupt` once `main` has ended.

    `asyncio.run` cancels `main` once. Python 3.11's `asyncio.wait_for`, which pymodbus waits for
    every answer with, swallows a cancellation that arrives as the answer does (CPython gh-86296,
    fixed in 3.12; Debian 12 ships 3.11): one Ctrl-C then left a scan of 247 unit IDs running for
    two minutes. Here the cancellation is repeated every `AGAIN_S` until `main` has ended."""
    return asyncio.run(_interruptible(main))


async def _interruptible(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(main)
    interrupted = False

    def cancel() -> None:
        nonlocal interrupted
        interrupted = True
        if not work.done():
            work.cancel()
            loop.call_later(AGAIN_S, cancel)

    try:
        loop.add_signal_handler(signal.SIGINT, cancel)
    except (ValueError, RuntimeError):  # not the main thread: asyncio.run's own handling stands
        return await work
    try:
        return await work
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
