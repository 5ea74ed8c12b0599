"""Wall-clock step detection: notices when the UTC clock jumps (NTP, an operator, a dead RTC).

Scheduling never reads the wall clock (see `agent.scheduler`); only timestamps do. Between two
checks the wall clock must advance as much as the monotonic clock; when the two deltas differ by
more than `threshold_s`, the wall clock was stepped by that difference. `check()` is two clock
reads, cheap enough to call on every pipeline submit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


def _boottime_ns() -> int:
    # CLOCK_BOOTTIME keeps counting through a suspend, so a resumed gateway is not a "step".
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class ClockStep:
    """One detected step: positive when the wall clock jumped forward."""

    step_ns: int
    wall_before_ns: int
    wall_after_ns: int


class ClockWatch:
    """Compares wall and monotonic deltas between calls; see the module docstring."""

    def __init__(
        self,
        *,
        threshold_s: float = 1.0,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] | None = None,
    ) -> None:
        self._threshold_ns = int(threshold_s * 1e9)
        self._wall = wall_ns
        self._mono = mono_ns or _boottime_ns
        self._last = (wall_ns(), self._mono())
        self.steps = 0
        self.last_step: ClockStep | None = None

    def check(self) -> ClockStep | None:
        """The step since the previous call, or None if the wall clock kept pace."""
        wall, mono = self._wall(), self._mono()
        last_wall, last_mono = self._last
        self._last = (wall, mono)
        step = (wall - last_wall) - (mono - last_mono)
        if abs(step) <= self._threshold_ns:
            return None
        self.steps += 1
        self.last_step = ClockStep(step, last_wall + (mono - last_mono), wall)
        return self.last_step
