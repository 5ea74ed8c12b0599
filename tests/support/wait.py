"""Waiting on a condition in async tests: poll it until true, or fail after a deadline (no fixed sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(predicate: Callable[[], bool], within_s: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within_s} s")
        await asyncio.sleep(0.02)
