"""The pump detector's arithmetic: calibrate on normal operation, score samples, explain an alarm.

Works on any set of numeric channels (the mapped roles of one pump, or the columns of a CSV):

1. Calibration (numpy, on the device) learns per channel a robust centre and scale (z-scores) and a
   ridge regression of each channel from the others (`1, z_j, z_j**2`): the pump's normal relations
   (current follows flow and head, vibration follows speed...). Residuals are cross-fitted over
   contiguous blocks so their spread is what unseen normal data shows, not the fit's optimism.
2. Two arms score each channel:
   - the *relation arm*: the trailing mean of the channel's relation residual over `level_window`
     samples, standardised by how much that mean wandered on cross-fitted calibration data. A
     valve closing, a drifting sensor or a worn bearing pulls a signal off its normal relation to
     the others for minutes; noise averages out;
   - the *scorer arm*: the channel's last `window` samples of (relation residual, z-score) through
     the shared TFLite scorer, which turns a window into one non-negative number (its strength is
     the window's shape: cavitation's unsteadiness, vibration growing). The scorer never sees
     channel names, so one model serves every pump and every CSV.
   Each arm is divided by its own threshold; a channel's score is the larger of the two and the
   pump's score the largest over its channels, so the score is in units of the alarm level
   (`threshold` is 1: above it is abnormal, 2 is twice the alarm level).
3. Each arm's threshold is a high quantile of its calibration scores times a margin that grows as
   the calibration gets shorter: `margin * (1 + size_factor / sqrt(n / window))`. Windows overlap,
   so `n / window` is roughly the number of independent looks at normal the quantile rests on; the
   relative error of a tail quantile grows like one over its square root. At 24 h of 1 s data the
   factor is ~1.28, at one hour ~1.6.

Calibration must see the pump's operating range (a day of normal duty for a station that follows
demand: `auto_hours = 24`): relations learnt on one hour do not extrapolate to the evening peak,
and the detector then reads a new operating point as abnormal (docs/pump-anomaly.md has the figures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from water_edge.models.manifest import ModelError

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

CALIBRATION_FORMAT = 2
MIN_CALIBRATION_ROWS = 10
CLIP = 20.0  # residuals and z-scores beyond this carry no more information, only overflow risk
INPUT_SCALE = 4.0  # keeps the scorer's inputs near unit range
RESIDUAL_FLOOR = 0.05  # in z units: a perfectly predictable channel must not make noise an alarm
DEFAULT_QUANTILE = 0.995
DEFAULT_MARGIN = 1.2
DEFAULT_SIZE_FACTOR = 3.5
LEVEL_WINDOW = 30  # samples in the relation arm's trailing mean (<= the scorer's window)
SCORE_CAP = 1e6  # scorer outputs beyond this (or inf) are capped
CHUNK_ROWS = 4096  # calibration scores this many rows at a time (bounded memory on a Pi)
SCORE_CHUNK_ROWS = 65_536  # `score` takes this many rows at a time
GLITCH_PCT = 0.1  # % of calibration rows at each end a channel's spread is not taken from


def threshold_margin(
    n: int, window: int, margin: float = DEFAULT_MARGIN, size_factor: float = DEFAULT_SIZE_FACTOR
) -> float:
    """The factor on the calibration quantile: wider when fewer independent windows were seen."""
    n_eff = max(1.0, n / max(1, window))
    return margin * (1.0 + size_factor / math.sqrt(n_eff))


class Scorer(Protocol):
    """What the detector needs from a model: [n, window, 2] float32 -> [n, 1]."""

    def invoke(self, x: npt.ArrayLike) -> npt.NDArray[Any]: ...


class CalibrationError(ModelError):
    """Calibration data is unusable (too few rows, no varying channel)."""


@dataclass
class Calibration:
    """A pump's learned normal: stored as JSON in the state dir, versioned by `version` (1, 2, ...)."""

    channels: list[str]
    center: list[float]
    scale: list[float]
    coef: list[list[float]]  # per channel: weights over [1, z..., z**2...] (own columns zero)
    residual_scale: list[float]
    z_low: list[float]  # calibration range: regressors are clamped to it (no wild extrapolation)
    z_high: list[float]
    threshold: float  # of the combined score: 1 (each arm is divided by its own threshold)
    score_quantile: float
    window: int
    level_window: int
    level_mid: list[float]  # relation arm: centre and spread of the residuals' trailing mean
    level_sd: list[float]
    level_threshold: float
    scorer_threshold: float  # scorer arm
    n_samples: int
    model_version: str
    version: int = 1
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    from_ts: str | None = None
    to_ts: str | None = None
    dropped: list[str] = field(default_factory=list)  # constant during calibration: ignored
    format: int = CALIBRATION_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("format") != CALIBRATION_FORMAT:
            raise ModelError(
                f"calibration format {data.get('format')!r} is not {CALIBRATION_FORMAT} (written by an older "
                "release): calibrate the pump again (edge-agent models calibrate pump)"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"calibration file is malformed: {exc}") from exc


