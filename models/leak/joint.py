"""The leak band's unexplained rise judged as one: a leak lifts several adjacent bands together.

A weak broadband leak (SNR -10 ... -5 dB) lifts each band of its material's leak band by 1-2 dB,
below every single band's threshold; summed over the band it stands out. Summing is only honest
when the sum's own spread is known: on the baseline nights the residuals of neighbouring bands
(what the nuisance patterns leave, `nuisance.Nuisance.residual`) move together, most in plastic
pipes, so a plain sum of z-scores is far wider than a standard normal there.

`joint_z` standardises each band's residual by its leave-one-out spread and sums the selected
bands' z-scores, divided by the sum's standard deviation under the residuals' band-to-band
correlation. That correlation is estimated from the baseline's leave-one-out residuals (a handful
of checks for up to 20 bands), so it is shrunk by `SHRINK` towards the identity. The same sum over
each baseline check's leave-one-out residual gives the statistic's spread on the sensor's own
quiet (`loo`), from which the judgement sets its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SHRINK: Final = 0.3  # weight of the identity in the shrunk correlation (the rest: the sample's)


@dataclass(frozen=True)
class Joint:
    """The check's joint z (a broadband rise is positive) and the baseline checks' own."""

    z: float
    loo: FloatArray  # the same statistic for each baseline check, left out of the fit
    bands: int


def joint_z(
    residual: FloatArray,
    sigma: FloatArray,
    loo: FloatArray,
    use: BoolArray,
    extra_db: FloatArray,
    *,
    weights: FloatArray | None = None,
) -> Joint | None:
    """`residual` (bands,) dB, `sigma` its per-band spread, `loo` (checks, bands) the baseline's
    leave-one-out residuals, `use` the bands summed, `extra_db` an extra per-band uncertainty of
    this check (the nuisance patterns extrapolated beyond their range); `weights` (bands,) weigh
    each band's z-score in the sum (`matched.py`; None: alike). None with < 2 bands or no
    positive weight."""
    m = int(use.sum())
    if m < 2 or loo.shape[0] < 3:
        return None
    s = sigma[use]
    w = np.ones(m) if weights is None else weights[use]
    if not np.any(w > 0):
        return None
    zl = loo[:, use] / s
    cov = zl.T @ zl / zl.shape[0]
    d = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    corr = (1.0 - SHRINK) * (cov / np.outer(d, d)) + SHRINK * np.eye(m)
    scale = float(np.sqrt(max(float(w @ corr @ w), 1e-12)))
    z = residual[use] / np.sqrt(s**2 + extra_db[use] ** 2)
    return Joint(z=float(w @ z) / scale, loo=(zl @ w) / scale, bands=m)
