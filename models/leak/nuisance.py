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
that the patterns cannot explain, per band, in dB; with `sigma` it is a z-score.

The baseline's checks only show each nuisance over the nights it happened to cover: a night of more
demand than any of them moves the bands further along the same pattern. `spans` are the directions
the checks moved in as they are (principal directions of the raw deviations, so louder flow noise
is one direction, lifting its bands), with how far along each the checks went; `beyond(p10)` is the
part of a check that lies along them past that range, which the judgement takes out before it
compares levels and shapes band by band. With fewer than
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
PRIOR_SIGMA_DB: Final = 1.0  # a level's or residual's spread assumed before any is seen ...
PRIOR_WEIGHT: Final = 3.0  # ... worth this many checks
SPAN_REACH: Final = 2.0  # how far beyond its range (in range widths) a pattern may explain
MIN_SPAN_SHAPE: Final = 0.3  # a span's part off the all-bands direction (of 1) to be kept
MIN_WITNESS: Final = 3  # bands beyond the fit's unknowns to measure a pattern's reach on


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


def _along(spans: FloatArray, d: FloatArray) -> FloatArray:
    """How far each row of `d` (checks, bands) goes along each span, fitted jointly with an
    all-bands offset: a uniformly louder background (a gain change) is then the offset's, not a
    span's, whatever all-bands part the spans carry."""
    basis = np.vstack([np.full((1, spans.shape[1]), 1.0 / np.sqrt(spans.shape[1])), spans])
    coef: FloatArray = d @ np.linalg.pinv(basis, rcond=1e-6)
    return coef[:, 1:]


