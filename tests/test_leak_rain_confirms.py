"""A rained-out check confirms a plastic pipe's warning with the warning's bands, not with the
rain's skirt (`models/leak/rain_confirms.py`, `plastic_rain_same_bands`, twelfth pass)."""

from __future__ import annotations

import dataclasses

from tests.support.leak_nights import plastic_baseline, quiet_check, rained_out_check
from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.judge import Confirmation, Judgement, JudgeParams, judge

NB = features.N_BANDS
PVC = JudgeParams(material="pvc", diameter_mm=150)  # leak band 10-300 Hz: bands 0-11
ELEVENTH = dataclasses.replace(PVC, plastic_rain_same_bands=False)  # any two steady bands confirm


def _rained_out(base: Baseline, bands: list[int], times: float) -> CheckStats:
    """The second night's check, rained out (`rained_out_check`)."""
    return rained_out_check(base, "2025-02-02", 0, bands, times, PVC)


def _dry(base: Baseline, bands: list[int]) -> Judgement:
    """The first night's dry check with `bands` 8 dB up: a warning."""
    p10 = base.level.copy()
    p10[bands] += 8.0
    j = judge(quiet_check("2025-02-01", 0, p10), base, PVC)
    assert j.judged
    assert j.positive
    return j


def _after(warning: Judgement, second: Judgement) -> str | None:
    c = Confirmation()
    assert c.update("2025-02-01", warning) == "warning"
    return c.update("2025-02-02", second)


def test_the_rains_skirt_does_not_confirm_a_warning_on_other_bands_a_leaks_bands_do() -> None:
    base = plastic_baseline()[0]
    skirt = judge(_rained_out(base, [4, 5], 1.5), base, PVC)  # 37.6, 50.5 Hz: just under the rain
    assert skirt.steady_only
    assert skirt.positive
    assert skirt.same_bands
    traffic = _dry(base, [1, 2])  # 15.5, 20.9 Hz
    assert _after(traffic, skirt) is None
    # The eleventh pass's rule confirmed it: any two steady bands.
    old = judge(_rained_out(base, [4, 5], 1.5), base, ELEVENTH)
    assert not old.same_bands
    assert _after(traffic, old) == "leak"
    # The warning's bands or their neighbours under the rain confirm (a leak keeps its spectrum) ...
    near = judge(_rained_out(base, [3, 4], 1.5), base, PVC)  # 28, 37.6 Hz
    assert _after(traffic, near) == "leak"
    # ... and so do three steady bands, whatever the warning showed.
    top = _dry(base, [9, 10])  # 164, 220 Hz: a leak's top hiss
    assert _after(top, near) is None
    assert _after(top, judge(_rained_out(base, [3, 4, 5], 1.5), base, PVC)) == "leak"


def test_after_a_demand_like_warning_any_two_steady_bands_confirm() -> None:
    """On a night of more demand a leak shows only what stands above the demand's plateau (its top
    hiss); its low bands show under the next night's rain (dev high-demand starts 28083, 29508)."""
    base = plastic_baseline()[0]
    top = _dry(base, [9, 10])
    low = judge(_rained_out(base, [2, 4], 1.5), base, PVC)  # 20.9, 37.6 Hz
    assert _after(top, low) is None
    assert _after(dataclasses.replace(top, demand_like=True), low) == "leak"
