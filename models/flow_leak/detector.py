"""Minimum night flow -> step changes: each new leak on top of the old ones is its own event.

Per night the district's minimum night flow (MNF, m3/h; pressure-corrected when a pressure tag is
given: MNF x (P_ref / P_night)^N1, the FAVAD exponent N1) goes into `StepDetector.update`. The
detector works on the **logarithm** of the MNF: a district's night use wanders by a share of itself,
so one noise figure holds at 20 m3/h and at 200, and a rise of x % is the same step at any level.

- **learning**: the first `baseline_nights` nights give the baseline (median of log MNF), the
  weekend offset (Friday and Saturday nights differ in most districts; learned when >= 2 of each
  were seen) and the district's own night-to-night noise sigma (1.4826 x MAD of the log residuals,
  at least `min_sigma_pct` %);
- **armed**: each night's standardised residual `z = (log MNF - expected) / sigma` feeds a
  one-sided CUSUM `S = max(0, S + min(z - k, CAP))` (one night adds at most `CAP` = 3 < h, so one
  odd night - a pool filled, a main flushed - never raises an event alone), with `k` half the
  smallest step worth reporting (in sigma: the largest of `min_added_pct` % of the baseline,
  `min_added_m3h` and `min_added_sigma` x sigma - a per-site threshold, so a noisy district reports
  only the rises it can tell from its noise). A rise is declared when `S >= h`. Its onset is the
  first night since the CUSUM last stood at zero that carried half of what the last three nights
  show, its size the median excess from the onset on. The baseline then **moves on** (re-anchored
  by the step) so the next leak is found on top of this one;
- sigma is **re-measured** every night over the last `sigma_nights` residuals (robustly, around
  their median, so a step in progress does not widen it): seasons change a district's noise;
- between rises the baseline **tracks** slow change (seasons, growth in the district) with an
  exponential average over `track_nights` of the residual clipped to +-k: a drift slower than
  k sigma per `track_nights` nights is followed, a step or a leak growing faster is not absorbed
  before the CUSUM declares it. A drop (a repair) found by the mirror CUSUM re-anchors it downwards;
- a **dip** (a drop with no leak reported in the `REPAIR_NIGHTS` before it: fewer people at home,
  a PRV set lower for some nights) that ends within `dip_return_nights` is no leak: the flow
  rising back to where it stood before the dip re-anchors the baseline without an event (counted
  in `returns`); a rise past that level by the smallest reported step is a leak as any other.

`FixedThreshold` is the plain rule utilities start with, kept as the reference to beat: an alarm
when MNF exceeds the calibration median by `rise_pct` %, a new onset each time it crosses upwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np

CAP = 3.0  # the most one night adds to the CUSUM (< h: one odd night never alarms alone)
REPAIR_NIGHTS = 90  # a drop within this many nights of a reported leak may be its repair


@dataclass(frozen=True)
class StepParams:
    baseline_nights: int = 14
    min_added_pct: float = 4.0  # smallest rise worth an event, % of the baseline
    min_added_m3h: float = 0.0  # ... and in m3/h (whichever is larger)
    min_added_sigma: float = 1.5  # ... and in the site's own night-to-night noise
    h: float = 6.0  # CUSUM decision interval, in sigma (chosen on dev seeds 100-139)
    min_sigma_pct: float = 1.0
    track_nights: int = 28
    sigma_nights: int = 56  # sigma is re-measured over the residuals of this many recent nights
    dip_return_nights: int = 28  # a rise within this many nights of a dip, back to its level, is no leak


@dataclass
class Night:
    """One night's figures and what the detector made of it (a row of the CLI's CSV)."""

    night: date
    night_flow: float | None
    baseline: float | None = None
    added: float | None = None
    event: Literal["leak", ""] = ""
    onset: date | None = None
    pressure: float | None = None

    def csv(self) -> str:
        def f(v: float | None) -> str:
            return "" if v is None else f"{v:.3f}"

        cells = (self.night.isoformat(), f(self.night_flow), f(self.baseline), f(self.added), self.event)
        return ",".join(cells)


def _weekend(night: date) -> bool:
    return night.weekday() in (4, 5)  # the nights after Friday and Saturday evenings


def _log(value: float) -> float:
    return math.log(max(value, 1e-9))


@dataclass
class StepDetector:
    """See the module docstring; `update` takes nights in order and returns the night's row.

    `level` (log m3/h), `weekend_offset` and `sigma` (both in log units, i.e. shares of the flow)
    describe the baseline; `baseline` is the weekday baseline in m3/h."""

    params: StepParams = field(default_factory=StepParams)
    learning: list[tuple[date, float]] = field(default_factory=list)
    level: float | None = None
    sigma: float | None = None
    weekend_offset: float = 0.0
    s_up: float = 0.0
    s_down: float = 0.0
    since_onset: list[tuple[date, float]] = field(default_factory=list)  # log excess while S > 0
    since_drop: list[float] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)  # the last `sigma_nights` log residuals
    rises: int = 0
    dip: tuple[date, float] | None = None  # the last drop's night and the level before it
    last_rise: date | None = None  # the night the last leak was reported
    returns: int = 0

    @property
    def state(self) -> str:
        return "learning" if self.level is None else "armed"

    @property
    def baseline(self) -> float | None:
        return None if self.level is None else math.exp(self.level)

    def _expected(self, night: date) -> float:
        assert self.level is not None
        return self.level + (self.weekend_offset if _weekend(night) else 0.0)

    def _learn(self) -> None:
        values = np.array([_log(v) for _, v in self.learning])
        weekend = np.array([_weekend(d) for d, _ in self.learning])
        offset = 0.0
        if weekend.sum() >= 2 and (~weekend).sum() >= 2:
            offset = float(np.median(values[weekend]) - np.median(values[~weekend]))
        adjusted = values - np.where(weekend, offset, 0.0)
        level = float(np.median(adjusted))
        mad = 1.4826 * float(np.median(np.abs(adjusted - level)))
        self.level, self.weekend_offset = level, offset
        self.sigma = max(mad, math.log1p(self.params.min_sigma_pct / 100))

    @property
    def min_step(self) -> float:
        """The smallest rise this site reports (m3/h): a noisy district only reports bigger ones."""
        return math.expm1(self._min_step_log()) * (self.baseline or 0.0)

    def _min_step_log(self) -> float:
        assert self.level is not None
        assert self.sigma is not None
        p = self.params
        base = math.exp(self.level)
        return max(
            math.log1p(p.min_added_pct / 100),
            math.log1p(p.min_added_m3h / base),
            p.min_added_sigma * self.sigma,
        )

    def update(self, night: date, value: float | None) -> Night:
        row = Night(night, value)
        if value is None or not math.isfinite(value) or value <= 0:
            row.night_flow = None if value is None or not math.isfinite(value) else value
            row.baseline = None if self.level is None else math.exp(self._expected(night))
            return row
        if self.level is None:
            self.learning.append((night, value))
            if len(self.learning) >= self.params.baseline_nights:
                self._learn()
            return row
        assert self.sigma is not None
        expected = self._expected(night)
        row.baseline = math.exp(expected)
        row.added = value - row.baseline
        excess = _log(value) - expected  # log units: the night's excess as a share of the baseline
        self._measure_noise(excess)
        z = excess / self.sigma
        k = 0.5 * self._min_step_log() / self.sigma
        self.s_up = max(0.0, self.s_up + min(z - k, CAP))
        self.s_down = max(0.0, self.s_down + min(-z - k, CAP))
        self.since_onset = [*self.since_onset, (night, excess)] if self.s_up > 0 else []
        self.since_drop = [*self.since_drop, excess] if self.s_down > 0 else []
        if self.s_up >= self.params.h:
            # The onset: the first night since the CUSUM left zero that carried half of what the
            # last nights show (a few ordinary nights may have started the sum); the step: the
            # median excess from the onset on (an odd night among them does not set the size).
            tail = float(np.median([e for _, e in self.since_onset[-3:]]))
            start = next(
                i
                for i, (_, e) in enumerate(self.since_onset)
                if e >= 0.5 * tail or i == len(self.since_onset) - 1
            )
            onset = self.since_onset[start][0]
            step = float(np.median([e for _, e in self.since_onset[start:]]))
            if self._returns_from_dip(night, step):
                self.returns += 1
            elif step >= 0.75 * self._min_step_log():
                row.event, row.onset = "leak", onset
                self.last_rise = night
                row.added = math.expm1(step) * math.exp(self.level)
                self.rises += 1
            # Either way the baseline moves on: the next leak is found on top of this one (a rise
            # too small to report, the rest of an underestimated step, is absorbed without an event).
            self.level += step
            self._reset()
        elif self.s_down >= self.params.h:
            # A repair (or less night use): follow the night flow down.
            repair = self.last_rise is not None and (night - self.last_rise).days <= REPAIR_NIGHTS
            self.dip = None if repair else (night, self.level)
            self.level += float(np.median(self.since_drop))
            self._reset()
        else:
            # Slow change is followed; a night's pull is clipped to k so that a step is not.
            self.level += min(max(excess, -k * self.sigma), k * self.sigma) / self.params.track_nights
        return row

    def _returns_from_dip(self, night: date, step: float) -> bool:
        """Whether a rise takes the night flow back to no more than where it stood before a dip
        of the last `dip_return_nights` nights (above it by less than the smallest rise reported).
        A drop within `REPAIR_NIGHTS` of a reported leak is no dip: it may be that leak's repair,
        and the flow rising back is the leak again (a failed repair) or a new one."""
        dip, self.dip = self.dip, None
        if dip is None or (night - dip[0]).days > self.params.dip_return_nights:
            return False
        assert self.level is not None
        return self.level + step - dip[1] < 0.75 * self._min_step_log()

    def _measure_noise(self, excess: float) -> None:
        """Night-to-night noise as the district shows it now (seasons change it): a robust spread
        of the recent residuals around their median, so a step in progress does not widen it."""
        n = self.params.sigma_nights
        self.recent = [*self.recent[-(n - 1) :], excess] if n > 0 else []
        if n > 0 and len(self.recent) >= n // 2:
            values = np.array(self.recent)
            mad = 1.4826 * float(np.median(np.abs(values - np.median(values))))
            self.sigma = max(mad, math.log1p(self.params.min_sigma_pct / 100))

    def _reset(self) -> None:
        self.s_up, self.s_down, self.since_onset, self.since_drop = 0.0, 0.0, [], []

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "log/2",
            "learning": [[d.isoformat(), v] for d, v in self.learning],
            "level": self.level,
            "sigma_log": self.sigma,
            "weekend_offset_log": self.weekend_offset,
            "s_up": self.s_up,
            "s_down": self.s_down,
            "since_onset": [[n.isoformat(), v] for n, v in self.since_onset],
            "since_drop": self.since_drop,
            "recent": self.recent,
            "rises": self.rises,
            "dip": None if self.dip is None else [self.dip[0].isoformat(), self.dip[1]],
            "last_rise": None if self.last_rise is None else self.last_rise.isoformat(),
            "returns": self.returns,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], params: StepParams) -> StepDetector:
        learning = [(date.fromisoformat(n), float(v)) for n, v in d.get("learning", [])]
        if d.get("format") != "log/2":
            # A state written before the detector worked on log flow: keep what was learned (the
            # baseline and its noise as shares of it); the sums in progress start again.
            base = d.get("baseline")
            out = cls(params=params, learning=learning, rises=int(d.get("rises", 0)))
            if base is not None and float(base) > 0:
                out.level = math.log(float(base))
                out.sigma = max(
                    float(d.get("sigma") or 0.0) / float(base), math.log1p(params.min_sigma_pct / 100)
                )
                out.weekend_offset = math.log1p(float(d.get("weekend_offset", 0.0)) / float(base))
            return out
        return cls(
            params=params,
            learning=learning,
            level=d.get("level"),
            sigma=d.get("sigma_log"),
            weekend_offset=float(d.get("weekend_offset_log", 0.0)),
            s_up=float(d.get("s_up", 0.0)),
            s_down=float(d.get("s_down", 0.0)),
            since_onset=[(date.fromisoformat(n), float(v)) for n, v in d.get("since_onset", [])],
            since_drop=[float(v) for v in d.get("since_drop", [])],
            recent=[float(v) for v in d.get("recent", [])],
            rises=int(d.get("rises", 0)),
            dip=None if not d.get("dip") else (date.fromisoformat(d["dip"][0]), float(d["dip"][1])),
            last_rise=None if not d.get("last_rise") else date.fromisoformat(d["last_rise"]),
            returns=int(d.get("returns", 0)),
        )


@dataclass
class FixedThreshold:
    """The reference rule: alarm while MNF > calibration median x (1 + rise_pct / 100)."""

    calibrate_nights: int = 14
    rise_pct: float = 20.0
    learning: list[float] = field(default_factory=list)
    threshold: float | None = None
    above: bool = False

    def update(self, night: date, value: float | None) -> Night:
        row = Night(night, value)
        if value is None or not math.isfinite(value):
            return row
        if self.threshold is None:
            self.learning.append(value)
            if len(self.learning) >= self.calibrate_nights:
                self.threshold = float(np.median(self.learning)) * (1 + self.rise_pct / 100)
            return row
        row.baseline = self.threshold
        row.added = value - self.threshold
        if value > self.threshold and not self.above:
            row.event, row.onset = "leak", night
        self.above = value > self.threshold
        return row
