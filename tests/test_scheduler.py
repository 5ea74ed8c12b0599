"""Fixed-rate polling: ticks stay on the grid and late polls are counted as overruns."""

from __future__ import annotations

import pytest

from water_edge.core.backoff import Backoff
from water_edge.core.scheduler import FixedRateTicker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ticks_do_not_drift_when_polls_take_time() -> None:
    clock = FakeClock()
    ticker = FixedRateTicker(1.0, clock)
    due_times = []
    for _ in range(100):
        clock.now += 0.3  # the poll itself
        clock.now += ticker.next_delay()
        due_times.append(clock.now)
    assert due_times[-1] == pytest.approx(1000.0 + 100.0)
    assert ticker.overruns == 0


def test_a_slow_poll_skips_missed_slots_and_counts_them() -> None:
    clock = FakeClock()
    ticker = FixedRateTicker(1.0, clock)
    clock.now += 2.5  # a poll that took two and a half periods
    delay = ticker.next_delay()
    assert ticker.overruns == 2
    assert clock.now + delay == pytest.approx(1003.0)  # back on the grid, not bunched up


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(0.5, 8.0)
    delays = [backoff.next_delay() for _ in range(20)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 2.0  # it grows
    assert len(set(delays)) > 10  # and is not in lock-step
    backoff.reset()
    assert backoff.next_delay() <= 1.0