def _fill(z: F64) -> F64:
    """Missing cells carry the last seen value of their channel (0, the centre, before any)."""
    out = z.copy()
    for c in range(out.shape[1]):
        col = out[:, c]
        bad = ~np.isfinite(col)
        if bad.any():
            idx = np.where(~bad, np.arange(len(col)), 0)
            np.maximum.accumulate(idx, out=idx)
            filled = col[idx]
            filled[~np.isfinite(filled)] = 0.0
            out[:, c] = filled
    return out


def _basis(z: F64) -> F64:
    n = z.shape[0]
    return np.hstack([np.ones((n, 1)), z, z * z])


def _ridge(z: F64, lam: float) -> F64:
    """Coefficients (C, 1+2C) predicting each channel from the others."""
    n_ch = z.shape[1]
    phi = _basis(z)
    coef = np.zeros((n_ch, phi.shape[1]))
    if n_ch < 2:
        return coef
    for c in range(n_ch):
        keep = np.ones(phi.shape[1], dtype=bool)
        keep[1 + c] = keep[1 + n_ch + c] = False
        a = phi[:, keep]
        reg = lam * np.eye(a.shape[1])
        reg[0, 0] = 0.0  # the intercept is not shrunk
        coef[c, keep] = np.linalg.solve(a.T @ a + reg, a.T @ z[:, c])
    return coef


def _lambda(n: int) -> float:
    return 1.0 + 0.01 * n


def zscores(x: F64, cal: Calibration) -> F64:
    z = (x - np.asarray(cal.center)) / np.asarray(cal.scale)
    return np.clip(_fill(z), -CLIP, CLIP)


def residuals(z: F64, coef: F64, residual_scale: F64, low: F64, high: F64) -> F64:
    pred = _basis(np.clip(z, low, high)) @ coef.T
    return np.clip((z - pred) / residual_scale, -CLIP, CLIP)


def windows(z: F64, r: F64, window: int) -> F32:
    """(n, C, window, 2) inputs; the first rows see their series padded with its first sample."""
    padded_r = np.vstack([np.repeat(r[:1], window - 1, axis=0), r])
    padded_z = np.vstack([np.repeat(z[:1], window - 1, axis=0), z])
    wr = np.lib.stride_tricks.sliding_window_view(padded_r, window, axis=0)  # (n, C, window)
    wz = np.lib.stride_tricks.sliding_window_view(padded_z, window, axis=0)
    return (np.stack([wr, wz], axis=-1) / INPUT_SCALE).astype(np.float32)


def trailing_mean(x: F64, w: int) -> F64:
    """Per column, the mean of the last `w` rows (fewer at the start)."""
    c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(0, n - w)
    return np.asarray((c[n] - c[lo]) / (n - lo)[:, None], dtype=np.float64)


def level_stats(r: F64, w: int, mid: F64, sd: F64) -> F64:
    """(n, C) relation-arm statistic: how far each residual's trailing mean is from normal."""
    return np.asarray(np.abs(trailing_mean(r, w) - mid) / sd, dtype=np.float64)


def scorer_scores(model: Scorer, z: F64, r: F64, window: int) -> F64:
    """(n, C) scorer-arm scores, built `CHUNK_ROWS` rows at a time: the windows of a day of data at
    once would take ~450 MB."""
    out = np.empty(z.shape)
    for start in range(0, len(z), CHUNK_ROWS):
        lo = max(0, start - window + 1)
        stop = min(len(z), start + CHUNK_ROWS)
        ch = channel_scores(model, windows(z[lo:stop], r[lo:stop], window))
        out[start:stop] = ch[start - lo :]
    return out


def channel_scores(model: Scorer, inputs: F32, batch: int = 8192) -> F64:
    """(n, C) scores from (n, C, window, 2) inputs."""
    n, n_ch = inputs.shape[:2]
    flat = inputs.reshape(n * n_ch, *inputs.shape[2:])
    out = np.empty(n * n_ch)
    for start in range(0, len(flat), batch):
        out[start : start + batch] = model.invoke(flat[start : start + batch]).reshape(-1)
    # An overflowing model says "very abnormal"; inf would be skipped by the alarm like a gap.
    np.minimum(out, SCORE_CAP, out=out)
    return out.reshape(n, n_ch)


