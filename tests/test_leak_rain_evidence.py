"""A plastic pipe under rain, twelfth pass (`models/leak/rain_evidence.py`, `rained_out.py`): the
second bar opens on three low bands, the classifier counts only with a band under the rain, and a
rained-out check confirms a warning with the warning's bands, not with the rain's skirt."""

from __future__ import annotations

import dataclasses

import numpy as np

from tests.support.leak_nights import plastic_baseline, quiet_check
from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.judge import Confirmation, Judgement, JudgeParams, judge

NB = features.N_BANDS
CENTRES = features.band_centres_hz()
PVC = JudgeParams(material="pvc", diameter_mm=150)  # leak band 10-300 Hz: bands 0-11
ELEVENTH = dataclasses.replace(
    PVC, plastic_rain_second_bar=False, plastic_rain_low_classifier=False, plastic_rain_same_bands=False
)


def _t_level(base: Baseline) -> np.ndarray:
    out: np.ndarray = np.maximum(PVC.min_rise_db, PVC.k_sigma * base.level_sigma)
    return out


def _rained_out(base: Baseline, night: str, index: int, bands: list[int], times: float) -> CheckStats:
    """Rain from 68 Hz up (20 dB louder, gusting: a disturbed check); `bands` below it risen steady
    by `times` their level threshold (a leak's hiss, or the rain's skirt)."""
    p10 = base.level.copy()
    lower = np.full(NB, 0.5)
    p10[6:] += 20.0
    lower[6:] = 6.0
    p10[bands] += times * _t_level(base)[bands]
    check = quiet_check(night, index, p10)
    return dataclasses.replace(check, p50=p10 + lower, p90=p10 + 2 * lower, clf_logit=12.0)


def _light_rain(base: Baseline, band: int, rise_db: float) -> CheckStats:
    """Light rain on a PVC main: the eight bands above the leak band 8 dB up, three of them
    gusting 4 dB wide and five 2.5 dB (under the disturbed gate: judged as rained on), and one
    leak band `band` risen steady by `rise_db`; the classifier hears the rain (+12 log-odds)."""
    p10 = base.level.copy()
    lower = np.full(NB, 0.5)
    p10[12:] += 8.0
    lower[12:15] = 4.0
    lower[15:] = 2.5
    p10[band] += rise_db
    check = quiet_check("2025-02-01", 0, p10)
    return dataclasses.replace(check, p50=p10 + lower, p90=p10 + 2 * lower, clf_logit=12.0)


def _dry(base: Baseline, night: str, bands: list[int]) -> Judgement:
    p10 = base.level.copy()
    p10[bands] += 8.0
    j = judge(quiet_check(night, 0, p10), base, PVC)
    assert j.judged
    assert j.positive
    return j


def test_three_low_bands_at_the_second_bar_open_a_warning_under_the_rain() -> None:
    base = plastic_baseline()[0]
    # A weak leak lifts three low bands (15.5-28 Hz) 1.7 x their level thresholds: under the
    # first bar (two at 2 x), over the second (three at 1.5 x).
    three = judge(_rained_out(base, "2025-02-01", 0, [1, 2, 3], 1.7), base, PVC)
    assert not three.judged
    assert three.steady_only
    assert three.rain_opens
    assert Confirmation().update("2025-02-01", three) == "warning"
    assert not judge(_rained_out(base, "2025-02-01", 0, [1, 2, 3], 1.7), base, ELEVENTH).rain_opens
    # Three at 1.3 x (rain's skirt on a night of more demand: dev site 29150) do not open.
    assert not judge(_rained_out(base, "2025-02-01", 0, [1, 2, 3], 1.3), base, PVC).rain_opens
    # The rain's skirt lifts two bands: the second bar asks for three.
    two = judge(_rained_out(base, "2025-02-01", 0, [3, 4], 1.7), base, PVC)
    assert two.positive
    assert not two.rain_opens
    # Three bands, but one of them above 45 Hz where the rain is: not the second bar either.
    assert not judge(_rained_out(base, "2025-02-01", 0, [2, 3, 5], 1.7), base, PVC).rain_opens


def test_in_light_rain_the_classifier_counts_only_with_a_band_under_the_rain() -> None:
    base = dataclasses.replace(plastic_baseline()[0], clf_logit=-4.0)
    # One band in the rain (122 Hz) 10 dB up, steady: the rain itself; the classifier hears rain.
    high = _light_rain(base, 8, 10.0)
    j = judge(high, base, PVC)
    assert j.judged
    assert j.rain
    assert [b["band_hz"] for b in j.risen] == [CENTRES[8]]
    assert j.clf_logit_rise is not None
    assert j.clf_logit_rise >= PVC.clf_logit_rise
    assert not j.positive
    # Before this pass one band and the classifier were a positive check.
    assert judge(high, base, ELEVENTH).positive
    # A leak's band under the rain (20.9 Hz) with the classifier still makes the check positive.
    low = judge(_light_rain(base, 2, 10.0), base, PVC)
    assert low.rain
    assert [b["band_hz"] for b in low.risen] == [CENTRES[2]]
    assert low.positive


def test_a_rained_out_check_confirms_with_the_warnings_bands_not_with_the_rains_skirt() -> None:
    base = plastic_baseline()[0]
    skirt = judge(_rained_out(base, "2025-02-02", 0, [4, 5], 1.5), base, PVC)  # 37.6, 50.5 Hz
    assert skirt.steady_only
    assert skirt.positive
    assert skirt.same_bands
    # A dry warning on 15.5 and 20.9 Hz; the next night's rain lifts 37.6 and 50.5 Hz: not a leak.
    c = Confirmation()
    assert c.update("2025-02-01", _dry(base, "2025-02-01", [1, 2])) == "warning"
    assert c.update("2025-02-02", skirt) is None
    assert c.state == "warning"
    # The eleventh pass's rule confirmed it.
    old = judge(_rained_out(base, "2025-02-02", 0, [4, 5], 1.5), base, ELEVENTH)
    assert not old.same_bands
    c = Confirmation()
    c.update("2025-02-01", _dry(base, "2025-02-01", [1, 2]))
    assert c.update("2025-02-02", old) == "leak"
    # The warning's bands or their neighbours under the rain confirm (a leak keeps its spectrum) ...
    near = judge(_rained_out(base, "2025-02-02", 0, [3, 4], 1.5), base, PVC)  # 28, 37.6 Hz
    c = Confirmation()
    c.update("2025-02-01", _dry(base, "2025-02-01", [1, 2]))
    assert c.update("2025-02-02", near) == "leak"
    # ... and so do three steady bands, whatever the warning showed.
    three = judge(_rained_out(base, "2025-02-02", 0, [3, 4, 5], 1.5), base, PVC)
    c = Confirmation()
    c.update("2025-02-01", _dry(base, "2025-02-01", [9, 10]))  # 164, 220 Hz: a leak's top hiss
    assert c.update("2025-02-02", three) == "leak"
    c = Confirmation()
    c.update("2025-02-01", _dry(base, "2025-02-01", [9, 10]))
    assert c.update("2025-02-02", near) is None
