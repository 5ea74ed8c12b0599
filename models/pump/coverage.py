"""Does the calibration cover what is scored? The check `edge-agent models score pump --csv` runs.

A pump detector learns the normal of the operating points its calibration rows show. Rows scored at
an operating point it never saw (the flow or speed moved out of the calibrated range, as a day's
demand moves it) score as anomalous because they are *unlike the calibration*, not because the
pump is faulty: on a fault-free simulated hour whose demand falls, 400 calibration rows mark about
60 % of the rest anomalous. The operating point is read from the columns whose names say flow or
speed; a file without such columns is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPERATING_WORDS = ("flow", "speed", "rpm", "frequency")
MAX_OUTSIDE_SHARE = 0.05  # more scored rows than this outside the calibrated range: warn
# A calibrated range is widened by this share of its span plus this share of its level: noise
# around one operating point must not count as leaving it.
PAD_SPAN, PAD_LEVEL = 0.25, 0.01


@dataclass(frozen=True)
class ColumnRange:
    name: str
    calibrated: tuple[float, float]
    scored: tuple[float, float]


@dataclass(frozen=True)
class Coverage:
    """Scored rows outside the calibrated operating range, and the first-rows count that would cover."""

    outside: int
    scored: int
    columns: tuple[ColumnRange, ...]
    covering_rows: int | None  # smallest --calibrate-rows whose range covers the rest; None: none does

    @property
    def share(self) -> float:
        return self.outside / self.scored if self.scored else 0.0

    def poor(self) -> bool:
        return self.share > MAX_OUTSIDE_SHARE

    def message(self, calibrate_rows: int) -> str:
        ranges = "; ".join(
            f"{c.name} {c.scored[0]:.4g}..{c.scored[1]:.4g} scored, "
            f"{c.calibrated[0]:.4g}..{c.calibrated[1]:.4g} in calibration"
            for c in self.columns
        )
        what = (
            f"--calibrate-rows {self.covering_rows} would cover this file"
            if self.covering_rows is not None
            else "no first rows of this file cover the rest: calibrate on history that spans the pump's duty"
        )
        return (
            f"{self.outside:,} of {self.scored:,} scored rows ({self.share:.0%}) are at an operating point "
            f"the first {calibrate_rows:,} rows did not cover ({ranges}); anomalies there mean 'unlike the "
            f"calibration', not a fault. {what} (on a gateway: a day of normal duty, auto_hours = 24)"
        )


def operating_columns(names: list[str]) -> list[int]:
    return [j for j, name in enumerate(names) if any(w in name.lower() for w in OPERATING_WORDS)]


def _outside(values: np.ndarray, calibrate_rows: int) -> np.ndarray:
    """Per scored row: True when any operating column is outside its widened calibrated range."""
    cal, rest = values[:calibrate_rows], values[calibrate_rows:]
    out = np.zeros(len(rest), dtype=bool)
    for j in range(values.shape[1]):
        col = cal[np.isfinite(cal[:, j]), j]
        if col.size < 2:
            continue
        lo, hi = float(np.percentile(col, 0.5)), float(np.percentile(col, 99.5))
        pad = PAD_SPAN * (hi - lo) + PAD_LEVEL * abs(float(np.median(col)))
        x = rest[:, j]
        out |= np.isfinite(x) & ((x < lo - pad) | (x > hi + pad))
    return out


def check(values: np.ndarray, names: list[str], calibrate_rows: int) -> Coverage | None:
    """The coverage of the rows after `calibrate_rows` by the rows before; None without an
    operating-point column or rows to score."""
    cols = operating_columns(names)
    n = values.shape[0]
    if not cols or calibrate_rows >= n:
        return None
    x = values[:, cols]
    outside = _outside(x, calibrate_rows)
    ranges = []
    for k, j in enumerate(cols):
        cal, rest = x[:calibrate_rows, k], x[calibrate_rows:, k]
        cal, rest = cal[np.isfinite(cal)], rest[np.isfinite(rest)]
        if cal.size and rest.size:
            ranges.append(
                ColumnRange(
                    names[j], (float(cal.min()), float(cal.max())), (float(rest.min()), float(rest.max()))
                )
            )
    covering = None
    if outside.mean() > MAX_OUTSIDE_SHARE:
        step = max(100, n // 50)
        for rows in range(calibrate_rows + step, n - n // 10 + 1, step):
            if _outside(x, rows).mean() <= MAX_OUTSIDE_SHARE:
                covering = rows
                break
    return Coverage(int(outside.sum()), n - calibrate_rows, tuple(ranges), covering)
