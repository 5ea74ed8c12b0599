"""A leak in a metal pipe under rain (`models/leak/under_rain.py`, `metal_below_rain`): the leak
bands below where the rain reaches, judged as one with the nuisance patterns refitted on the bands
the rain left clean; the rain itself, and its skirt, stay no leak."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.support.leak_nights import quiet_check
from water_edge.models.leak import features, under_rain
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.judge import Confirmation, JudgeParams, judge

NB = features.N_BANDS
STEEL = JudgeParams(material="steel", diameter_mm=150)  # leak band 100 Hz - 2 kHz: bands 8-17
OLD = dataclasses.replace(STEEL, metal_below_rain=False)  # the eleventh pass's rule


def _steel_baseline() -> tuple[Baseline, np.ndarray]:
    """Seven quiet nights of a steel main, two checks each: the background is loudest at the
    bottom of the leak band and falls towards its top; night demand moves the flow noise (28 Hz -
    1 kHz) by -2..+2 dB from night to night."""
    rng = np.random.default_rng(11)
    level = -50.0 - np.concatenate([np.zeros(9), np.linspace(2, 22, 11)])
    flow = np.zeros(NB)
    flow[3:16] = 1.0
    checks = [
        quiet_check(f"2025-01-0{n + 1}", c, level + f * flow + rng.normal(0, 0.3, NB))
        for n in range(7)
        for c, f in enumerate([rng.uniform(-2, 2)] * 2)
    ]
    return Baseline.learn(checks, sensor="hyd.S", material="steel"), flow


def _rain(base: Baseline, night: str, index: int, *, low: int, leak: np.ndarray | None = None) -> CheckStats:
    """Rain from band `low` up (the top of the spectrum, where the steel main's background is
    quiet): 4 dB over the baseline at `low`, 8 dB a band higher and 15 dB above that, gusting
    (lower half of the one-second levels 4 dB wide: more than four bands wander, a disturbed
    check); `leak` adds a steady rise."""
    p10 = base.level.copy()
    lower = np.full(NB, 0.5)
    p10[low] += 4.0
    p10[low + 1] += 8.0
    p10[low + 2 :] += 15.0
    lower[low:] = 4.0
    if leak is not None:
        p10 = p10 + leak
    return quiet_check(night, index, p10, lower)


def _weak_leak(db: float = 2.0) -> np.ndarray:
    """A weak hiss over the steel leak band's lower bands (100-340 Hz): `db` each, under every
    band's own threshold (3 dB or more), under the rain's reach."""
    out = np.zeros(NB)
    out[8:12] = db
    return out


def test_a_weak_metal_leak_below_the_rain_is_found_and_was_lost_before() -> None:
    base, _ = _steel_baseline()
    # Rain from 830 Hz up on both nights, every check disturbed (five bands wander).
    checks = [
        _rain(base, n, i, low=15, leak=_weak_leak()) for n in ("2025-02-01", "2025-02-02") for i in (0, 1)
    ]
    wet = [judge(c, base, STEEL) for c in checks]
    assert all(not j.judged and j.steady_only for j in wet)  # a disturbed check: not judged as a dry one
    assert all(j.below_rain_z is not None and j.below_rain_threshold is not None for j in wet)
    assert all(j.positive and j.below_rain and j.below_rain_only for j in wet)
    ev = wet[0].evidence()
    assert ev["below_rain_z"] >= ev["below_rain_threshold"]
    c = Confirmation()
    assert [c.update(ch.night, j) for ch, j in zip(checks, wet, strict=True)][:2] == ["warning", "leak"]
    # The eleventh pass's rule: the rain is none of the learned patterns and every band's residual
    # was fitted through it, so nothing below the rain showed; no warning was ever opened.
    old = [judge(ch, base, OLD) for ch in checks]
    assert all(j.below_rain_z is None and not j.below_rain for j in old)
    c = Confirmation()
    assert [c.update(ch.night, j) for ch, j in zip(checks, old, strict=True)] == [None] * 4


def test_leak_free_rain_and_its_skirt_are_no_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    base, flow = _steel_baseline()
    for low in (15, 16, 17):
        j = judge(_rain(base, "2025-02-01", 0, low=low), base, STEEL)
        assert j.below_rain_z is not None
        assert not j.positive
        assert not j.below_rain
    # More night demand under the rain lifts the flow pattern, below the leak band too: explained.
    more_flow = _rain(base, "2025-02-01", 0, low=16, leak=1.5 * flow)
    assert not judge(more_flow, base, STEEL).positive
    # The rain's skirt: the four bands just under where it stands out lifted a little, steady
    # (less than its touch: 1.5 dB over the common rise). They are left out of the clean bands ...
    skirt = np.zeros(NB)
    skirt[12:16] = [0.3, 0.5, 0.8, 1.2]
    wet = _rain(base, "2025-02-01", 0, low=16, leak=skirt)
    clean = under_rain.clean_bands(wet.p10, wet.p50, base.level)
    assert clean is not None
    assert list(np.flatnonzero(clean)) == list(range(16 - under_rain.MARGIN))
    j = judge(wet, base, STEEL)
    assert j.below_rain_z is not None
    assert not j.positive
    # ... and would have been a leak had they been judged.
    monkeypatch.setattr(under_rain, "MARGIN", 0)
    assert judge(wet, base, STEEL).below_rain


def test_a_disturbance_that_does_not_come_from_the_top_is_not_read_as_rain() -> None:
    base, _ = _steel_baseline()
    # Works in the street: the low bands wander (traffic, a compressor), the top is quiet.
    p10 = base.level.copy()
    lower = np.full(NB, 0.5)
    lower[:7] = 5.0
    p10 = p10 + _weak_leak()
    c = quiet_check("2025-02-01", 0, p10, lower)
    assert under_rain.clean_bands(c.p10, c.p50, base.level) is None
    j = judge(c, base, STEEL)
    assert j.below_rain_z is None


def test_a_warning_only_the_bands_below_the_rain_opened_is_confirmed_only_at_the_same_bar() -> None:
    base, _ = _steel_baseline()
    # Light rain from 1.1 kHz up (four bands wander: judged, as rained on).
    leak = judge(_rain(base, "2025-02-01", 0, low=16, leak=_weak_leak(1.2)), base, STEEL)
    assert leak.judged
    assert leak.rain
    assert leak.below_rain_only
    # A rained-on check whose steady bands just under the rain rose by their level (positive as
    # any rained-on check with two bands risen) has no clean leak bands left to judge.
    lifted = np.zeros(NB)
    lifted[13:15] = 5.0
    skirt = judge(_rain(base, "2025-02-01", 1, low=16, leak=lifted), base, STEEL)
    assert skirt.judged
    assert skirt.rain
    assert skirt.positive
    assert not skirt.below_rain
    c = Confirmation()
    assert c.update("2025-02-01", leak) == "warning"
    assert c.update("2025-02-01", skirt) is None
    assert c.state == "warning"
    # The same test again confirms it, and so does a dry positive check.
    again = judge(_rain(base, "2025-02-02", 0, low=16, leak=_weak_leak(1.2)), base, STEEL)
    assert c.update("2025-02-02", again) == "leak"
    dry_p10 = base.level.copy()
    dry_p10[[9, 10]] += 6.0
    dry = judge(quiet_check("2025-02-02", 0, dry_p10), base, STEEL)
    assert dry.judged
    assert not dry.rain
    assert dry.positive
    c = Confirmation()
    assert c.update("2025-02-01", leak) == "warning"
    assert c.update("2025-02-02", dry) == "leak"
    # Had the skirt opened the warning itself, the same checks would have raised a leak: it is the
    # warning's origin that asks for the same bar.
    c = Confirmation()
    assert c.update("2025-02-01", skirt) == "warning"
    assert c.update("2025-02-01", leak) == "leak"
