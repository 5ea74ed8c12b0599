"""How a sensor's quiet level moves from night to night without a leak, learned from its baseline.

The background at a hydrophone is a mix of sources whose loudness changes from night to night on
its own: more or less flow noise (night demand), traffic rumble, a pump, the sensor's floor. Each
moves a fixed *pattern* of bands together: more flow noise in a metal pipe lifts exactly the bands
a leak lifts, by about the same dB, so a band-by-band threshold must be wide there. A leak adds a
spectrum none of those sources has, so what the nuisance patterns cannot explain is the evidence.

`Nuisance.learn` takes the quiet levels (10th percentiles, dB, 20 bands) of the steady baseline
checks, finds the `components` strongest patterns of their variation around the median (principal
components of the dB vectors, after the all-bands pattern, which is always one: a gain change or
a uniformly louder background is never evidence), and measures each band's leave-one-out
residual: how far a quiet check the model did not see stands from what the patterns explain
(robust 1.4826 x MAD, shrunk to `PRIOR_SIGMA_DB`). `residual(p10)` is then a new check's rise
that the patterns cannot explain, per band, in dB; with `sigma` it is a z-score. With fewer than
`MIN_CHECKS` steady checks there is too little to learn patterns from and no model is made (the
judgement then uses level and shape alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

COMPONENTS: Final = 3  # learned nuisance patterns kept (flow, traffic, floor or pump, in any mix)
MIN_CHECKS: Final = 6  # steady checks needed to learn them (with fewer, no model)
PRIOR_SIGMA_DB: Final = 1.0  # a residual's spread assumed before any is seen ...
PRIOR_WEIGHT: Final = 3.0  # ... worth this many checks


def _fit(rows: FloatArray, k: int) -> tuple[FloatArray, FloatArray]:
    """The median row and k + 1 orthonormal patterns: the all-bands one first (a gain change or a
    louder street lifts every band alike, whether or not the baseline nights showed it), then the
    k strongest of what varied besides it."""
    centre: FloatArray = np.median(rows, axis=0)
    d = rows - centre
    d = d - d.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(d, full_matrices=False)
    flat = np.full((1, rows.shape[1]), 1.0 / np.sqrt(rows.shape[1]))
    components: FloatArray = np.vstack([flat, vt[:k]])
    return centre, components


def _explain(d: FloatArray, components: FloatArray) -> FloatArray:
    out: FloatArray = d - components.T @ (components @ d)
    return out


@dataclass(frozen=True)
class Nuisance:
    """Median quiet level, the nuisance patterns (unit vectors over bands) and the residual spread."""

    centre: FloatArray
    components: FloatArray  # (k, bands)
    sigma: FloatArray  # per band, dB
    checks: int

    @classmethod
    def learn(cls, p10: FloatArray, components: int = COMPONENTS) -> Nuisance | None:
        """From steady checks' quiet levels, shaped (checks, bands); None with too few checks."""
        n = p10.shape[0]
        if n < MIN_CHECKS:
            return None
        k = min(components, n - 3)
        centre, vecs = _fit(p10, k)
        loo = np.stack(
            [_explain(p10[i] - c, v) for i in range(n) for c, v in [_fit(np.delete(p10, i, axis=0), k)]]
        )
        mad = 1.4826 * np.median(np.abs(loo), axis=0)
        sigma = np.sqrt((n * mad**2 + PRIOR_WEIGHT * PRIOR_SIGMA_DB**2) / (n + PRIOR_WEIGHT))
        return cls(centre, vecs, sigma, n)

    def residual(self, p10: FloatArray) -> FloatArray:
        """The part of a check's quiet level that no nuisance pattern explains (dB per band)."""
        return _explain(p10 - self.centre, self.components)

    def to_dict(self) -> dict[str, Any]:
        return {
            "centre_db": [round(float(v), 3) for v in self.centre],
            "components": [[round(float(v), 5) for v in row] for row in self.components],
            "sigma_db": [round(float(v), 3) for v in self.sigma],
            "checks": self.checks,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], bands: int) -> Nuisance:
        centre = np.asarray(d["centre_db"], dtype=np.float64)
        comps = np.asarray(d["components"], dtype=np.float64).reshape(-1, bands)
        sigma = np.asarray(d["sigma_db"], dtype=np.float64)
        if centre.shape != (bands,) or sigma.shape != (bands,) or comps.shape[0] > bands:
            raise ValueError(f"nuisance model must have {bands} bands")
        if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(comps)) and np.all(sigma > 0)):
            raise ValueError("nuisance model holds non-finite values")
        return cls(centre, comps, sigma, int(d["checks"]))
