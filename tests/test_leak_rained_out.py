"""A leak in a plastic pipe under rain (`models/leak/rained_out.py`, `plastic_rain_opens`): a
disturbed check's low leak bands, well risen, open a warning; the rain's skirt does not."""

from __future__ import annotations

import dataclasses

from tests.support.leak_nights import plastic_baseline, quiet_check, rained_out_check
from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.judge import Confirmation, Judgement, JudgeParams, judge

NB = features.N_BANDS
PVC = JudgeParams(material="pvc", diameter_mm=150)  # leak band 10-300 Hz
OLD = dataclasses.replace(PVC, plastic_rain_opens=False)  # the tenth pass's rule


def _rained_out(base: Baseline, night: str, index: int, bands: list[int], times: float) -> CheckStats:
    return rained_out_check(base, night, index, bands, times, PVC)


def _baseline() -> Baseline:
    return plastic_baseline()[0]


def _run(judgements: list[tuple[str, Judgement]]) -> list[str | None]:
    c = Confirmation()
    return [c.update(night, j) for night, j in judgements]


def test_a_plastic_leak_under_two_rained_out_nights_is_found_and_was_lost_before() -> None:
    base = _baseline()
    # A leak's strongest bands in a PVC pipe (15.5, 20.9, 28 Hz) 2.5 x their level thresholds over
    # the baseline, steady under the rain; every check of both nights disturbed.
    nights = [("2025-02-01", i) for i in (0, 1)] + [("2025-02-02", i) for i in (0, 1)]
    checks = [_rained_out(base, n, i, [1, 2, 3], 2.5) for n, i in nights]
    wet = [judge(c, base, PVC) for c in checks]
    assert all(not j.judged and j.steady_only and j.rain_opens and j.positive for j in wet)
    assert wet[0].evidence()["rain_opens"] is True
    assert _run([(c.night, j) for c, j in zip(checks, wet, strict=True)])[:2] == ["warning", "leak"]
    # The tenth pass's rule: a disturbed check only confirms, so nothing was ever raised.
    old = [judge(c, base, OLD) for c in checks]
    assert all(j.positive and not j.rain_opens for j in old)
    assert _run([(c.night, j) for c, j in zip(checks, old, strict=True)]) == [None] * 4


def test_the_rains_skirt_below_it_opens_nothing_and_does_not_confirm_a_rained_out_warning() -> None:
    base = _baseline()
    # Leak-free rain lifts the steady bands just under it (28, 37.6 Hz) by up to about twice their
    # level threshold: enough to confirm a dry warning (the ninth pass's rule), not to open one.
    skirt = [_rained_out(base, "2025-02-01", i, [3, 4], 1.8) for i in (0, 1)]
    js = [judge(c, base, PVC) for c in skirt]
    assert all(j.positive and not j.rain_opens for j in js)
    assert _run([("2025-02-01", j) for j in js]) == [None, None]
    # Bands above 45 Hz, however far risen, open nothing: that is where the rain is.
    high = judge(_rained_out(base, "2025-02-01", 0, [5, 6], 3.0), base, PVC)
    assert not high.rain_opens
    # A warning a rained-out check opened is confirmed by a second check that clears the same bar,
    # or by a dry positive check, but not by the skirt of the next rained-out check.
    leak = judge(_rained_out(base, "2025-02-01", 0, [1, 2], 2.5), base, PVC)
    assert leak.rain_opens
    c = Confirmation()
    assert c.update("2025-02-01", leak) == "warning"
    assert c.update("2025-02-01", js[1]) is None
    assert c.state == "warning"
    assert c.update("2025-02-02", leak) == "leak"
    dry_p10 = base.level.copy()
    dry_p10[[1, 2]] += 8.0
    dry = judge(quiet_check("2025-02-02", 0, dry_p10), base, PVC)
    assert dry.judged
    assert dry.positive
    c = Confirmation()
    assert c.update("2025-02-01", leak) == "warning"
    assert c.update("2025-02-02", dry) == "leak"
