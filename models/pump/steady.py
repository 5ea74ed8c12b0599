"""Scoring a file whose calibration is short and whose operating point is steady (a pump test bed).

What `edge-agent models score pump --csv` runs when calibration is shorter than an hour
(`models/pump/offline.py`); the live gateway and long calibrations keep the relation model and the
shared TFLite scorer (`detector.py`). With a few hundred calibration rows at one operating point,
a pump's normal is a small cloud: each channel's level and its noise. A fault moves a level (valve
closure: flow, pressure, current; a leak; drift: one sensor), changes a noise (cavitation: unsteady
flow and pressure; a stuck sensor: no noise at all) or both (imbalance, bearing wear: vibration).

Per channel, from the calibration rows only:

- robust z-scores (median, MAD; the scale never below the reading's resolution);
- *level* statistics: the trailing mean of z over a short and a long window (`level_windows`: the
  short one sees an abrupt change within seconds, the long one a small shift under noise),
  standardised by how far that mean may have wandered by now. Real signals wander (grid voltage,
  a slowly warming motor and fluid, a drifting transmitter), and a few hundred rows show only part
  of it: the typical change of the level over a lag is measured at several lags (no shorter than
  the window: overlapping means would read noise as wander), its growth with the lag
  extrapolated (`wander_lags`; a trend grows linearly, a random walk with the square root, steady
  noise not at all; the growth is measured once, on the short window, which has the most lags),
  and the spread allowed at a row is that growth at the row's distance from the calibration. A
  channel whose deviation is shrinking (a temperature cooling back after the fault is gone) does
  not count while it recovers;
- a *noise* statistic: the log of the trailing RMS of row-to-row changes, standardised the same
  way, two-sided (cavitation is louder, a frozen register silent).

Each statistic of each channel is divided by its own high quantile on the calibration rows (never
below `channel_floor`), so a channel with heavy tails (a transmitter read in coarse steps, a spiky
current clamp) does not raise the alarm level of the others; the row's score is the largest of
them, smoothed by a trailing median, over `factor`: above 1 is abnormal. Channel-agnostic: any
columns, any names. Parameters were chosen on the tuning runs of `models/train/pump_eval_rig.py`
and checked on those of `pump_eval_short.py` (docs/pump-anomaly.md).

`detect` raises the alarms and re-bases after an event (`SteadyParams.rebase`): once every channel
that passed the alarm level while the alarm was up is back (not only those that raised it: a fault
growing under an alarm a nuisance step raised is still going on), a channel the event left
displaced (a closed loop's fluid warmer, a drained tank's pressure lower) is normal anywhere between
its calibration level and where it settled. The level statistics then depend on the alarm state,
so `detect` runs row by row.

`backdate` and `trim_cleared` are for offline files only: once an alarm is confirmed, the rows
since its score began to rise (at most `backdate_max`) are marked too, and once it has cleared, the
rows it waited through below the hysteresis level are unmarked, so a history shows an anomaly from
where its evidence starts to where it ended rather than when a live gateway was sure of either.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from water_edge.models.pump.detector import Alarm, trailing_mean

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]

_MAD_TO_SD = 1.4826
_MEDIAN_ABS_DIFF_TO_SD = 0.6745 * math.sqrt(2.0)  # median |a - b| of two N(0, s) draws is this * s
UNSEEN_WANDER_EXP = 0.5


@dataclass(frozen=True, slots=True)
class SteadyParams:
    """Chosen on the tuning runs of `models/train/pump_eval_rig.py` (docs/pump-anomaly.md)."""

    level_windows: tuple[int, ...] = (15, 60)  # rows in the trailing means of each channel's z
    noise_window: int = 15  # rows in the trailing RMS of its row-to-row changes
    z_limit: float = 30.0  # readings count as at most max(this, 2 x calibration's largest) |z|
    use_noise: bool = True
    wander_lags: tuple[int, ...] = (30, 60, 120, 200)  # lags at which the level's change is measured
    smooth: int = 5  # trailing median of the score (rows)
    quantile: float = 0.99  # of each statistic on the calibration rows
    channel_floor: float = 2.5  # a statistic's calibration quantile never counts as less than this
    # Alarm level, in multiples of each statistic's calibration quantile: `factor` at
    # `reference_rows` of calibration, times (reference_rows / rows) ** 0.25 (fewer rows, less
    # trust in a quantile and in how far a level wanders), within `factor_range`.
    factor: float = 2.75
    reference_rows: int = 400
    factor_range: tuple[float, float] = (2.0, 3.5)
    recover_lag: int = 60  # a channel whose deviation shrank over this many rows is recovering...
    recover_by: float = 1.0  # ...by more than this many level spreads: its level does not count
    persistence: int = 5  # alarm: rows above the threshold to raise
    clear_after: int = 20  # rows below hysteresis x threshold to clear
    hysteresis: float = 0.8
    backdate_level: float = 0.5  # offline: an alarm's rows reach back while the score was above this...
    backdate_max: int = 60  # ...for at most this many rows
    # After an event (`detect`): once every channel that was above the alarm level at any time
    # during the alarm has come back to within `rebase_frac` of its largest deviation during it
    # for `rebase_settle` rows, the experiment is over; a channel then still (or later) above the
    # hysteresis level takes the span between its calibration level and its present level as
    # normal, once per event (a closed loop's fluid stays warmer, a drained tank's pressure lower:
    # the rig settles somewhere new).
    rebase: bool = True
    rebase_settle: int = 15
    rebase_frac: float = 0.33


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
    """Robust per-column spread: the larger of MAD and half the standard deviation."""
    med = np.median(v, axis=0)
    mad = _MAD_TO_SD * np.median(np.abs(v - med), axis=0)
    return np.asarray(np.maximum(mad, 0.5 * v.std(axis=0)), dtype=np.float64)


@dataclass
class LevelModel:
    """One level window's normal: centre and spread of the trailing mean, and how it wanders."""

    window: int
    mid: F64
    sd: F64
    wander_sd: F64  # the level's typical change over `wander_lag` rows, as a spread
    wander_lag: int
    wander_exp: F64  # growth of that change with the lag: 0 steady, 0.5 random walk, 1 trend

    def column(self, c: int) -> LevelModel:
        """This window's normal of channel `c` alone (one-column arrays): a re-based channel's
        statistic is recomputed without the others'."""
        one = slice(c, c + 1)
        return replace(
            self,
            mid=self.mid[one],
            sd=self.sd[one],
            wander_sd=self.wander_sd[one],
            wander_exp=self.wander_exp[one],
        )

    def allowed(self, horizon: F64) -> F64:
        """The spread allowed at rows `horizon` rows from the calibration's middle."""
        h = np.maximum(horizon, self.wander_lag)[:, None]
        out = np.asarray((h / self.wander_lag) ** self.wander_exp, dtype=np.float64)
        out *= self.wander_sd  # in place: a week at 1 s is 40 MB a temporary
        return np.maximum(self.sd, out, out=out)

    @classmethod
    def fit(cls, z: F64, window: int, lags: tuple[int, ...], exp: F64 | None = None) -> LevelModel:
        """`exp` given: use that growth (measured on a shorter window, which has more lags to see
        it) instead of this window's own estimate."""
        n = len(z)
        level = trailing_mean(z, window)[min(window, n // 4) :]
        mid = np.median(level, axis=0)
        sd = np.maximum(_spread(level), 1.0 / math.sqrt(window))
        # lags shorter than the window compare overlapping means: they would read noise as wander
        usable = [lag for lag in lags if window <= lag < len(level) // 2] or [max(1, len(level) // 3)]
        change = np.array([np.median(np.abs(level[lag:] - level[:-lag]), axis=0) for lag in usable])
        change = np.maximum(change, 1e-9)
        if exp is None:
            # too short to see how the level wanders: assume a random walk rather than none
            exp = np.full(z.shape[1], UNSEEN_WANDER_EXP)
            if len(usable) > 1:
                lx = np.log(np.asarray(usable, dtype=np.float64))
                lx -= lx.mean()
                ly = np.log(change)
                exp = (lx[:, None] * (ly - ly.mean(axis=0))).sum(axis=0) / float((lx * lx).sum())
        return cls(window, mid, sd, change[0] / _MEDIAN_ABS_DIFF_TO_SD, usable[0], np.clip(exp, 0.0, 1.0))


@dataclass
class SteadyModel:
    params: SteadyParams
    center: F64
    scale: F64
    levels: list[LevelModel]
    noise_eps: F64
    noise_mid: F64
    noise_sd: F64
    n_calibration: int
    factor: float
    quantiles: list[F64] = field(default_factory=list)  # per statistic, per channel
    z_limit: F64 | None = None  # per channel, |z| beyond this counts as this much (see `fit`)

    def z(self, x: F64) -> F64:
        """Robust z-scores of rows `x`, gaps filled, clipped at `z_limit`."""
        limit = 1e3 if self.z_limit is None else self.z_limit
        z = _fill(x)
        with np.errstate(over="ignore"):  # an error code such as 1e308 is inf here, then clipped
            z -= self.center
            z /= self.scale
        return np.clip(z, -limit, limit, out=z)

    def level_statistic(
        self, lm: LevelModel, level: F64, mid: F64, horizon: F64, other: F64 | None = None
    ) -> F64:
        """How far a window's trailing mean `level` is from `mid` (or from the span between `mid`
        and `other`), in allowed spreads."""
        if other is None:
            dev = np.subtract(level, mid)
            np.abs(dev, out=dev)
        else:
            lo, hi = np.minimum(mid, other), np.maximum(mid, other)
            dev = np.maximum(0.0, np.maximum(lo - level, level - hi))
        back = self.recovering(lm, dev)
        dev /= lm.allowed(horizon)  # now in allowed spreads
        dev[back] = 0.0
        return dev

    def recovering(self, lm: LevelModel, dev: F64) -> npt.NDArray[np.bool_]:
        """Rows where a channel's deviation shrank by `recover_by` spreads over `recover_lag`."""
        p = self.params
        lag = p.recover_lag
        back = np.zeros_like(dev, dtype=bool)
        if lag > 0 and len(dev) > lag:
            back[lag:] = dev[lag:] < dev[:-lag] - p.recover_by * lm.sd
        return back

    def column(self, c: int) -> SteadyModel:
        """The normal of channel `c` alone (one-column arrays), for its statistics on `x[:, c:c+1]`."""
        one = slice(c, c + 1)
        return replace(
            self,
            center=self.center[one],
            scale=self.scale[one],
            levels=[lm.column(c) for lm in self.levels],
            noise_eps=self.noise_eps[one],
            noise_mid=self.noise_mid[one],
            noise_sd=self.noise_sd[one],
            quantiles=[q[one] for q in self.quantiles],
            z_limit=None if self.z_limit is None else self.z_limit[one],
        )

    def statistics(self, x: F64) -> Iterator[F64]:
        """Each statistic (the level windows, then noise) as rows x channels, unnormalised, one at
        a time (a week at 1 s holds each as 40 MB)."""
        z = self.z(x)
        horizon = np.arange(len(z), dtype=np.float64) - self.n_calibration / 2
        for lm in self.levels:
            yield self.level_statistic(lm, trailing_mean(z, lm.window), lm.mid, horizon)
        if self.params.use_noise:
            yield self.noise_statistic(z)

    def noise_statistic(self, z: F64) -> F64:
        """How far the log noise of z-scores `z` is from calibration's, in its spreads."""
        noise = self._log_noise(z)
        noise -= self.noise_mid
        np.abs(noise, out=noise)
        noise /= self.noise_sd
        return noise

    def _log_noise(self, z: F64) -> F64:
        d = np.zeros_like(z)  # row-to-row changes, squared, then their trailing RMS: in place
        np.subtract(z[1:], z[:-1], out=d[1:])
        d *= d
        rms = trailing_mean(d, self.params.noise_window)
        del d
        np.sqrt(rms, out=rms)
        rms += self.noise_eps
        return np.log(rms, out=rms)

    def directions(self, x: F64, rows: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.int8]:
        """Which way each statistic moved at `rows` of `x` (every row without), +1 or -1, 0 exactly
        at its middle (statistics x rows x channels, as `statistic_scores`): a level above or below
        its calibration middle, a noise larger or smaller than calibration's."""
        z = self.z(x)
        at = slice(None) if rows is None else rows
        out = [np.sign(trailing_mean(z, lm.window)[at] - lm.mid).astype(np.int8) for lm in self.levels]
        if self.params.use_noise:
            out.append(np.sign(self._log_noise(z)[at] - self.noise_mid).astype(np.int8))
        return np.stack(out)

    def statistic_scores(self, x: F64) -> F64:
        """Each statistic in units of the alarm level: statistics x rows x channels (unsmoothed),
        filled one statistic at a time."""
        k = len(self.levels) + int(self.params.use_noise)
        out = np.empty((k, *np.shape(x)))
        statistics = self.statistics(x)
        for i, q in enumerate(self.quantiles):
            s = next(statistics)  # not through zip: its reused tuple would keep `s` while the next is made
            np.divide(s, q, out=out[i])
            out[i] /= self.factor
            del s
        return out

    def channel_scores(self, x: F64) -> F64:
        """Per row and channel, the largest statistic in units of the alarm level (unsmoothed),
        without holding every statistic at once."""
        out: F64 | None = None
        statistics = self.statistics(x)
        for q in self.quantiles:
            s = next(statistics)
            s /= q
            s /= self.factor
            out = s if out is None else np.maximum(out, s, out=out)
            del s
        assert out is not None
        return out

    def score(self, x: F64) -> F64:
        """Per-row score in units of the alarm level (above 1: abnormal)."""
        return _trailing_median(self.channel_scores(x).max(axis=1), self.params.smooth)


def alarm_factor(rows: int, p: SteadyParams) -> float:
    """The alarm level over each statistic's calibration quantile for `rows` of calibration."""
    lo, hi = p.factor_range
    return float(min(hi, max(lo, p.factor * (p.reference_rows / max(1, rows)) ** 0.25)))


def fit(x: F64, params: SteadyParams | None = None) -> SteadyModel:
    """Learn the normal of calibration rows `x` (rows x channels, NaN allowed, no constant column:
    `offline.usable` drops those first)."""
    p = params or SteadyParams()
    x = np.asarray(x, dtype=np.float64)
    n, n_ch = x.shape
    center = np.nanmedian(x, axis=0)
    mad = _MAD_TO_SD * np.nanmedian(np.abs(x - center), axis=0)
    q75, q25 = np.nanpercentile(x, [75, 25], axis=0)
    res = np.array([_resolution(x[:, c]) for c in range(n_ch)])
    scale = np.maximum.reduce([mad, (q75 - q25) / 1.349, res, 1e-9 * (np.abs(center) + 1.0)])
    z = (_fill(x) - center) / scale
    # A reading far beyond anything calibration saw (an error code such as -9999, a unit glitch)
    # counts as `z_limit` calibration spreads: still far out, but three such rows cannot hold a
    # 60-row mean, and so an alarm, up for a minute. 10 was tried and cut real shifts late in a
    # run, where the allowed wander has grown (bearing wear, tuning set); 30 changes no simulated
    # figure.
    z_limit = np.maximum(p.z_limit, 2.0 * np.max(np.abs(z), axis=0))
    # How a channel wanders is measured once, on the shortest window (the most lags beyond it).
    windows = sorted(p.level_windows)
    first = LevelModel.fit(z, windows[0], p.wander_lags)
    by_window = {windows[0]: first} | {
        w: LevelModel.fit(z, w, p.wander_lags, first.wander_exp) for w in windows[1:]
    }
    levels = [by_window[w] for w in p.level_windows]
    # Row-to-row changes: a channel that never moves in calibration still has its resolution as noise.
    skip = min(max(*p.level_windows, p.noise_window), n // 4)  # windows still filling
    d = np.vstack([np.zeros((1, n_ch)), np.diff(z, axis=0)])
    noise_eps = np.maximum(res / scale, 1e-3) / math.sqrt(p.noise_window)
    lr = np.log(np.sqrt(trailing_mean(d * d, p.noise_window)) + noise_eps)[skip:]
    model = SteadyModel(
        p,
        center,
        scale,
        levels,
        noise_eps,
        np.median(lr, axis=0),
        np.maximum(_spread(lr), 0.5 / math.sqrt(p.noise_window)),
        n_calibration=n,
        factor=alarm_factor(n, p),
        z_limit=z_limit,
    )
    model.quantiles = [
        np.maximum(np.quantile(s[skip:], p.quantile, axis=0), p.channel_floor) for s in model.statistics(x)
    ]
    return model


def backdate(scores: F64, alarm: I8, level: float, max_rows: int) -> I8:
    """Offline: extend each alarm back over the rows just before it whose score was above `level`
    (at most `max_rows`): where the evidence for it began."""
    out = alarm.copy()
    starts = np.flatnonzero(np.diff(np.concatenate([[0], alarm.astype(np.int64)])) == 1)
    for start in starts:
        t = int(start)
        while t > 0 and start - t < max_rows and scores[t - 1] >= level and out[t - 1] == 0:
            t -= 1
        out[t:start] = 1
    return out


def trim_cleared(scores: F64, alarm: I8, level: float) -> I8:
    """Offline: end each alarm that cleared where its score last fell below `level` (the rows the
    live alarm waited through before clearing are unmarked); one still active at the end stays."""
    out = alarm.copy()
    ends = np.flatnonzero(np.diff(np.concatenate([alarm.astype(np.int64), [0]])) == -1)
    for end in ends:
        if end == len(out) - 1:
            continue
        t = int(end)
        while t >= 0 and out[t] == 1 and scores[t] < level:
            out[t] = 0
            t -= 1
    return out


def detect(model: SteadyModel, x: F64, start: int) -> tuple[F64, I8]:
    """Per-row scores and live (causal) alarms from row `start` on, re-basing channels after an
    event (`SteadyParams.rebase`): the state of the alarm decides the statistics, so this runs row
    by row, recomputing a channel's level statistics from the row it is re-based at."""
    score, alarm, _ = detect_per_statistic(model, x, start, keep=False)
    return score, alarm


def detect_per_statistic(
    model: SteadyModel, x: F64, start: int, *, keep: bool = True
) -> tuple[F64, I8, F64 | None]:
    """`detect`, and (`keep`) what it judged: each statistic in units of the alarm level
    (statistics x rows x channels; the level windows in `model.levels` order, then noise), after
    re-basing. Without `keep` only their largest per row and channel is held (a week at 1 s with
    three statistics: 80 MB less)."""
    p = model.params
    n = len(x)
    per = model.statistic_scores(x) if keep else None
    ch = per.max(axis=0) if per is not None else model.channel_scores(x)  # in units of the alarm level
    score = _trailing_median(ch.max(axis=1), p.smooth)
    z = model.z(x)  # a channel's level windows are computed again from it when it is re-based
    out = np.zeros(n, dtype=np.int8)
    alarm = Alarm(p.persistence, p.clear_after, p.hysteresis)
    n_ch = z.shape[1]
    shortest = int(np.argmin([lm.window for lm in model.levels]))
    back = np.zeros((n, n_ch), dtype=bool)
    dev: F64 = np.empty(0)  # how far each channel's shortest level is from its middle, in z
    for k, lm in enumerate(model.levels):
        away = trailing_mean(z, lm.window)
        away -= lm.mid
        back |= model.recovering(lm, np.abs(away, out=away))
        if k == shortest:
            dev = away
        del away
    raisers = np.zeros(n_ch, dtype=bool)
    peak = np.zeros(n_ch)
    settled = np.zeros(n_ch, dtype=np.int64)
    used = np.zeros(n_ch, dtype=bool)
    over = False  # the last event's raisers have come back
    for t in range(start, n):
        if alarm.update(float(score[t]), 1.0) is True:
            raisers = np.asarray((ch[max(start, t - p.persistence + 1) : t + 1] >= 1.0).any(axis=0))
            peak, over = dev[t].copy(), False
            settled[:] = 0
            used[:] = False
        if alarm.active:
            # a channel that passes the alarm level at any time during the alarm is a raiser too:
            # a fault growing under an alarm a nuisance channel raised keeps the event open
            raisers |= ch[t] >= 1.0
            peak = np.maximum(peak, dev[t])
            settled = np.where(dev[t] <= p.rebase_frac * peak, settled + 1, 0)
            over = bool(raisers.any() and (settled[raisers] >= p.rebase_settle).all())
        if p.rebase and over:
            # a channel recovering towards calibration is already not counted (`recovering`)
            moved = (ch[t] >= p.hysteresis) & ~used & (alarm.active | ~back[t])
            horizon = np.arange(t, n, dtype=np.float64) - model.n_calibration / 2
            for c in np.flatnonzero(moved):
                ch[t:, c] = _rebased(model, z, int(c), t, horizon, per=per)
                back[t:, c] = False
                used[c] = True
            if moved.any():
                lo = max(0, t - p.smooth + 1)  # the rows the median at row t reaches back to
                score[t:] = _trailing_median(ch[lo:].max(axis=1), p.smooth)[t - lo :]
        out[t] = alarm.active
    return score, out, per


def _rebased(model: SteadyModel, z: F64, c: int, t: int, horizon: F64, *, per: F64 | None) -> F64:
    """Channel `c`'s score from row `t` on once re-based there: its level statistics judged against
    the span between its calibration level and its level at `t` (written into `per` when kept),
    its noise statistic as it was. `horizon`: the rows' distances from the calibration, from `t` on."""
    one = model.column(c)
    zc = z[:, c : c + 1]
    scores = []
    for k, lm in enumerate(one.levels):
        level = trailing_mean(zc, lm.window)
        a = model.level_statistic(lm, level[t:], lm.mid, horizon, level[t])
        a = a[:, 0] / model.quantiles[k][c] / model.factor
        if per is not None:
            per[k, t:, c] = a
        scores.append(a)
    if model.params.use_noise:
        scores.append(one.noise_statistic(zc)[t:, 0] / model.quantiles[-1][c] / model.factor)
    return np.asarray(np.max(scores, axis=0), dtype=np.float64)
