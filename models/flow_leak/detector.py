"""Minimum night flow -> step changes: each new leak on top of the old ones is its own event.

Per night the district's minimum night flow (MNF, m3/h; pressure-corrected when a pressure tag is
given: MNF x (P_ref / P_night)^N1, the FAVAD exponent N1) goes into `StepDetector.update`:

- **learning**: the first `baseline_nights` nights give the baseline (median), the night-to-night
  noise sigma (1.4826 x MAD, at least `min_sigma_pct` % of the baseline) and the weekend offset
  (Friday and Saturday nights differ in most districts; learned when >= 2 of each were seen);
- **armed**: a one-sided CUSUM of the standardised excess, S = max(0, S + min(d / sigma - k, 3))
  with k = half the smallest step worth reporting (the largest of `min_added_pct` % of the
  baseline, `min_added_m3h` and `min_added_sigma` x sigma: a per-site threshold, so a noisy
  district reports only the rises it can tell from its noise), declares a rise when S >= h.
  One night adds at most 3 so a single odd night (a pool filled, a main flushed) cannot raise
  an event alone. The added flow is the median excess of the last three nights, the onset the
  first night that carried half of it. The baseline then **moves on** to include the new leak, so
  the next one is found on top of it;
- between rises the baseline follows slow change (seasons, growth) with an exponential average
  over `track_nights`, but only on nights that show no sign of a rise (S == 0); a drop (a repair)
  found by the mirror CUSUM resets it downwards.

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


@dataclass(frozen=True)
class StepParams:
    baseline_nights: int = 14
    min_added_pct: float = 4.0  # smallest rise worth an event, % of the baseline
    min_added_m3h: float = 0.0  # ... and in m3/h (whichever is larger)
    min_added_sigma: float = 1.5  # ... and in the site's own night-to-night noise
    h: float = 7.0  # CUSUM decision interval, in sigma (chosen on dev seeds 100-105)
    min_sigma_pct: float = 1.0
    track_nights: int = 28


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


@dataclass
class StepDetector:
    """See the module docstring; `update` takes nights in order and returns the night's row."""

    params: StepParams = field(default_factory=StepParams)
    learning: list[tuple[date, float]] = field(default_factory=list)
    baseline: float | None = None
    sigma: float | None = None
    weekend_offset: float = 0.0
    s_up: float = 0.0
    s_down: float = 0.0
    onset: date | None = None
    since_onset: list[tuple[date, float]] = field(default_factory=list)  # excess per night while S > 0
    rises: int = 0

    @property
    def state(self) -> str:
        return "learning" if self.baseline is None else "armed"

    def _expected(self, night: date) -> float:
        assert self.baseline is not None
        return self.baseline + (self.weekend_offset if _weekend(night) else 0.0)

    def _learn(self) -> None:
        values = np.array([v for _, v in self.learning])
        weekend = np.array([_weekend(d) for d, _ in self.learning])
        offset = 0.0
        if weekend.sum() >= 2 and (~weekend).sum() >= 2:
            offset = float(np.median(values[weekend]) - np.median(values[~weekend]))
        adjusted = values - np.where(weekend, offset, 0.0)
        base = float(np.median(adjusted))
        mad = 1.4826 * float(np.median(np.abs(adjusted - base)))
        self.baseline, self.weekend_offset = base, offset
        self.sigma = max(mad, self.params.min_sigma_pct / 100 * abs(base), 1e-9)

    def _k(self) -> float:
        assert self.baseline is not None
        assert self.sigma is not None
        return 0.5 * self.min_step / self.sigma

    @property
    def min_step(self) -> float:
        """The smallest rise this site reports (m3/h): a noisy district only reports bigger ones."""
        assert self.baseline is not None
        assert self.sigma is not None
        p = self.params
        return max(
            p.min_added_pct / 100 * abs(self.baseline), p.min_added_m3h, p.min_added_sigma * self.sigma
        )

    def update(self, night: date, value: float | None) -> Night:
        row = Night(night, value)
        if value is None or not math.isfinite(value):
            row.night_flow = None
            row.baseline = None if self.baseline is None else self._expected(night)
            return row
        if self.baseline is None:
            self.learning.append((night, value))
            if len(self.learning) >= self.params.baseline_nights:
                self._learn()
            return row
        assert self.sigma is not None
        expected = self._expected(night)
        row.baseline = expected
        d = (value - expected) / self.sigma
        k = self._k()
        if self.s_up == 0.0:
            self.onset, self.since_onset = night, []
        self.s_up = max(0.0, self.s_up + min(d - k, CAP))
        self.s_down = max(0.0, self.s_down + min(-d - k, CAP))
        if self.s_up > 0:
            self.since_onset.append((night, value - expected))
        else:
            self.onset, self.since_onset = None, []
        row.added = value - expected
        if self.s_up >= self.params.h and self.since_onset:
            # The rise as the last nights show it (a quiet night or two before the step may have
            # started the sum), and its onset: the first night that carried half of it.
            added = float(np.median([v for _, v in self.since_onset[-3:]]))
            onset = next((n for n, v in self.since_onset if v >= 0.5 * added), self.since_onset[-1][0])
            if added >= 0.75 * self.min_step:
                row.event, row.onset, row.added = "leak", onset, added
                self.rises += 1
            # Either way the baseline moves on: the next leak is found on top of this one (a rise
            # too small to report, the rest of an underestimated step, is absorbed without an event).
            self.baseline += added
            self.s_up, self.s_down, self.onset, self.since_onset = 0.0, 0.0, None, []
        elif self.s_down >= self.params.h:
            # A repair: follow the night flow down.
            self.baseline = value - (self.weekend_offset if _weekend(night) else 0.0)
            self.s_up, self.s_down = 0.0, 0.0
        elif self.s_up == 0.0:
            alpha = 1.0 / self.params.track_nights
            self.baseline += alpha * (value - expected)
        return row

    def to_dict(self) -> dict[str, Any]:
        return {
            "learning": [[d.isoformat(), v] for d, v in self.learning],
            "baseline": self.baseline,
            "sigma": self.sigma,
            "weekend_offset": self.weekend_offset,
            "s_up": self.s_up,
            "s_down": self.s_down,
            "onset": None if self.onset is None else self.onset.isoformat(),
            "since_onset": [[n.isoformat(), v] for n, v in self.since_onset],
            "rises": self.rises,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], params: StepParams) -> StepDetector:
        return cls(
            params=params,
            learning=[(date.fromisoformat(n), float(v)) for n, v in d.get("learning", [])],
            baseline=d.get("baseline"),
            sigma=d.get("sigma"),
            weekend_offset=float(d.get("weekend_offset", 0.0)),
            s_up=float(d.get("s_up", 0.0)),
            s_down=float(d.get("s_down", 0.0)),
            onset=None if d.get("onset") is None else date.fromisoformat(d["onset"]),
            since_onset=[(date.fromisoformat(n), float(v)) for n, v in d.get("since_onset", [])],
            rises=int(d.get("rises", 0)),
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
