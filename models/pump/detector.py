"""The pump detector's arithmetic: calibrate on normal operation, score samples, explain an alarm.

Works on any set of numeric channels (the mapped roles of one pump, or the columns of a CSV):

1. Calibration (numpy, on the device) learns per channel a robust centre and scale (z-scores) and a
   ridge regression of each channel from the others (`1, z_j, z_j**2`): the pump's normal relations
   (current follows flow and head, vibration follows speed...). Residuals are cross-fitted over
   contiguous blocks so their spread is what unseen normal data shows, not the fit's optimism.
2. Two arms and a frozen test score each channel:
   - the *relation arm*: the trailing mean of the channel's relation residual over `level_window`
     samples, standardised by how much that mean wandered on cross-fitted calibration data. A
     valve closing, a drifting sensor or a worn bearing pulls a signal off its normal relation to
     the others for minutes; noise averages out;
   - the *scorer arm*: the channel's last `window` samples of (relation residual, z-score) through
     the shared TFLite scorer, which turns a window into one non-negative number (its strength is
     the window's shape: cavitation's unsteadiness, vibration growing). The scorer never sees
     channel names, so one model serves every pump and every CSV.
   Each arm is divided by its own threshold; a channel's score is the largest of them and the
   pump's score the largest over its channels, so the score is in units of the alarm level
   (`threshold` is 1: above it is abnormal, 2 is twice the alarm level).
   - the *frozen test*: a register that holds its last value (a transmitter or PLC input card
     frozen) repeats one reading exactly, which a channel whose noise is above its resolution
     never does for long. Per channel: the current run of identical readings over the channel's
     `frozen_limit` (`run / limit`, so above 1 is abnormal). See `frozen_limits` for which
     channels qualify and why the limit is what it is; 0 means no frozen test (a coarsely
     quantised or slow channel, or a calibration written before the test existed).
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

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from water_edge.models.manifest import ModelError
from water_edge.models.versioned_store import known_fields

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
# A calibration learns from at most this many rows (`calibration_blocks`): a day at 1 s (86,400, the
# gateway's default `auto_hours`) and 15 % more are taken whole, a longer stretch is thinned to
# blocks spread over it. What it costs grows with the rows (~40 MiB at the peak for a day of 8
# signals, docs/pump-anomaly.md), what it gains does not: at the cap the thresholds' quantiles rest
# on ~3,000 independent windows, the 0.995 quantile on ~500 rows above it, and the relations on
# every operating point of a day.
MAX_CALIBRATION_ROWS = 100_000
CALIBRATION_BLOCK_ROWS = 500  # the shortest kept block: ~8 min at 1 s (`calibration_blocks` says why)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
GLITCH_PCT = 0.1  # % of calibration rows at each end a channel's spread is not taken from
# The frozen test (`frozen_limits` says why these values):
FROZEN_MAX_REPEAT = 0.05  # a channel qualifies when at most this share of its readings repeat
FROZEN_MIN_PAIRS = 600  # ... measured on at least this many pairs of successive readings
FROZEN_FLOOR = 30  # rows: no limit is shorter
FROZEN_K = 2.0  # times the longest run of identical readings calibration saw
# Signals held together (`held_together`): their runs began within this many samples of each other
# (one poll, or polls of one device a little apart).
HELD_TOGETHER_SLACK = 3


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
    # The frozen test, per channel (empty: none, as in a calibration written before it existed).
    # frozen_limit 0: the channel does not qualify (it repeats too often to be judged this way).
    frozen_limit: list[float] = field(default_factory=list)
    repeat_share: list[float] = field(default_factory=list)  # of successive readings, identical
    longest_run: list[int] = field(default_factory=list)  # of identical readings, in calibration
    format: int = CALIBRATION_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """A stored calibration of this format. Keys this release does not know are ignored: a
        later release adds fields without a format change only when an older one may score
        without them (as this one added the frozen test's), and a format it changes otherwise.
        Refusing them cost a rollback its calibration: the release rolled back to learnt the pump
        again from its last `auto_hours` of history."""
        if not isinstance(data, dict):
            got = type(data).__name__
            raise ModelError(f"calibration file is malformed: a JSON object expected, got {got}")
        if (fmt := data.get("format")) != CALIBRATION_FORMAT:
            later = type(fmt) is int and fmt > CALIBRATION_FORMAT  # after a rollback
            raise ModelError(
                f"calibration format {fmt!r} is not {CALIBRATION_FORMAT} (written by "
                f"{'a later' if later else 'an older'} release): calibrate the pump again "
                "(edge-agent models calibrate pump)"
            )
        try:
            cal = cls(**known_fields(cls, data))
        except TypeError as exc:
            raise ModelError(f"calibration file is malformed: {exc}") from exc
        if cal.frozen_limit and len(cal.frozen_limit) != len(cal.channels):
            raise ModelError(
                f"calibration file is malformed: {len(cal.frozen_limit)} frozen limits for "
                f"{len(cal.channels)} channels"
            )
        return cal

    def frozen(self, run: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """(C,) or (n, C): which channels' runs of identical readings are past their limit."""
        if not self.frozen_limit:
            return np.zeros(np.shape(run), dtype=bool)
        lim = np.asarray(self.frozen_limit, dtype=np.float64)
        return np.asarray((lim > 0) & (np.asarray(run, dtype=np.float64) > lim), dtype=bool)


def held_together(cal: Calibration, run: npt.ArrayLike) -> list[int]:
    """The channels that stopped changing at the same sample as a frozen one, when two or more did:
    readings held upstream (a PLC, a protocol gateway or a server answering from its cache) rather
    than several transmitters failing in the same second. Only channels the frozen test judges
    count (a coarse channel sits still for long stretches by itself); [] otherwise."""
    return [int(i) for i in np.flatnonzero(held_together_rows(cal, run))]


def held_together_rows(cal: Calibration, run: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """`held_together` for runs of shape (C,) or (n, C), as a mask of the same shape."""
    runs = np.asarray(run, dtype=np.float64)
    if not cal.frozen_limit:
        return np.zeros(runs.shape, dtype=bool)
    lim = np.asarray(cal.frozen_limit, dtype=np.float64)
    # The longest frozen run (past its limit: at least FROZEN_FLOOR samples); -inf: none frozen.
    longest = np.where(cal.frozen(runs), runs, -np.inf).max(axis=-1, keepdims=True)
    together = (lim > 0) & (np.abs(runs - longest) <= HELD_TOGETHER_SLACK)
    out: npt.NDArray[np.bool_] = together & (together.sum(axis=-1, keepdims=True) >= 2)
    return out


@dataclass(frozen=True, slots=True)
class Runs:
    """Where each channel's run of identical readings stands after the rows seen so far: its last
    reading (float32, NaN before any) and how many readings in a row have had that value (0 before
    any). What the gateway carries from one sample to the next and across a restart."""

    last: F32
    length: F64

    @classmethod
    def start(cls, n_channels: int) -> Runs:
        return cls(np.full(n_channels, np.nan, dtype=np.float32), np.zeros(n_channels))


def repeat_runs(x: F64, before: Runs | None = None) -> tuple[F32, Runs]:
    """(n, C) the length of the run of identical readings each row's reading belongs to (1: it
    differs from the previous reading; float32, exact to 16 million rows, half the memory of a
    week's file), and where the runs stand after the last row.

    Readings are compared at float32 precision, the precision the gateway keeps its history in
    (calibration reads it from there). A missing cell neither breaks nor extends a run: it carries
    the run as it stood (the register was not read, so nothing says it changed), and the next
    reading extends the run if it equals the last one read. `before` continues runs from earlier
    rows (a gateway's previous samples); without it every channel starts afresh.
    """
    x = np.asarray(x, dtype=np.float64)
    n, n_ch = x.shape
    state = before or Runs.start(n_ch)
    with np.errstate(over="ignore", invalid="ignore"):
        v32 = x.astype(np.float32)
    if n == 1:  # the gateway, a sample at a time: no loop over channels
        seen = np.isfinite(v32[0])
        length = np.where(seen, np.where(v32[0] == state.last, state.length + 1.0, 1.0), state.length)
        return length[None].astype(np.float32), Runs(np.where(seen, v32[0], state.last), length)
    out = np.empty((n, n_ch), dtype=np.float32)
    last = state.last.copy()
    length = state.length.copy()
    for c in range(n_ch):
        rows = np.flatnonzero(np.isfinite(v32[:, c]))
        if len(rows) == 0:
            out[:, c] = length[c]
            continue
        v = v32[rows, c]
        new = np.ones(len(v), dtype=bool)
        new[1:] = v[1:] != v[:-1]
        carried = bool(v[0] == last[c])  # False when `last` is NaN: no run before
        new[0] = not carried
        k = np.arange(len(v))
        start = np.maximum.accumulate(np.where(new, k, 0))
        run = (k - start + 1).astype(np.float64)
        if carried:
            first = int(np.argmax(new)) if new.any() else len(v)  # the rows of the carried run
            run[:first] += length[c]
        # each row: the run of the last reading at or before it (missing cells carry it)
        at = np.searchsorted(rows, np.arange(n), side="right") - 1
        out[:, c] = np.where(at >= 0, run[np.maximum(at, 0)], length[c])
        last[c], length[c] = v[-1], run[-1]
    return out, Runs(last, length)


def frozen_limits(x: F64) -> tuple[list[float], list[float], list[int]]:
    """Per channel of calibration rows `x`: the frozen test's limit in rows (0: no test), the share
    of successive readings that were identical and the longest run of identical readings.

    Which channels: a reading that equals the one before is what a frozen register does all the
    time and what a channel whose noise is larger than its resolution seldom does. A channel
    qualifies when at most `FROZEN_MAX_REPEAT` (5 %) of its successive readings repeat (with
    Gaussian noise of spread s over a resolution q, the share is about q / (2 s sqrt(pi)): 5 % is
    noise over five steps of resolution, so readings are close to independent draws), measured on
    at least `FROZEN_MIN_PAIRS` pairs (with 600, a channel repeating 10 % of the time shows 5 % or
    less with odds of about 1 in 160,000). A channel read in coarse steps (a pressure in 0.1 bar, a
    temperature) or one that holds still (a speed at its maximum) repeats more often and is left
    to the other arms; so is one calibration never saw read (empty, mostly missing).

    The limit: `max(FROZEN_FLOOR, FROZEN_K x longest run)`.
    - K = 2: if runs of identical readings have a geometric tail (each reading repeats the last
      with some chance r), the longest run L in the n calibration rows has r**L ~ 1/n; a run of 2L
      then turns up with chance ~ n * r**(2L) ~ 1/n in the next n rows: at 1 s, about once in
      86,400 days. The longest run of a year of service is about 1.5 L (log(365 n) / log(n)).
      Taking the channel's own longest run, not the share alone, is what covers a channel that
      is noisy most of the day but holds one value for an hour at night (a speed at its limit):
      its limit is two hours.
    - The floor, 30 rows, is not set by chance: at the qualifying bound (5 % repeats, independent)
      a run of 7 readings turns up about once in 700 days of 1 s rows (86,400 x 0.05**6 = 0.0014
      a day). It is set by what else makes a value repeat and what an alarm costs: the gateway
      repeats a value whose poll failed for up to `stale_after_s` (10 s: 10 samples) before it
      reads it missing, and an alarm, once raised, holds for at least `clear_after` (30) samples:
      a freeze shorter than the hold it would cause is not worth an event. With the alarm's
      persistence (5 samples above the limit) a frozen register is flagged 35 samples after it
      froze on a channel whose calibration runs stay under 16 (35 s at 1 s), 2L + 5 samples after
      otherwise.

    Counted `CHUNK_ROWS` rows at a time (`FrozenCount`): the figures of `x` whole.
    """
    x = np.asarray(x)
    count = FrozenCount(x.shape[1])
    for start in range(0, len(x), CHUNK_ROWS):
        count.add(x[start : start + CHUNK_ROWS])
    return count.limits()


class FrozenCount:
    """`frozen_limits` over rows given a piece at a time, in order: runs of identical readings and
    pairs of successive readings are carried from one piece to the next (`repeat_runs` with
    `before`), so the figures are those of all the rows at once. A calibration counts them on every
    row of its range as it reads the history, including the rows thinned out of what the other
    arms learn from (`calibration_blocks`): a channel that holds one value for an hour each night
    must have that hour in its longest run, wherever the kept blocks fall."""

    def __init__(self, n_channels: int) -> None:
        self.runs = Runs.start(n_channels)
        self.longest = np.zeros(n_channels)
        self.repeats = np.zeros(n_channels, dtype=np.int64)  # successive readings identical
        self.pairs = np.zeros(n_channels, dtype=np.int64)  # successive readings (missing skipped)

    def add(self, x: npt.ArrayLike) -> None:
        """Count the rows `x` (n, C), the next ones after those counted so far."""
        x = np.asarray(x)
        if len(x) == 0:
            return
        runs, after = repeat_runs(x, self.runs)
        np.maximum(self.longest, runs.max(axis=0), out=self.longest)
        with np.errstate(over="ignore", invalid="ignore"):
            v32 = x.astype(np.float32)
        for c in range(v32.shape[1]):
            v = v32[np.isfinite(v32[:, c]), c]
            if len(v) == 0:
                continue
            if np.isfinite(self.runs.last[c]):  # the last reading of the rows before
                v = np.concatenate([self.runs.last[c : c + 1], v])
            self.pairs[c] += len(v) - 1
            self.repeats[c] += int(np.count_nonzero(v[1:] == v[:-1]))
        self.runs = after

    def limits(self) -> tuple[list[float], list[float], list[int]]:
        """`frozen_limits` of the rows counted: per channel the limit, the share and the longest run."""
        limits: list[float] = []
        shares: list[float] = []
        longest: list[int] = []
        for c in range(len(self.longest)):
            pairs = int(self.pairs[c])
            share = int(self.repeats[c]) / pairs if pairs else 1.0
            long_run = int(self.longest[c])
            ok = pairs >= FROZEN_MIN_PAIRS and share <= FROZEN_MAX_REPEAT
            limits.append(max(float(FROZEN_FLOOR), FROZEN_K * long_run) if ok else 0.0)
            shares.append(round(share, 6))
            longest.append(long_run)
        return limits, shares, longest


def frozen_scores(runs: F32, limits: Sequence[float]) -> F64:
    """(n, C) the frozen test per channel: run / limit (above 1: longer than the limit), 0 where a
    channel has no limit (no test)."""
    lim = np.asarray(limits, dtype=np.float64) if len(limits) else np.zeros(runs.shape[1])
    on = lim > 0
    return np.where(on, runs.astype(np.float64) / np.where(on, lim, 1.0), 0.0)


def _fill(z: F64) -> F64:
    """Missing cells carry the last seen value of their channel (0, the centre, before any)."""
    seen = np.isfinite(z)
    if seen.all():
        return z.copy()
    # Every column at once (the gateway fills a window per sample): each cell takes its column's
    # last finite row at or before it.
    n, n_ch = z.shape
    idx = np.where(seen, np.arange(n)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = z[idx, np.arange(n_ch)]
    np.copyto(out, 0.0, where=~np.isfinite(out))
    return out


def _fill_column(col: F64) -> None:
    """`_fill` of one column, in place."""
    if not np.isfinite(col).all():
        col[:] = _fill(col[:, None])[:, 0]


def _basis(z: F64) -> F64:
    n = z.shape[0]
    return np.concatenate([np.ones((n, 1)), z, z * z], axis=1)  # `np.hstack`, without its checks


def _normal_equations(z: F64) -> tuple[F64, F64]:
    """The basis's Gram matrix phi'phi (1+2C, 1+2C) and phi'z (1+2C, C) over the rows of `z`, summed
    `CHUNK_ROWS` rows at a time: the (n, 1+2C) basis of a day's rows (12 MB at 8 signals), and the
    copy of it without the predicted channel's columns the fit took per channel, are never built.
    Sums over disjoint rows add up: cross-fitting sums its folds' figures instead of refitting."""
    n_ch = z.shape[1]
    gram = np.zeros((1 + 2 * n_ch, 1 + 2 * n_ch))
    cross = np.zeros((1 + 2 * n_ch, n_ch))
    for start in range(0, len(z), CHUNK_ROWS):
        part = z[start : start + CHUNK_ROWS]
        phi = _basis(part)
        gram += phi.T @ phi
        cross += phi.T @ part
    return gram, cross


def _solve_ridge(gram: F64, cross: F64, lam: float) -> F64:
    """Ridge coefficients (C, 1+2C) predicting each channel from the others, from the normal
    equations (`_normal_equations`): per channel, the rows and columns of the other channels'
    terms, the intercept not shrunk."""
    n_ch = cross.shape[1]
    coef = np.zeros((n_ch, gram.shape[0]))
    if n_ch < 2:
        return coef
    for c in range(n_ch):
        keep = np.ones(gram.shape[0], dtype=bool)
        keep[1 + c] = keep[1 + n_ch + c] = False
        reg = lam * np.eye(int(keep.sum()))
        reg[0, 0] = 0.0  # the intercept is not shrunk
        coef[c, keep] = np.linalg.solve(gram[np.ix_(keep, keep)] + reg, cross[keep, c])
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
    """(n, C, window, 2) inputs; the first rows see their series padded with its first sample.
    Written straight into the float32 array (no float64 copy of it, twice its size, on the way)."""
    padded_r = np.vstack([np.repeat(r[:1], window - 1, axis=0), r])
    padded_z = np.vstack([np.repeat(z[:1], window - 1, axis=0), z])
    out = np.empty((len(z), z.shape[1], window, 2), dtype=np.float32)
    for k, padded in enumerate((padded_r, padded_z)):
        view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, C, window)
        np.divide(view, INPUT_SCALE, out=out[..., k], casting="same_kind")  # in float64, then rounded
    return out


def trailing_mean(x: F64, w: int) -> F64:
    """Per column, the mean of the last `w` rows (fewer at the start). Two arrays the size of `x`
    at most (a week at 1 s of ten signals: 48 MB each)."""
    n = len(x)
    c = np.zeros((n + 1, *x.shape[1:]))
    np.cumsum(x, axis=0, dtype=np.float64, out=c[1:])
    out = np.empty(c[1:].shape)
    head = min(w - 1, n)  # the rows before the first full window: the mean of all rows so far
    np.divide(c[1 : head + 1], np.arange(1, head + 1)[:, None], out=out[:head])
    if n >= w:
        np.subtract(c[w:], c[: n + 1 - w], out=out[w - 1 :])
        out[w - 1 :] /= w
    return out


def level_stats(r: F64, w: int, mid: F64, sd: F64) -> F64:
    """(n, C) relation-arm statistic: how far each residual's trailing mean is from normal."""
    return np.asarray(np.abs(trailing_mean(r, w) - mid) / sd, dtype=np.float64)


def scorer_scores(model: Scorer, z: F64, r: F64, window: int) -> F64:
    """(n, C) scorer-arm scores, built `CHUNK_ROWS` rows at a time: the windows of a day of data at
    once would take ~450 MB."""
    out = np.empty(z.shape)
    for rows, ch in _scorer_chunks(model, z, r, window):
        out[rows] = ch
    return out


def _scorer_chunks(model: Scorer, z: F64, r: F64, window: int) -> Iterator[tuple[slice, F64]]:
    """`scorer_scores`, `CHUNK_ROWS` rows at a time: the rows and their (rows, C) scores."""
    for start in range(0, len(z), CHUNK_ROWS):
        lo = max(0, start - window + 1)
        stop = min(len(z), start + CHUNK_ROWS)
        ch = channel_scores(model, windows(z[lo:stop], r[lo:stop], window))
        yield slice(start, stop), ch[start - lo :]


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


def calibration_blocks(
    n: int, max_rows: int = MAX_CALIBRATION_ROWS, block_rows: int = CALIBRATION_BLOCK_ROWS
) -> list[tuple[int, int]]:
    """The rows of a stretch of `n` a calibration learns from, as `[start, stop)` blocks: all of
    them, as one block, up to `max_rows`; beyond, `max_rows // block_rows` contiguous blocks of
    equal length (at least `block_rows`, together at most `max_rows`), one in each of as many equal
    parts of the stretch, so the thinned rows span it evenly, as `max_clips` thins a machine's
    clips (`machine_sound.calibration`).

    Blocks, not every k-th row: calibration reads the rows' order. The scorer arm's windows are
    `window` (32) consecutive rows, the relation arm's statistic a trailing mean over
    `level_window` (30) rows, a missing cell carries the reading before it, and the frozen test
    counts runs of identical successive readings. Every k-th row would turn a 32 s window into
    one of 32 k seconds and a repeat of one reading into a change: thresholds learnt on rows the
    gateway never scores. Inside a block the rows are as the gateway sees them; `calibrate` treats
    each block's start as it treats the calibration's start (its first windows, still filling, are
    left out of the quantiles) and nothing reaches across blocks. The frozen test is counted on
    every row of the range instead (`FrozenCount`), not on the blocks: it needs the longest run,
    which thinning could cut.

    Block length (`CALIBRATION_BLOCK_ROWS`, 500): long against the 32-row window (6 % of a block's
    rows wait for their window and are left out of the quantiles), short against what a day holds:
    200 blocks at the cap, one every ~40 min of a 3-day range, every ~1.7 h of 14 days, so an hour
    of unusual but normal duty (a speed held at its limit) is sampled in proportion, as it is when
    every row is used. Measured on 3 days at 1 s with such an hour: thresholds within 3 % of those
    learnt on every row with blocks of 500 or 1,000 rows; with 2,000-row blocks (50) the hour fell
    between two blocks on two of three seeds, and the thresholds came out 40 to 87 % lower.

    Where each block sits in its part: at a fraction `frac(i * 0.618...)` of the part's free room
    (block 0 at the stretch's start), not at the same offset in every part. Evenly spaced blocks
    alias with the daily cycle: parts exactly a day long (a 200-day range) would put every block at
    one time of day, and calibration would see one operating point of a pump that follows demand.
    The golden-ratio offsets spread the blocks over the day whatever the parts' length, and are
    the same at every call (a calibration can be reproduced).
    """
    if n <= max_rows:
        return [(0, n)] if n > 0 else []
    count = max(1, max_rows // max(1, block_rows))
    length = max_rows // count
    part = n / count  # > length: n > max_rows >= count * length
    blocks = []
    for i in range(count):
        start = int(i * part + ((i * _GOLDEN) % 1.0) * (part - length))
        blocks.append((start, start + length))
    return blocks


def calibrate(
    x: npt.ArrayLike,
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
    starts: Sequence[int] = (0,),
    frozen: FrozenCount | None = None,
) -> Calibration:
    """Learn a pump's normal from `x` (rows of normal operation, NaN allowed; float32, the
    history's precision, or float64).

    `starts`: the rows of `x` where its contiguous blocks begin, when `x` is a long history thinned
    to blocks (`calibration_blocks`); windows, trailing means and missing cells carried forward do
    not reach across a block's start, and each block's first rows (windows still filling) are left
    out of the thresholds' quantiles, as the first rows of a calibration are. `frozen`: the frozen
    test's figures counted on every row the blocks were taken from, one per column of `x`
    (default: counted on `x`).

    Memory: besides `x`, two (rows, signals) float64 arrays (z-scores, residuals) and, while the
    relation arm's spread is learnt, a third with a block's trailing-mean sums; order statistics,
    ridge sums and the scorer's windows take a column or `CHUNK_ROWS` rows at a time. A day at 1 s
    of 8 signals, read from the history as float32: ~40 MiB at the peak (docs/pump-anomaly.md).
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_CALIBRATION_ROWS:
        raise CalibrationError(
            f"need at least {MIN_CALIBRATION_ROWS} calibration rows, got {x.shape[0] if x.ndim else 0}"
        )
    n = len(x)
    blocks = _blocks(starts, n)
    if frozen is not None and len(frozen.longest) != x.shape[1]:
        raise ValueError(f"frozen figures for {len(frozen.longest)} channels, the rows have {x.shape[1]}")
    center, scale = _centre_scale(x)
    tiny = 1e-9 * (np.abs(center) + 1.0)
    keep = np.isfinite(center) & np.isfinite(scale) & (scale > tiny)
    dropped = [c for c, k in zip(channels, keep, strict=True) if not k]
    if not keep.any():
        raise CalibrationError("no channel varies during calibration (all constant or empty)")
    columns = [int(c) for c in np.flatnonzero(keep)]
    names = [channels[c] for c in columns]
    center, scale = center[keep], scale[keep]
    z = _block_zscores(x, columns, center, scale, blocks)
    r, coef = _cross_fit(z, window)
    res_scale = np.empty(len(names))
    for c in range(len(names)):  # a column at a time: a median copies what it sorts
        col = r[:, c]
        med = np.median(col)
        mad = 1.4826 * np.median(np.abs(col - med))
        res_scale[c] = np.maximum(np.maximum(mad, 0.5 * col.std()), RESIDUAL_FLOOR)
    r /= res_scale
    np.clip(r, -CLIP, CLIP, out=r)
    factor = threshold_margin(n, window, margin, size_factor)

    # The quantiles leave out each block's first rows, whose windows are still filling (padded):
    # not typical.
    level_window = min(LEVEL_WINDOW, window)
    filled = [min(window, (hi - lo) // 4) for lo, hi in blocks]
    level_mid, level_sd, level = _level_arm(r, blocks, filled, level_window)
    level_threshold = factor * max(float(np.quantile(level, quantile)), 1e-6)
    scores = np.empty(len(level))
    at = 0
    for (lo, hi), skip in zip(blocks, filled, strict=True):
        best = np.empty(hi - lo)
        for rows, ch in _scorer_chunks(model, z[lo:hi], r[lo:hi], window):
            best[rows] = ch.max(axis=1)
        scores[at : at + hi - lo - skip] = best[skip:]
        at += hi - lo - skip
    q = float(np.quantile(scores, quantile))
    limits, shares, longest = frozen_limits(x) if frozen is None else frozen.limits()
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
        frozen_limit=[limits[c] for c in columns],
        repeat_share=[shares[c] for c in columns],
        longest_run=[longest[c] for c in columns],
    )


def _centre_scale(x: npt.NDArray[np.floating[Any]]) -> tuple[F64, F64]:
    """Per column of `x`, its median and robust scale; a column at a time (order statistics copy
    what they sort: one column, not the whole table)."""
    center, scale = np.empty(x.shape[1]), np.empty(x.shape[1])
    for c in range(x.shape[1]):
        col = x[:, c].astype(np.float64)
        col[~np.isfinite(col)] = np.nan
        center[c] = np.nanmedian(col)
        lo, q25, q75, hi = np.nanpercentile(col, [GLITCH_PCT, 25, 75, 100 - GLITCH_PCT])
        # The standard deviation (a pump with two duty points) over the central rows only: one
        # sensor glitch of 1000x in a day's calibration made the channel's scale 1000x too wide,
        # and a fault of that signal went unseen for as long as the calibration was in service.
        std = np.nanstd(np.clip(col, lo, hi, out=col))
        scale[c] = np.maximum(std, (q75 - q25) / 1.349)
    return center, scale


def _block_zscores(
    x: npt.NDArray[np.floating[Any]],
    columns: list[int],
    center: F64,
    scale: F64,
    blocks: list[tuple[int, int]],
) -> F64:
    """(n, len(columns)) z-scores of `x`'s `columns`, a missing cell carrying the value before it in
    its block (`_fill`), clipped to `CLIP`: one float64 array, filled a column at a time."""
    z = np.empty((len(x), len(columns)))
    for j, c in enumerate(columns):
        col = z[:, j]
        col[:] = x[:, c]
        col -= center[j]
        col /= scale[j]
        for lo, hi in blocks:
            _fill_column(col[lo:hi])
    np.clip(z, -CLIP, CLIP, out=z)
    return z


def _cross_fit(z: F64, window: int) -> tuple[F64, F64]:
    """The relations' cross-fitted residuals (n, C) and the coefficients fitted on all rows.

    Each fold's residuals come from a fit on the other folds. The ridge's normal equations are
    summed per fold once (`_normal_equations`); a fold's fit sums the other folds' figures."""
    n, n_ch = z.shape
    folds = 5 if n >= 10 * window else 2 if n >= 4 * (2 * n_ch + 1) else 1
    bounds = list(itertools.pairwise(np.linspace(0, n, folds + 1).astype(int).tolist()))
    sums = [_normal_equations(z[lo:hi]) for lo, hi in bounds]
    gram_all = np.sum([g for g, _ in sums], axis=0)
    cross_all = np.sum([b for _, b in sums], axis=0)
    coef = _solve_ridge(gram_all, cross_all, _lambda(n))
    oof = np.empty_like(z)
    for k, (lo, hi) in enumerate(bounds):
        coef_k = coef  # one fold: fitted on all rows
        if folds > 1:
            gram = np.sum([g for i, (g, _) in enumerate(sums) if i != k], axis=0)
            cross = np.sum([b for i, (_, b) in enumerate(sums) if i != k], axis=0)
            coef_k = _solve_ridge(gram, cross, _lambda(n - (hi - lo)))
        for start in range(lo, hi, CHUNK_ROWS):
            stop = min(hi, start + CHUNK_ROWS)
            oof[start:stop] = z[start:stop] - _basis(z[start:stop]) @ coef_k.T
    return oof, coef


def _level_arm(
    r: F64, blocks: list[tuple[int, int]], filled: list[int], level_window: int
) -> tuple[F64, F64, F64]:
    """The relation arm's centre and spread per channel (`level_mid`, `level_sd`) and its statistic
    (`level_stats`, the largest over channels) at each row past its block's first `filled`."""
    n_ch = r.shape[1]
    settled = np.empty((len(r) - sum(filled), n_ch))
    at = 0
    for (lo, hi), skip in zip(blocks, filled, strict=True):
        settled[at : at + hi - lo - skip] = trailing_mean(r[lo:hi], level_window)[skip:]
        at += hi - lo - skip
    mid, mad, std = np.empty(n_ch), np.empty(n_ch), np.empty(n_ch)
    for c in range(n_ch):
        col = settled[:, c]
        mid[c] = np.median(col)
        mad[c] = 1.4826 * np.median(np.abs(col - mid[c]))
        std[c] = 0.5 * col.std()
    sd = np.maximum.reduce([mad, std, np.full(n_ch, 1.0 / math.sqrt(level_window))])
    # `level_stats` of the settled rows, in place: how far each trailing mean is from normal.
    settled -= mid
    np.abs(settled, out=settled)
    settled /= sd
    return mid, sd, settled.max(axis=1)


def _blocks(starts: Sequence[int], n: int) -> list[tuple[int, int]]:
    """`calibrate`'s `starts` as `[start, stop)` blocks over `n` rows."""
    edges = sorted({int(s) for s in starts} | {0})
    if edges[-1] >= n or edges[0] < 0:
        raise ValueError(f"block starts {list(starts)[:5]}... outside the {n} rows")
    return list(itertools.pairwise([*edges, n]))


@dataclass(frozen=True, slots=True)
class Scored:
    """Per-sample pump scores, per-channel scores and residuals (for explanations)."""

    score: F64  # (n,) in units of the alarm level (above `Calibration.threshold`, 1, is abnormal)
    channel: F64  # (n, C) the same per channel
    residual: F64  # (n, C)
    run: F32  # (n, C) each reading's run of identical readings (`repeat_runs`)


def select(x: F64, channels: Sequence[str], cal: Calibration) -> F64:
    """The calibrated channels' columns of `x`, in calibration order (a view of `x` where they
    are its columns in order, as in a file whose every signal calibrated: no copy of a week)."""
    index = {name: i for i, name in enumerate(channels)}
    missing = [c for c in cal.channels if c not in index]
    if missing:
        raise ModelError(f"calibrated channels missing from the data: {', '.join(missing)}")
    columns = [index[c] for c in cal.channels]
    data = np.asarray(x, dtype=np.float64)
    if columns == list(range(columns[0], columns[0] + len(columns))):
        return data[:, columns[0] : columns[0] + len(columns)]
    return data[:, columns]


def score(x: F64, cal: Calibration, model: Scorer, runs: F32 | None = None) -> Scored:
    """Score rows of `x` whose columns are `cal.channels`, in order, `SCORE_CHUNK_ROWS` at a time:
    each piece with the rows before it that its trailing windows reach back to, so the figures are
    those of one piece, without a week of 1 Hz rows' temporaries at once (~220 MB).

    `runs` (n, C): each row's run of identical readings, from a caller that counts them from
    before `x` (the gateway scores a 32-row window; a frozen register's run is longer). Without
    it they are counted on `x` whole, before it is cut into pieces: a run reaches back further than
    any piece's look-back."""
    x = np.asarray(x, dtype=np.float64)
    if runs is None:
        runs, _ = repeat_runs(x)
    if len(x) <= SCORE_CHUNK_ROWS:
        return _score_rows(x, cal, model, runs)
    channel, residual = np.empty(x.shape), np.empty(x.shape)
    for rows, part, skip in _pieces(x, cal, model, runs):
        channel[rows], residual[rows] = part.channel[skip:], part.residual[skip:]
    return Scored(channel.max(axis=1), channel, residual, runs)


def score_series(x: F64, cal: Calibration, model: Scorer) -> tuple[F64, F32]:
    """`score`'s per-row scores and runs of identical readings, without the (n, C) per-channel
    scores and residuals it keeps for explanations: a week at 1 s of ten signals without ~110 MB
    of them (the offline command, unexplained)."""
    x = np.asarray(x, dtype=np.float64)
    runs, _ = repeat_runs(x)
    series = np.empty(len(x))
    for rows, part, skip in _pieces(x, cal, model, runs):
        series[rows] = part.score[skip:]
    return series, runs


def explain_rows(
    x: F64, cal: Calibration, model: Scorer, runs: F32, *, rows: npt.NDArray[np.intp], window: int
) -> Iterator[tuple[npt.NDArray[np.intp], F64, F64]]:
    """What explains the marked `rows` (ascending) of `x`, scored again only in the pieces of
    `SCORE_CHUNK_ROWS` that hold them (the offline command keeps no (n, C) figures of every row):
    per piece, its marked rows, their per-channel scores and each channel's mean residual over the
    `window` rows up to each (its sign: above or below the calibrated relation)."""
    x = np.asarray(x, dtype=np.float64)
    starts = np.unique(rows // SCORE_CHUNK_ROWS) * SCORE_CHUNK_ROWS
    for piece, part, skip in _pieces(x, cal, model, runs, starts=starts.tolist(), back=window - 1):
        at = rows[(rows >= piece.start) & (rows < piece.stop)]
        local = at - piece.start + skip
        mean = trailing_mean(np.nan_to_num(part.residual), window)
        yield at, part.channel[local], mean[local]


def _pieces(
    x: F64, cal: Calibration, model: Scorer, runs: F32, *, starts: list[int] | None = None, back: int = 0
) -> Iterator[tuple[slice, Scored, int]]:
    """`x` scored `SCORE_CHUNK_ROWS` rows at a time (those from `starts` only, when given): the rows
    each piece stands for, the piece's figures, and how many look-back rows at its start to skip
    (at least `back`)."""
    back = max(cal.window - 1, cal.level_window - 1, back)
    for start in range(0, len(x), SCORE_CHUNK_ROWS) if starts is None else starts:
        lo, stop = max(0, start - back), min(len(x), start + SCORE_CHUNK_ROWS)
        yield slice(start, stop), _score_rows(x[lo:stop], cal, model, runs[lo:stop]), start - lo


def score_latest(x: F64, cal: Calibration, model: Scorer, runs: F32) -> Scored:
    """`score(x, cal, model, runs)`'s figures for the last row of `x` only (`score` and `channel`
    of one row, `run` its runs; `residual` of every row, for the explanation): what the gateway
    needs after each sample. One scorer window (C model inputs) instead of one per row of `x`."""
    x = np.asarray(x, dtype=np.float64)
    z, r = _relation(x, cal)
    level = np.abs(r[-cal.level_window :].mean(axis=0) - np.asarray(cal.level_mid)) / np.asarray(cal.level_sd)
    inputs = np.empty((1, x.shape[1], cal.window, 2), dtype=np.float32)
    for k, series in enumerate((r, z)):
        tail = series[-cal.window :]
        if len(tail) < cal.window:  # as `windows`: padded with the first sample
            tail = np.vstack([np.repeat(tail[:1], cal.window - len(tail), axis=0), tail])
        inputs[0, :, :, k] = tail.T / INPUT_SCALE
    ch = _channel_figures(level[None], channel_scores(model, inputs), runs[-1:], cal)
    return Scored(ch.max(axis=1), ch, r, runs[-1:])


def _relation(x: F64, cal: Calibration) -> tuple[F64, F64]:
    """The z-scores of `x` and their relation residuals."""
    z = zscores(x, cal)
    r = residuals(
        z, np.asarray(cal.coef), np.asarray(cal.residual_scale), np.asarray(cal.z_low), np.asarray(cal.z_high)
    )
    return z, r


def _channel_figures(level: F64, scorer: F64, runs: F32, cal: Calibration) -> F64:
    """(n, C) per-channel scores in units of the alarm level, from the arms' raw figures."""
    ch = np.maximum(level / cal.level_threshold, scorer / cal.scorer_threshold)
    if cal.frozen_limit:  # a calibration written before the frozen test has none: scored as then
        ch = np.maximum(ch, frozen_scores(runs, cal.frozen_limit))
    return np.asarray(ch * cal.threshold, dtype=np.float64)


def _score_rows(x: F64, cal: Calibration, model: Scorer, runs: F32) -> Scored:
    z, r = _relation(x, cal)
    level = level_stats(r, cal.level_window, np.asarray(cal.level_mid), np.asarray(cal.level_sd))
    ch = _channel_figures(level, scorer_scores(model, z, r, cal.window), runs, cal)
    return Scored(ch.max(axis=1), ch, r, runs)


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
    *,
    run: npt.ArrayLike | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The channels driving a score and one sentence for an operator.

    `channel_score` is (C,) at the alarm; `residual_window` (w, C) the recent residuals whose mean
    sign says above or below normal, and the regression says normal relative to what. `run` (C,),
    the runs of identical readings at the alarm (`Scored.run`): a channel past its frozen limit is
    `frozen` ("flow frozen: the same value for 40 samples"), with `same_value_samples`.
    """
    words = words or {}
    n_ch = len(cal.channels)
    order = np.argsort(channel_score)[::-1][: max(1, min(top, n_ch))]
    limit = cal.threshold * 0.5
    chosen = [int(i) for i in order if channel_score[i] >= limit] or [int(order[0])]
    coef = np.asarray(cal.coef)
    mean_r = residual_window.mean(axis=0)
    runs = np.zeros(n_ch) if run is None else np.asarray(run, dtype=np.float64)
    frozen = cal.frozen(runs)
    signals: list[dict[str, Any]] = []
    for i in chosen:
        if frozen[i]:
            signals.append(_frozen_signal(cal, i, channel_score, runs))
            continue
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

    held = held_together(cal, runs)
    if held:
        return [_frozen_signal(cal, i, channel_score, runs) for i in held], _held_sentence(
            [say(cal.channels[i]) for i in held], int(runs[held].min())
        )
    parts = [
        f"{say(s['signal'])} frozen: the same value for {s['same_value_samples']} samples"
        for s in signals
        if s["direction"] == "frozen"
    ]
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


def _frozen_signal(cal: Calibration, i: int, channel_score: F64, runs: F64) -> dict[str, Any]:
    return {
        "signal": cal.channels[i],
        "score": round(float(channel_score[i]), 3),
        "direction": "frozen",
        "relative_to": None,
        "same_value_samples": int(runs[i]),
    }


def _held_sentence(names: list[str], run: int) -> str:
    if len(names) <= 4:
        listed = ", ".join(names[:-1]) + " and " + names[-1]
    else:
        listed = f"{', '.join(names[:3])} and {len(names) - 3} more"
    return (
        f"{listed} stopped changing at the same sample (the same values for {run} samples): readings "
        "held upstream (a PLC, a protocol gateway or a server answering from its cache), not "
        f"{len(names)} sensors failing at once"
    )
