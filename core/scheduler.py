"""Fixed-rate ticks on the monotonic clock: no drift, and missed ticks are counted, not bunched up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class FixedRateTicker:
    """Tick k falls due at start + k*period; a late poll skips the slots it missed and counts them.

    Wall-clock steps (NTP) cannot move the schedule because only `time.monotonic` is read.
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if period_s <= 0:
            raise ValueError("period must be positive")
        self.period_s = period_s
        self._clock = clock
        self._start = clock()
        self._tick = 0
        self.overruns = 0

    def next_delay(self) -> float:
        """Advance to the next due slot; return how long to sleep until it."""
        self._tick += 1
        now = self._clock()
        due = self._start + self._tick * self.period_s
        if now >= due:
            # The poll took longer than a period: skip to the next slot in the future.
            behind = int((now - due) // self.period_s) + 1
            self.overruns += behind
            self._tick += behind
            due = self._start + self._tick * self.period_s
        return due - now

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())