def calibrate(
    x: F64,
    channels: Sequence[str],
    model: Scorer,
    *,
    window: int,
    model_version: str,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    size_factor: float = DEFAULT_SIZE_FACTOR,
    version: int = 1,
    from_ts: str | None = None,
    to_ts: str | None = None,
) -> Calibration:
    """Learn a pump's normal from `x` (rows of normal operation, NaN allowed)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_CALIBRATION_ROWS:
        raise CalibrationError(
            f"need at least {MIN_CALIBRATION_ROWS} calibration rows, got {x.shape[0] if x.ndim else 0}"
        )
    finite = np.where(np.isfinite(x), x, np.nan)
    center = np.nanmedian(finite, axis=0)
    lo, q25, q75, hi = np.nanpercentile(finite, [GLITCH_PCT, 25, 75, 100 - GLITCH_PCT], axis=0)
    # The standard deviation (a pump with two duty points) over the central rows only: one sensor
    # glitch of 1000x in a day's calibration made the channel's scale 1000x too wide, and a fault
    # of that signal went unseen for as long as the calibration was in service.
    std = np.nanstd(np.clip(finite, lo, hi), axis=0)
    scale = np.maximum(std, (q75 - q25) / 1.349)
    tiny = 1e-9 * (np.abs(center) + 1.0)
    keep = np.isfinite(center) & np.isfinite(scale) & (scale > tiny)
    dropped = [c for c, k in zip(channels, keep, strict=True) if not k]
    if not keep.any():
        raise CalibrationError("no channel varies during calibration (all constant or empty)")
    x = x[:, keep]
    names = [c for c, k in zip(channels, keep, strict=True) if k]
    center, scale = center[keep], scale[keep]
    z = np.clip(_fill((x - center) / scale), -CLIP, CLIP)
    n = len(z)

    # Cross-fit: each block's residuals come from a fit on the other blocks.
    folds = 5 if n >= 10 * window else 2 if n >= 4 * (2 * len(names) + 1) else 1
    oof = np.empty_like(z)
    bounds = np.linspace(0, n, folds + 1).astype(int)
    for k in range(folds):
        lo, hi = bounds[k], bounds[k + 1]
        train = np.r_[0:lo, hi:n] if folds > 1 else np.r_[0:n]
        coef_k = _ridge(z[train], _lambda(len(train)))
        oof[lo:hi] = z[lo:hi] - _basis(z[lo:hi]) @ coef_k.T
    coef = _ridge(z, _lambda(n))
    med = np.median(oof, axis=0)
    mad = 1.4826 * np.median(np.abs(oof - med), axis=0)
    res_scale = np.maximum(np.maximum(mad, 0.5 * oof.std(axis=0)), RESIDUAL_FLOOR)
    r = np.clip(oof / res_scale, -CLIP, CLIP)
    factor = threshold_margin(n, window, margin, size_factor)

    level_window = min(LEVEL_WINDOW, window)
    filled = min(window, n // 4)  # rows whose windows are still filling (padded) are not typical
    settled = trailing_mean(r, level_window)[filled:]
    level_mid = np.median(settled, axis=0)
    level_sd = np.maximum.reduce(
        [
            1.4826 * np.median(np.abs(settled - level_mid), axis=0),
            0.5 * settled.std(axis=0),
            np.full(len(names), 1.0 / math.sqrt(level_window)),
        ]
    )
    level = level_stats(r, level_window, level_mid, level_sd).max(axis=1)[filled:]
    level_threshold = factor * max(float(np.quantile(level, quantile)), 1e-6)

    scores = scorer_scores(model, z, r, window).max(axis=1)[filled:]
    q = float(np.quantile(scores, quantile))
    return Calibration(
        channels=names,
        center=center.tolist(),
        scale=scale.tolist(),
        coef=coef.tolist(),
        residual_scale=res_scale.tolist(),
        z_low=(z.min(axis=0) - 5.0).tolist(),
        z_high=(z.max(axis=0) + 5.0).tolist(),
        threshold=1.0,
        score_quantile=q,
        window=window,
        level_window=level_window,
        level_mid=level_mid.tolist(),
        level_sd=level_sd.tolist(),
        level_threshold=level_threshold,
        scorer_threshold=factor * max(q, 1e-6),
        n_samples=n,
        model_version=model_version,
        version=version,
        from_ts=from_ts,
        to_ts=to_ts,
        dropped=dropped,
    )


@dataclass(frozen=True, slots=True)
class Scored:
    """Per-sample pump scores, per-channel scores and residuals (for explanations)."""

    score: F64  # (n,) in units of the alarm level (above `Calibration.threshold`, 1, is abnormal)
    channel: F64  # (n, C) the same per channel
    residual: F64  # (n, C)


def select(x: F64, channels: Sequence[str], cal: Calibration) -> F64:
    """The calibrated channels' columns of `x`, in calibration order."""
    index = {name: i for i, name in enumerate(channels)}
    missing = [c for c in cal.channels if c not in index]
    if missing:
        raise ModelError(f"calibrated channels missing from the data: {', '.join(missing)}")
    return np.asarray(x, dtype=np.float64)[:, [index[c] for c in cal.channels]]


