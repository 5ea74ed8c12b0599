"""The night-flow step detector's baseline over the months a district is watched: weekend nights,
slow growth, a repair, changing noise, nights with no flow, and the fixed-threshold reference.
Mutation testing (scripts/mutants.py) found none of these asserted by tests/test_flow_leak.py."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pytest

from water_edge.models.flow_leak.detector import FixedThreshold, Night, StepDetector, StepParams

START = date(2024, 1, 1)  # a Monday


def _nights(n: int, level: Callable[[int], float], noise: Callable[[int], float], seed: int) -> list[float]:
    """`n` nights of minimum night flow: `level(i)` m3/h times a relative noise of `noise(i)`."""
    rng = np.random.default_rng(seed)
    return [level(i) * (1 + rng.normal(0, noise(i))) for i in range(n)]


def _run(values: Sequence[float | None], **params: Any) -> tuple[StepDetector, list[Night]]:
    det = StepDetector(StepParams(**params))
    return det, [det.update(START + timedelta(days=i), v) for i, v in enumerate(values)]


def _onsets(rows: list[Night]) -> list[int]:
    return [(r.onset - START).days for r in rows if r.event == "leak" and r.onset is not None]


def _weekend(i: int) -> bool:
    return (START + timedelta(days=i)).weekday() in (4, 5)  # Friday and Saturday nights


@pytest.mark.parametrize("baseline_nights", [7, 14])
@pytest.mark.parametrize("seed", [1, 2])
def test_busier_weekend_nights_are_learned_not_reported_and_a_leak_is_still_found(
    baseline_nights: int, seed: int
) -> None:
    # Friday and Saturday nights 18 % above the week's (a district's night use differs then). A
    # week of learning holds exactly two such nights: enough to learn the offset from.
    def level(i: int) -> float:
        return 100.0 * (1.18 if _weekend(i) else 1.0) * (1.10 if i >= 70 else 1.0)

    det, rows = _run(_nights(120, level, lambda _: 0.01, seed), baseline_nights=baseline_nights)
    assert det.weekend_offset == pytest.approx(math.log(1.18), abs=0.025)
    assert _onsets(rows) == [70]  # the leak, on a Monday night; no Friday or Saturday before it
    saturday, monday = rows[26], rows[28]  # 2024-01-27 and 01-29
    assert saturday.baseline == pytest.approx(118.0, rel=0.03)
    assert monday.baseline == pytest.approx(100.0, rel=0.03)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slow_growth_is_followed_without_an_event(seed: int) -> None:
    # A district growing by 15 % over ten months (0.05 % a night): followed, never reported as a leak.
    def level(i: int) -> float:
        return 100.0 * (1 + 0.0005 * max(0, i - 14))

    det, rows = _run(_nights(330, level, lambda _: 0.01, seed), baseline_nights=14)
    assert _onsets(rows) == []
    assert det.baseline == pytest.approx(level(329), rel=0.03)


def test_after_a_repair_the_baseline_comes_down_and_the_next_leak_is_found() -> None:
    # A leak from night 30, repaired on night 60; another from night 90 at the same size. Had the
    # baseline stayed up after the repair, the second leak would only have brought the flow back to it.
    def level(i: int) -> float:
        return 100.0 * (1.10 if 30 <= i < 60 or i >= 90 else 1.0)

    det, rows = _run(_nights(130, level, lambda _: 0.01, 3), baseline_nights=14)
    assert _onsets(rows) == [30, 90]
    assert rows[85].baseline == pytest.approx(100.0, rel=0.02)  # down again before the second
    assert det.baseline == pytest.approx(110.0, rel=0.02)


def test_the_noise_is_measured_again_as_the_district_shows_it() -> None:
    # 1 % night-to-night noise while learning, 6 % for 200 nights, then 1 % again: the noise the
    # detector judges by follows (over its last `sigma_nights` nights).
    def noise(i: int) -> float:
        return 0.06 if 28 <= i < 228 else 0.01

    det = StepDetector(StepParams(baseline_nights=14, sigma_nights=56))
    sigmas = []
    for i, v in enumerate(_nights(400, lambda _: 100.0, noise, 4)):
        det.update(START + timedelta(days=i), v)
        sigmas.append(det.sigma)
    assert sigmas[27] == pytest.approx(0.01, rel=0.3)
    assert sigmas[227] == pytest.approx(math.log(1.06), rel=0.3)
    assert sigmas[399] == pytest.approx(0.01, rel=0.3)


def test_sigma_nights_0_keeps_the_noise_learned() -> None:
    # A site that wants its learned noise kept (`sigma_nights = 0`, docs/night-flow.md).
    det = StepDetector(StepParams(baseline_nights=14, sigma_nights=0))
    noisy_later = _nights(100, lambda _: 100.0, lambda i: 0.06 if i >= 14 else 0.01, 8)
    for i, v in enumerate(noisy_later[:14]):
        det.update(START + timedelta(days=i), v)
    learned = det.sigma
    assert learned is not None
    assert learned < 0.03  # the quiet nights' 1 %, not the 6 % that comes after
    for i, v in enumerate(noisy_later[14:], 14):
        det.update(START + timedelta(days=i), v)
    assert det.sigma == learned
    assert det.recent == []


def test_the_smallest_rise_reported_is_the_largest_of_the_share_the_flow_and_the_noise() -> None:
    quiet = _nights(28, lambda _: 100.0, lambda _: 0.01, 5)
    det, _ = _run(quiet, baseline_nights=14)
    assert det.min_step == pytest.approx(4.0, rel=0.05)  # min_added_pct: 4 % of 100 m3/h
    det, _ = _run(quiet, baseline_nights=14, min_added_m3h=10.0)
    assert det.min_step == pytest.approx(10.0, rel=0.05)
    noisy = _nights(28, lambda _: 100.0, lambda _: 0.08, 5)
    det, _ = _run(noisy, baseline_nights=14)
    assert det.sigma is not None
    assert det.min_step == pytest.approx(100.0 * math.expm1(1.5 * det.sigma), rel=0.01)
    assert det.min_step > 6.0  # a noisy district reports only bigger rises


def test_a_night_with_no_flow_is_neither_learned_nor_judged() -> None:
    # A dry night (a meter stuck at zero, a valve shut for works, a net flow gone negative) is shown,
    # not taken for the district's use: all is as if that night had not been measured.
    values = _nights(60, lambda i: 110.0 if i >= 40 else 100.0, lambda _: 0.01, 6)
    dry = {5: 0.0, 20: 0.0, 21: 0.0, 33: -3.0}
    det, rows = _run([dry.get(i, v) for i, v in enumerate(values)], baseline_nights=14)
    ref, ref_rows = _run([None if i in dry else v for i, v in enumerate(values)], baseline_nights=14)
    assert len(det.learning) == len(ref.learning) == 14
    assert det.level == pytest.approx(ref.level)
    assert det.sigma == pytest.approx(ref.sigma)
    assert [r.night_flow for r in rows if r.baseline is not None and r.added is None] == [0.0, 0.0, -3.0]
    assert _onsets(rows) == _onsets(ref_rows) == [40]


def test_learning_takes_exactly_its_nights_and_each_night_reports_what_it_added() -> None:
    values = _nights(20, lambda _: 100.0, lambda _: 0.01, 7)
    _, rows = _run(values, baseline_nights=14)
    assert [r.baseline is None for r in rows] == [True] * 14 + [False] * 6
    assert all(r.added is None for r in rows[:14])
    for row, value in zip(rows[14:], values[14:], strict=True):
        assert row.baseline is not None
        assert row.added == pytest.approx(value - row.baseline)


def test_a_state_saved_by_the_previous_detector_keeps_its_noise_and_weekend_offset() -> None:
    # The pre-log state kept them in m3/h: 2 m3/h of noise and 5 m3/h more on weekend nights, on
    # a 100 m3/h baseline, are 2 % and 5 % of it now.
    old = {"learning": [], "baseline": 100.0, "sigma": 2.0, "weekend_offset": 5.0, "rises": 2}
    det = StepDetector.from_dict(old, StepParams(baseline_nights=14))
    assert det.sigma == pytest.approx(0.02)
    assert det.weekend_offset == pytest.approx(math.log(1.05))
    saturday = date(2024, 3, 9)
    assert det.update(saturday, 105.0).baseline == pytest.approx(105.0, rel=0.002)


def test_the_fixed_threshold_rule_is_the_calibration_median_plus_its_share() -> None:
    rule = FixedThreshold(calibrate_nights=5, rise_pct=20.0)
    rows = [rule.update(START + timedelta(days=i), v) for i, v in enumerate([90, 100, 95, 130, 98, 119, 121])]
    assert rule.threshold == pytest.approx(98.0 * 1.2)
    assert [r.baseline for r in rows[:5]] == [None] * 5
    assert [r.added for r in rows[5:]] == pytest.approx([119 - 117.6, 121 - 117.6])
    assert [r.event for r in rows] == [""] * 5 + ["leak", ""]  # one onset while it stays above


def _dip_and_back(seed: int, dip: range, after_dip: float, leak_at: int | None = None) -> list[float]:
    """100 m3/h nights with 1.5 % noise; `dip` nights 10 % low (fewer people at home, a PRV set
    lower for a few nights), then `after_dip` times the level; a leak of +12 % from `leak_at`."""

    def level(i: int) -> float:
        leak = 1.12 if leak_at is not None and i >= leak_at else 1.0
        return 100.0 * leak * (0.90 if i in dip else after_dip if i >= dip.stop else 1.0)

    return _nights(90, level, lambda _: 0.015, seed)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dip", [range(40, 42), range(40, 45), range(40, 60)])
def test_night_flow_back_from_a_dip_to_its_old_level_is_no_new_leak(seed: int, dip: range) -> None:
    # Before, the drop re-anchored the baseline 10 % low after two nights, and the flow coming back
    # to where it had always been was reported as a new leak of 10 %.
    det, rows = _run(_dip_and_back(seed, dip, after_dip=1.0))
    assert _onsets(rows) == []
    assert det.returns == 1
    assert rows[-1].baseline == pytest.approx(100.0, rel=0.03)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_rise_from_a_dip_past_the_old_level_is_reported(seed: int) -> None:
    # The district comes back from its dip with a leak of +12 % on top of where it was.
    _, rows = _run(_dip_and_back(seed, range(40, 43), after_dip=1.12))
    assert len(_onsets(rows)) == 1
    assert 42 <= _onsets(rows)[0] <= 45


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_leak_back_after_its_repair_is_reported_again(seed: int) -> None:
    # A leak reported at night 30, repaired at night 50, back at night 56 (the repair failed): the
    # drop after a reported leak is its repair, and the flow rising back is the leak again.
    def level(i: int) -> float:
        return 100.0 * (1.12 if 30 <= i < 50 or i >= 56 else 1.0)

    det, rows = _run(_nights(90, level, lambda _: 0.015, seed))
    assert _onsets(rows) == [30, 56]
    assert det.returns == 0


def test_a_dip_in_progress_survives_a_restart() -> None:
    values = _dip_and_back(1, range(40, 50), after_dip=1.0)
    det, _ = _run(values[:45])
    assert det.dip is not None
    again = StepDetector.from_dict(det.to_dict(), StepParams())
    rows = [again.update(START + timedelta(days=45 + i), v) for i, v in enumerate(values[45:])]
    assert [r for r in rows if r.event] == []
    assert again.returns == 1
