"""`core.sampling.SampleTimes`: samples due in reading time, and a clock stepped back."""

from __future__ import annotations

from water_edge.core.sampling import Due, SampleTimes

S = 1_000_000_000
T0 = 28_333_333 * 60 * S  # on a minute


def test_samples_fall_due_every_step_and_once_after_a_gap() -> None:
    times = SampleTimes(60)
    assert times.reading(T0 + 10 * S) == Due()  # the first reading sets the first sample due
    assert times.next_ns == T0 + 60 * S
    assert times.reading(T0 + 50 * S) == Due()
    assert times.reading(T0 + 70 * S) == Due((T0 + 60 * S,))
    # An hour without readings: the sample due, then one at the last step before the reading.
    assert times.reading(T0 + 3670 * S) == Due((T0 + 120 * S, T0 + 3660 * S))
    assert times.steps_back == 0


def test_a_reading_ten_minutes_late_is_waited_for_and_one_later_still_is_a_clock_stepped_back() -> None:
    times = SampleTimes(60)
    times.reading(T0 + 3600 * S)
    assert times.reading(T0 + 3000 * S) == Due()  # 10 min: a slow poll of another device
    assert times.next_ns == T0 + 3660 * S
    assert times.steps_back == 0
    assert times.reading(T0 + 2999 * S) == Due(stepped_back_ns=601 * S)
    assert times.steps_back == 1
    assert times.next_ns == T0 + 3000 * S  # sampling starts again from the reading
    assert times.reading(T0 + 3001 * S) == Due((T0 + 3000 * S,))
    assert times.reading(T0 + 3500 * S).stepped_back_ns == 0  # later than the reading it went back to
