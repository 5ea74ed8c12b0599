"""A metal pipe's leak under rain: the leak band below where the rain reaches, judged as one.

Rain on the street reaches a buried metal main from the top of the spectrum down: it is broadband,
but the background at a metal pipe's sensor (flow noise, rumble) is loudest at the bottom of the
leak band and 5-20 dB quieter at its top, so the rain stands over the background at the top, and
gusts there, while the lower bands do not hear it (simulator: rain band-passed 150 Hz - 3 kHz, flat
in between; on the rainy dev seeds its lowest touched band lies at 0.3-1.3 kHz in three rained-on
checks of four, lower in heavy rain). Since the eighth pass a rained-on check is not given the
joint tests (`joint.py`, `matched.py`): the rain is none of the sensor's learned nuisance
patterns, and fitting the patterns over every band, rain-lifted ones included, pushes the residual
of the bands below the rain 3-7 spreads down (dev site 26032): nothing is left to judge. So a weak
leak whose nights were rained on was lost.

Here the rain's reach is read from the check itself: from the top band down, the run of bands
that wander (their lower half of one-second levels `TOUCH_SPREAD_DB` wider than a steady noise's)
or stand `TOUCH_RISE_DB` over the common-mode rise; the bands more than `MARGIN` bands below its
lowest (the rain's skirt) are **clean**. The nuisance patterns are then fitted on the clean bands
only (the baseline's leave-one-out residuals refitted the same way), and the residual of the clean
leak bands is judged as one with the tests of a dry check (`judge._Test`) at `RAIN_K` times their
threshold. Positive, the check opens or confirms a warning; a warning only this test opened is
confirmed by a dry positive check or by the test again (`judge.Confirmation`). A check where the
rain does not come from the top (traffic wandering in the low bands), or that leaves too few clean
bands, has no such test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.models.leak.baseline import relative_rise
from water_edge.models.leak.joint import Joint, joint_z
from water_edge.models.leak.levels import STEADY_LOWER_SPREAD_DB
from water_edge.models.leak.matched import matched_z
from water_edge.models.leak.nuisance import residual_sigma

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

TOUCH_SPREAD_DB: Final = 1.0  # a band the rain gusts in: this much wider than a steady noise
TOUCH_RISE_DB: Final = 1.5  # ... or this much above the check's common-mode rise
# Bands below the rain's lowest touched band left out: its skirt (a band down, the rain stands
# some 4-6 dB lower against a background that is louder there). On the older metal dev sets'
# leak-free rained checks the clean statistic reached the dry threshold in 7 % of them with one
# band left out, 3.5 % two, 2 % three, 1 % four (0.3 % at `RAIN_K`): docs/leak-detection.md,
# twelfth pass.
MARGIN: Final = 4
# The tests' bar under rain, as a multiple of a dry check's threshold (the refit on fewer bands
# is less exact): a leak found only under the rain must show a little more strongly.
RAIN_K: Final = 1.25
MIN_CLEAN_EXTRA: Final = 3  # clean bands needed beyond the patterns' unknowns to refit them


def reach(p10: FloatArray, p50: FloatArray, level: FloatArray) -> int | None:
    """The lowest band index the rain touched, reading down from the top band (one untouched band
    may interrupt the run); None when the top band is untouched (not rain from above)."""
    spread = p50 - p10 - STEADY_LOWER_SPREAD_DB
    rel = relative_rise(p10, level)[0]
    touched = (spread >= TOUCH_SPREAD_DB) | (rel >= TOUCH_RISE_DB)
    if not touched[-1]:
        return None
    low = int(touched.size - 1)
    while low > 0 and (touched[low - 1] or (low > 1 and touched[low - 2])):
        low -= 1 if touched[low - 1] else 2
    return low


def clean_bands(p10: FloatArray, p50: FloatArray, level: FloatArray) -> BoolArray | None:
    """The bands below the rain's reach and its skirt; None when the check shows no rain from above."""
    low = reach(p10, p50, level)
    if low is None:
        return None
    out: BoolArray = np.arange(p10.size) < low - MARGIN
    return out


def _refit(rows: FloatArray, components: FloatArray, clean: BoolArray) -> FloatArray:
    """Residual rows (n, bands) with the patterns refitted on the clean bands only: a residual
    r = d - C'C d is d minus its patterns' fit on every band; refitting on the clean ones gives
    d - C' c with c the least-squares fit of d over them, i.e. r - C' (fit of r over them)."""
    a = components[:, clean].T  # (clean bands, k)
    coef, *_ = np.linalg.lstsq(a, rows[:, clean].T, rcond=None)
    out: FloatArray = rows - (components.T @ coef).T
    return out


@dataclass(frozen=True)
class BelowRain:
    """The clean leak bands' tests: (joint, matched), either may be None."""

    joint: Joint | None
    matched: Joint | None
    clean: BoolArray


def tests(
    residual: FloatArray,
    components: FloatArray,
    loo: FloatArray,
    *,
    use: BoolArray,
    clean: BoolArray,
    extra_db: FloatArray,
    template: FloatArray | None,
) -> BelowRain | None:
    """`residual` the check's full-fit residual, `components` the patterns (orthonormal rows),
    `loo` the baseline's leave-one-out residuals, `use` the counted leak bands; None when too few
    clean bands to refit the patterns on."""
    if int(clean.sum()) < components.shape[0] + MIN_CLEAN_EXTRA:
        return None
    r = _refit(residual[None, :], components, clean)[0]
    lo = _refit(loo, components, clean)
    sigma = residual_sigma(lo)  # the spread of the refitted residuals, as the baseline's own
    bands = use & clean
    jo = joint_z(r, sigma, lo, bands, extra_db)
    mo = None
    if template is not None:
        t = _refit(template[None, :], components, clean)[0]
        mo = matched_z(r, sigma, lo, bands, extra_db, template=t)
    return BelowRain(jo, mo, clean)
