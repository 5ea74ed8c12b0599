"""Scoring a file whose calibration is short and whose operating point is steady (a pump test bed).

What `edge-agent models score pump --csv` runs when calibration is shorter than an hour
(`models/pump/offline.py`); the live gateway and long calibrations keep the relation model and the
shared TFLite scorer (`detector.py`). With a few hundred calibration rows at one operating point,
a pump's normal is a small cloud: each channel's level and its noise. A fault moves a level (valve
closure: flow, pressure, current; drift: one sensor), changes a noise (cavitation: unsteady flow
and pressure; a stuck sensor: no noise at all) or both (imbalance, bearing wear: vibration).
Per channel, from the calibration rows only:

- robust z-scores (median, MAD; the scale never below the reading's resolution),
- a *level* statistic: the trailing mean of z over `level_window` rows, standardised by how much that
  mean wandered during calibration. A channel that drifted during calibration (a test bed warming
  up) may go on drifting at that rate; a channel whose deviation is shrinking (a temperature cooling
  back after the fault is gone) does not count while it recovers,
- a *noise* statistic: the log of the trailing RMS of row-to-row changes over `noise_window` rows,
  standardised the same way, two-sided (louder or quieter than normal; a frozen register is silent).

The row's score is the largest statistic over channels, smoothed by a trailing median, divided by
the threshold: a high quantile of the calibration rows' scores times a margin that grows as the
calibration gets shorter, never below a floor. Channel-agnostic: any columns, any names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from water_edge.models.pump.detector import trailing_mean

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SteadyParams:
    """Chosen on the tuning seeds of `models/train/pump_eval_short.py` (docs/pump-anomaly.md)."""

    level_window: int = 30  # rows in the trailing mean of each channel's z-score
    noise_window: int = 15  # rows in the trailing RMS of its row-to-row changes
    smooth: int = 5  # trailing median of the score (rows)
    quantile: float = 0.99  # of the calibration rows' scores
    margin: float = 1.0
    size_factor: float = 4.0  # threshold x margin x (1 + size_factor / sqrt(rows / level_window))
    floor: float = 4.0  # the threshold never goes below this (standardised units)
    use_noise: bool = True
    trend_sig: float = 0.5  # calibration drift beyond this many level spreads is allowed to go on
    recover_lag: int = 60  # a channel whose deviation shrank over this many rows is recovering...
    recover_by: float = 1.0  # ...by more than this many level spreads: its level does not count
    persistence: int = 5  # alarm: rows above the threshold to raise
    clear_after: int = 20  # rows below hysteresis x threshold to clear
    hysteresis: float = 0.8


def _fill(x: F64) -> F64:
    """Missing cells carry the last value seen (the first valid one before any)."""
    out = x.copy()
    for c in range(out.shape[1]):
        col = out[:, c]
        ok = np.isfinite(col)
        if not ok.any():
            out[:, c] = 0.0
            continue
        if ok.all():
            continue
        idx = np.where(ok, np.arange(len(col)), 0)
        np.maximum.accumulate(idx, out=idx)
        first = int(np.argmax(ok))
        idx[:first] = first
        out[:, c] = col[idx]
    return out


def _trailing_median(s: F64, w: int) -> F64:
    if w <= 1 or len(s) == 0:
        return s
    padded = np.concatenate([np.full(w - 1, s[0]), s])
    windows = np.lib.stride_tricks.sliding_window_view(padded, w)
    return np.asarray(np.median(windows, axis=1), dtype=np.float64)


def _resolution(col: F64) -> float:
    """The smallest step between distinct readings (PLC quantisation), 0 if unknown."""
    u = np.unique(col[np.isfinite(col)])
    if len(u) < 2:
        return 0.0
    return float(np.min(np.diff(u)))


def _spread(v: F64) -> F64:
    """Robust per-column spread: the larger of MAD and a trimmed standard deviation."""
    med = np.median(v, axis=0)
    mad = 1.4826 * np.median(np.abs(v - med), axis=0)
    return np.asarray(np.maximum(mad, 0.5 * v.std(axis=0)), dtype=np.float64)


@dataclass
class SteadyModel:
    params: SteadyParams
    center: F64
    scale: F64
    noise_eps: F64
    level_mid: F64
    level_sd: F64
    level_slope: F64  # per row, z units: the drift calibration showed beyond its noise
    noise_mid: F64
    noise_sd: F64
    threshold: float
    n_calibration: int

    def raw(self, x: F64) -> F64:
        """Unsmoothed per-row score for rows `x` (channels as calibrated)."""
        p = self.params
        z = (_fill(x) - self.center) / self.scale
        z = np.clip(z, -1e3, 1e3)
        level = trailing_mean(z, p.level_window)
        since = np.maximum(0.0, np.arange(len(z)) - self.n_calibration / 2)
        allow = since[:, None] * self.level_slope
        dev = np.abs(level - self.level_mid)
        a = np.maximum(0.0, dev - allow) / self.level_sd
        lag = p.recover_lag
        if lag > 0 and len(dev) > lag:
            back = np.zeros_like(dev, dtype=bool)
            back[lag:] = dev[lag:] < dev[:-lag] - p.recover_by * self.level_sd
            a[back] = 0.0
        parts = [a.max(axis=1)]
        if p.use_noise:
            d = np.vstack([np.zeros((1, z.shape[1])), np.diff(z, axis=0)])
            rms = np.sqrt(trailing_mean(d * d, p.noise_window))
            b = np.abs(np.log(rms + self.noise_eps) - self.noise_mid) / self.noise_sd
            parts.append(b.max(axis=1))
        return np.asarray(np.max(np.vstack(parts), axis=0), dtype=np.float64)

    def score(self, x: F64) -> F64:
        """Per-row score in units of the threshold (above 1: abnormal)."""
        return _trailing_median(self.raw(x), self.params.smooth) / self.threshold


def fit(x: F64, params: SteadyParams | None = None) -> SteadyModel:
    """Learn the normal of calibration rows `x` (rows x channels, NaN allowed, no constant column:
    `offline.usable_channels` drops those first)."""
    p = params or SteadyParams()
    x = np.asarray(x, dtype=np.float64)
    n, n_ch = x.shape
    center = np.nanmedian(x, axis=0)
    mad = 1.4826 * np.nanmedian(np.abs(x - center), axis=0)
    q75, q25 = np.nanpercentile(x, [75, 25], axis=0)
    res = np.array([_resolution(x[:, c]) for c in range(n_ch)])
    scale = np.maximum.reduce([mad, (q75 - q25) / 1.349, res, 1e-9 * (np.abs(center) + 1.0)])
    z = (_fill(x) - center) / scale
    skip = min(max(p.level_window, p.noise_window), n // 4)  # windows still filling
    level = trailing_mean(z, p.level_window)
    lv = level[skip:]
    level_mid = np.median(lv, axis=0)
    level_sd = np.maximum(_spread(lv), 1.0 / math.sqrt(p.level_window))
    # Drift during calibration (first vs last quarter), beyond what its level wander explains.
    slope = np.zeros(n_ch)
    if len(lv) >= 8:
        quarter = len(lv) // 4
        step = np.abs(np.median(lv[-quarter:], axis=0) - np.median(lv[:quarter], axis=0))
        span = len(lv) - quarter
        slope = np.maximum(0.0, step - p.trend_sig * level_sd) / span
    # Row-to-row changes: a channel that never moves in calibration still has its resolution as noise.
    d = np.vstack([np.zeros((1, n_ch)), np.diff(z, axis=0)])
    noise_eps = np.maximum(res / scale, 1e-3) / math.sqrt(p.noise_window)
    rms = np.sqrt(trailing_mean(d * d, p.noise_window))
    lr = np.log(rms + noise_eps)[skip:]
    noise_mid = np.median(lr, axis=0)
    noise_sd = np.maximum(_spread(lr), 0.5 / math.sqrt(p.noise_window))
    model = SteadyModel(
        p,
        center,
        scale,
        noise_eps,
        level_mid,
        level_sd,
        slope,
        noise_mid,
        noise_sd,
        threshold=math.inf,
        n_calibration=n,
    )
    s = _trailing_median(model.raw(x), p.smooth)[skip:]
    q = float(np.quantile(s, p.quantile)) if len(s) else 0.0
    factor = p.margin * (1.0 + p.size_factor / math.sqrt(max(1.0, n / p.level_window)))
    model.threshold = max(p.floor, factor * q)
    return model