def residual_sigma(loo: FloatArray) -> FloatArray:
    """Per band, the spread of deviations `loo` (checks, bands) — leave-one-out residuals, or quiet
    levels about their median: robust 1.4826 x MAD, shrunk towards `PRIOR_SIGMA_DB` as if it were
    `PRIOR_WEIGHT` checks."""
    n = loo.shape[0]
    mad = 1.4826 * np.median(np.abs(loo), axis=0)
    out: FloatArray = np.sqrt((n * mad**2 + PRIOR_WEIGHT * PRIOR_SIGMA_DB**2) / (n + PRIOR_WEIGHT))
    return out


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
    # The directions the baseline's checks moved in as they are (the all-bands part not taken
    # out: louder flow noise lifts its bands, it does not only reshape them), and how far along
    # each the checks went (dB, the projection's min and max). None in baselines written before.
    spans: FloatArray | None = None  # (k, bands), unit vectors
    lo: FloatArray | None = None
    hi: FloatArray | None = None
    # Each steady baseline check's leave-one-out residual (checks, bands), dB: how the residuals of
    # neighbouring bands move together (`joint.py`). None in baselines written before.
    loo: FloatArray | None = None

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
        sigma = residual_sigma(loo)
        spans = np.linalg.svd(p10 - centre, full_matrices=False)[2][:k]
        # A span that is (nearly) all-bands is a gain change, the offset's: its shape part is too
        # small to tell how far along it a check went (the fit would blow noise up).
        spans = spans[np.linalg.norm(spans - spans.mean(axis=1, keepdims=True), axis=1) >= MIN_SPAN_SHAPE]
        coef = _along(spans, p10 - centre)
        return cls(centre, vecs, sigma, n, spans, coef.min(axis=0), coef.max(axis=0), loo)

    def residual(self, p10: FloatArray) -> FloatArray:
        """The part of a check's quiet level that no nuisance pattern explains (dB per band)."""
        return _explain(p10 - self.centre, self.components)

    def beyond(self, p10: FloatArray, witness: npt.NDArray[np.bool_] | None = None) -> FloatArray:
        """The part of a check's quiet level that lies along the learned patterns (not the
        all-bands one) but *beyond* the range the baseline's checks spanned, per band in dB.

        More night demand than on any baseline night moves the bands along the flow-noise pattern
        further than the baseline saw: band-by-band thresholds (learned from that range) then call
        it a rise, although the pattern explains it. Subtracting this part before the level and
        shape are judged lets a nuisance grow beyond its learned range; what a leak adds off the
        patterns stays (and the residual, which removes every along-pattern part, is unchanged).

        `witness` (bands, bool): measure how far along the patterns the check went on these bands
        only (a metal pipe's bands outside its leak band, `judge.py`): there a nuisance shows and
        a leak does not, so a leak cannot pass itself off as more of a nuisance whose pattern
        covers its band. Every band is used instead when the witness bands are too few (fewer than
        `MIN_WITNESS` beyond the fit's unknowns) or a pattern barely moves them (its part there,
        off their mean, under `MIN_SPAN_SHAPE`): they could not tell how far that pattern went.
        """
        if self.spans is None or self.lo is None or self.hi is None or self.spans.shape[0] == 0:
            return np.zeros(self.centre.shape)
        d = p10 - self.centre
        if witness is not None and self._witnessed(witness):
            coef = _along(self.spans[:, witness], d[None, witness])[0]
        else:
            coef = _along(self.spans, d[None, :])[0]
        # At most twice the range's width beyond it: a check far off every pattern (rain, a new
        # pump) is not stretched onto one.
        width = SPAN_REACH * (self.hi - self.lo)
        excess = np.clip(coef - np.clip(coef, self.lo, self.hi), -width, width)
        out: FloatArray = self.spans.T @ excess
        return out

    def _witnessed(self, witness: npt.NDArray[np.bool_]) -> bool:
        """Whether the `witness` bands can tell how far along every learned span a check went."""
        assert self.spans is not None
        if int(witness.sum()) < self.spans.shape[0] + 1 + MIN_WITNESS:
            return False
        part = self.spans[:, witness]
        part = part - part.mean(axis=1, keepdims=True)
        return bool(np.all(np.linalg.norm(part, axis=1) >= MIN_SPAN_SHAPE))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "centre_db": [round(float(v), 3) for v in self.centre],
            "components": [[round(float(v), 5) for v in row] for row in self.components],
            "sigma_db": [round(float(v), 3) for v in self.sigma],
            "checks": self.checks,
        }
        if self.spans is not None and self.lo is not None and self.hi is not None:
            out["spans"] = [[round(float(v), 5) for v in row] for row in self.spans]
            out["span_range_db"] = [
                [round(float(a), 3), round(float(b), 3)] for a, b in zip(self.lo, self.hi, strict=True)
            ]
        if self.loo is not None:
            out["loo_residuals_db"] = [[round(float(v), 3) for v in row] for row in self.loo]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], bands: int) -> Nuisance:
        centre = np.asarray(d["centre_db"], dtype=np.float64)
        comps = np.asarray(d["components"], dtype=np.float64).reshape(-1, bands)
        sigma = np.asarray(d["sigma_db"], dtype=np.float64)
        if centre.shape != (bands,) or sigma.shape != (bands,) or comps.shape[0] > bands:
            raise ValueError(f"nuisance model must have {bands} bands")
        if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(comps)) and np.all(sigma > 0)):
            raise ValueError("nuisance model holds non-finite values")
        spans = lo = hi = None
        if d.get("spans") is not None:  # absent in baselines written before they were kept
            spans = np.asarray(d["spans"], dtype=np.float64).reshape(-1, bands)
            rng = np.asarray(d["span_range_db"], dtype=np.float64).reshape(-1, 2)
            if rng.shape != (spans.shape[0], 2) or not (
                np.all(np.isfinite(rng)) and np.all(np.isfinite(spans))
            ):
                raise ValueError("nuisance spans need a finite [low, high] each")
            if np.any(rng[:, 0] > rng[:, 1]):
                raise ValueError("nuisance span range has low above high")
            lo, hi = rng[:, 0], rng[:, 1]
        loo = None
        if d.get("loo_residuals_db") is not None:  # absent in baselines written before
            loo = np.asarray(d["loo_residuals_db"], dtype=np.float64)
            if loo.ndim != 2 or loo.shape[1] != bands or not np.all(np.isfinite(loo)):
                raise ValueError(f"nuisance leave-one-out residuals must be finite rows of {bands} bands")
        return cls(centre, comps, sigma, int(d["checks"]), spans, lo, hi, loo)
