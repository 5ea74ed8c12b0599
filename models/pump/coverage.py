"""Does the calibration cover what is scored? The check `edge-agent models score pump --csv` runs.

A pump detector learns the normal of the operating points its calibration rows show. Rows scored at
an operating point it never saw (the flow or speed moved out of the calibrated range, as a day's
demand moves it) score as anomalous because they are unlike the calibration: on a fault-free
simulated hour whose demand falls, 400 calibration rows mark about 60 % of the rest anomalous. But a
fault can move the operating point too (an outlet valve closing, a leak on the discharge), so rows
outside the range may just as well be the fault itself: the warning says both, and when it names
the first rows that would cover the file it says which rows that takes into the calibration, which
must be normal duty (calibrated on a simulated valve closure, the closure is marked nowhere).

The operating point is read from the columns whose names say flow or speed; a file without such
columns is not checked. The other signals are not: a fault moves them (that is what is scored), and
so does the time of day (supply voltage, temperatures), so covering flow and speed does not promise
few marks: on a fault-free simulated day the suggested first 20,000 rows covered them and 55 % of
the rest were still marked. A day of normal duty is what calibrates a pump that follows demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPERATING_WORDS = ("flow", "speed", "rpm", "frequency")
MAX_OUTSIDE_SHARE = 0.05  # more scored rows than this outside the calibrated range: warn
# A calibrated range is widened by this share of its span plus this share of its level: noise
# around one operating point must not count as leaving it.
PAD_SPAN, PAD_LEVEL = 0.25, 0.01
# The calibrations tried for the suggestion: round multiples of the file's length / this (1, 2 or 5
# times a power of ten, at least `MIN_STEP`), so the suggestion is the file's, whatever was given.
STEPS_PER_FILE, MIN_STEP = 50, 100
KEEP_SCORED = 10  # a suggestion leaves at least 1/this of the file to score


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

    def message(self, calibrate_rows: int, timestamps: list[str]) -> str:
        """The warning; `timestamps` (the file's, one per data row) name the rows a suggestion takes in."""
        ranges = "; ".join(
            f"{c.name} {c.scored[0]:.4g}..{c.scored[1]:.4g} scored, "
            f"{c.calibrated[0]:.4g}..{c.calibrated[1]:.4g} in calibration"
            for c in self.columns
        )
        rows = self.covering_rows
        what = (
            "no first rows of this file cover the rest: calibrate on normal duty that spans it"
            if rows is None
            else f"--calibrate-rows {rows} would cover that range (flow and speed only: the other signals "
            f"are not checked) by taking data rows {calibrate_rows + 1:,}..{rows:,} "
            f"({timestamps[calibrate_rows]} to {timestamps[rows - 1]}) into the calibration: only if those "
            "were normal duty, or a fault there is calibrated in as normal"
        )
        return (
            f"{self.outside:,} of {self.scored:,} scored rows ({self.share:.0%}) are at an operating point "
            f"the first {calibrate_rows:,} rows did not cover ({ranges}); marks there may be duty the "
            "calibration did not see, or the fault itself (a closing valve or a leak on the discharge "
            f"moves flow or speed). {what} (on a gateway: a day of normal duty, auto_hours = 24)"
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


def step(n: int) -> int:
    """The spacing of the calibrations a suggestion is chosen from, for a file of `n` rows: the
    largest of 1, 2 or 5 times a power of ten not above n / `STEPS_PER_FILE`, at least `MIN_STEP`."""
    want = max(MIN_STEP, n // STEPS_PER_FILE)
    power: int = 10 ** (len(str(want)) - 1)
    return max(k * power for k in (1, 2, 5) if k * power <= want)


def covering(values: np.ndarray, calibrate_rows: int) -> int | None:
    """The smallest multiple of `step` above `calibrate_rows` whose first rows cover the rest of
    `values` (operating columns only), leaving a tenth of the file to score; None when none does.
    The multiples are the file's: a given count below the answer does not move it."""
    n = values.shape[0]
    every = step(n)
    first = (calibrate_rows // every + 1) * every
    for rows in range(first, n - n // KEEP_SCORED + 1, every):
        if _outside(values, rows).mean() <= MAX_OUTSIDE_SHARE:
            return rows
    return None


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
    found = covering(x, calibrate_rows) if outside.mean() > MAX_OUTSIDE_SHARE else None
    return Coverage(int(outside.sum()), n - calibrate_rows, tuple(ranges), found)
