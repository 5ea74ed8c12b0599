"""A plastic pipe's leak under rain, twelfth pass (`models/leak/rained_out.py`,
`plastic_rain_second_bar`): three low leak bands a little risen open a warning from a rained-out
check; the rain's skirt (two bands, or three barely risen) does not."""

from __future__ import annotations

import dataclasses

from tests.support.leak_nights import plastic_baseline, rained_out_check
from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.judge import Confirmation, JudgeParams, judge

NB = features.N_BANDS
PVC = JudgeParams(material="pvc", diameter_mm=150)  # leak band 10-300 Hz: bands 0-11
ELEVENTH = dataclasses.replace(PVC, plastic_rain_second_bar=False)  # the eleventh pass's rule


def _rained_out(base: Baseline, night: str, index: int, bands: list[int], times: float) -> CheckStats:
    return rained_out_check(base, night, index, bands, times, PVC)


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
    # Two nights of that leak, every check rained out: found within them (the warning confirmed at
    # the same bar); the eleventh pass's rule had no check to open a warning with.
    nights = [("2025-02-01", 0), ("2025-02-01", 1), ("2025-02-02", 0), ("2025-02-02", 1)]

    def run(p: JudgeParams) -> list[str | None]:
        c = Confirmation()
        return [c.update(n, judge(_rained_out(base, n, i, [1, 2, 3], 1.7), base, p)) for n, i in nights]

    assert run(PVC)[:2] == ["warning", "leak"]
    assert run(ELEVENTH) == [None] * 4
    # Three at 1.3 x (rain's skirt on a night of more demand: dev site 29150) do not open.
    assert not judge(_rained_out(base, "2025-02-01", 0, [1, 2, 3], 1.3), base, PVC).rain_opens
    # The rain's skirt lifts two bands: the second bar asks for three.
    two = judge(_rained_out(base, "2025-02-01", 0, [3, 4], 1.7), base, PVC)
    assert two.positive
    assert not two.rain_opens
    # Three bands, but one of them above 45 Hz where the rain is: not the second bar either.
    assert not judge(_rained_out(base, "2025-02-01", 0, [2, 3, 5], 1.7), base, PVC).rain_opens