def score(x: F64, cal: Calibration, model: Scorer) -> Scored:
    """Score rows of `x` whose columns are `cal.channels`, in order, `SCORE_CHUNK_ROWS` at a time:
    each piece with the rows before it that its trailing windows reach back to, so the figures are
    those of one piece, without a week of 1 Hz rows' temporaries at once (~220 MB)."""
    n = len(x)
    if n <= SCORE_CHUNK_ROWS:
        return _score_rows(x, cal, model)
    back = max(cal.window, cal.level_window) - 1
    channel, residual = np.empty(x.shape), np.empty(x.shape)
    for start in range(0, n, SCORE_CHUNK_ROWS):
        lo, stop = max(0, start - back), min(n, start + SCORE_CHUNK_ROWS)
        part = _score_rows(x[lo:stop], cal, model)
        channel[start:stop], residual[start:stop] = part.channel[start - lo :], part.residual[start - lo :]
    return Scored(channel.max(axis=1), channel, residual)


def _score_rows(x: F64, cal: Calibration, model: Scorer) -> Scored:
    z = zscores(x, cal)
    r = residuals(
        z, np.asarray(cal.coef), np.asarray(cal.residual_scale), np.asarray(cal.z_low), np.asarray(cal.z_high)
    )
    level = level_stats(r, cal.level_window, np.asarray(cal.level_mid), np.asarray(cal.level_sd))
    ch = (
        np.maximum(level / cal.level_threshold, scorer_scores(model, z, r, cal.window) / cal.scorer_threshold)
        * cal.threshold
    )
    return Scored(ch.max(axis=1), ch, r)


class Alarm:
    """Persistence and hysteresis: raise after `persistence` samples above the threshold, clear after
    `clear_after` samples below `hysteresis * threshold`."""

    def __init__(self, persistence: int, clear_after: int, hysteresis: float) -> None:
        self.persistence = persistence
        self.clear_after = clear_after
        self.hysteresis = hysteresis
        self.active = False
        self._above = 0
        self._below = 0

    def update(self, score: float, threshold: float) -> bool | None:
        """True when the alarm rises, False when it clears, None when nothing changes."""
        if not math.isfinite(score):
            return None
        if not self.active:
            self._above = self._above + 1 if score > threshold else 0
            if self._above >= self.persistence:
                self.active, self._below = True, 0
                return True
            return None
        self._below = self._below + 1 if score < self.hysteresis * threshold else 0
        if self._below >= self.clear_after:
            self.active, self._above = False, 0
            return False
        return None


def alarm_series(
    scores: F64, threshold: float, persistence: int, clear_after: int, hysteresis: float
) -> npt.NDArray[np.int8]:
    alarm = Alarm(persistence, clear_after, hysteresis)
    out = np.zeros(len(scores), dtype=np.int8)
    for i, s in enumerate(scores):
        alarm.update(float(s), threshold)
        out[i] = alarm.active
    return out


def contributors(
    cal: Calibration,
    channel_score: F64,
    residual_window: F64,
    top: int = 2,
    words: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The channels driving a score and one sentence for an operator.

    `channel_score` is (C,) at the alarm; `residual_window` (w, C) the recent residuals whose mean
    sign says above or below normal, and the regression says normal relative to what.
    """
    words = words or {}
    n_ch = len(cal.channels)
    order = np.argsort(channel_score)[::-1][: max(1, min(top, n_ch))]
    limit = cal.threshold * 0.5
    chosen = [int(i) for i in order if channel_score[i] >= limit] or [int(order[0])]
    coef = np.asarray(cal.coef)
    mean_r = residual_window.mean(axis=0)
    signals: list[dict[str, Any]] = []
    for i in chosen:
        weight = np.abs(coef[i, 1 : 1 + n_ch]) + np.abs(coef[i, 1 + n_ch :])
        weight[i] = 0.0
        ref = cal.channels[int(np.argmax(weight))] if n_ch > 1 and weight.max() > 0.05 else None
        signals.append(
            {
                "signal": cal.channels[i],
                "score": round(float(channel_score[i]), 3),
                "direction": "above" if mean_r[i] >= 0 else "below",
                "relative_to": ref,
            }
        )

    def say(name: str | None) -> str:
        return words.get(name, name) if name else ""

    parts: list[str] = []
    for direction in ("above", "below"):
        group = [s for s in signals if s["direction"] == direction]
        if not group:
            continue
        names = " and ".join(say(s["signal"]) for s in group)
        refs = [
            s["relative_to"]
            for s in group
            if s["relative_to"] and s["relative_to"] not in {g["signal"] for g in group}
        ]
        if refs:
            parts.append(f"{names} {direction} their normal relation to {say(refs[0])}")
        else:
            parts.append(f"{names} {direction} their normal range")
    return signals, "; ".join(parts)
