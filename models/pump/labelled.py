"""How marked rows compare with rows an engineer labelled: `models score pump --label COL`.

A site's history often comes with its own record of what happened (a logbook turned into a 0/1
column, a test bed's annotations). Scoring such a file and comparing row by row is how an engineer
decides whether to trust the detector before a gateway watches the pump; this module does the
comparison so that nobody has to write it.

Rows compare point-wise, as the public test-rig benchmarks score (SKAB): a row marked and labelled
anomalous is a hit, marked and labelled normal a false alarm, labelled anomalous and not marked a
miss. Rows of unknown label (an empty cell) are left out. An *episode* is a run of consecutive
anomalous rows; it is found when at least one of its rows is marked, and its delay is the number of
rows from its first row to the first marked one (point-wise scores count every row of that delay
as missed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class PointScores:
    rows: int  # rows with a known label
    anomalous: int  # of them labelled anomalous
    marked: int  # of them marked by the detector
    hits: int
    false_alarms: int
    misses: int
    episodes: int
    found: int
    delays: tuple[int, ...]  # rows from each found episode's start to its first marked row

    @property
    def precision(self) -> float:
        return self.hits / self.marked if self.marked else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.anomalous if self.anomalous else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_alarm_rate(self) -> float:
        """Share of the rows labelled normal that were marked (SKAB's FAR)."""
        normal = self.rows - self.anomalous
        return self.false_alarms / normal if normal else 0.0

    @property
    def missed_rate(self) -> float:
        """Share of the rows labelled anomalous that were not marked (SKAB's MAR)."""
        return self.misses / self.anomalous if self.anomalous else 0.0

    def lines(self) -> list[str]:
        """The comparison in words, for the command's standard error."""
        out = [
            f"{self.rows:,} labelled rows, {self.anomalous:,} of them anomalous; {self.marked:,} marked",
            "point-wise: " + ", ".join(self._figures()),
        ]
        if self.episodes:
            delay = f"; median delay {np.median(self.delays):g} rows" if self.delays else ""
            out.append(f"anomalous episodes: {self.found} of {self.episodes} found{delay}")
        return out

    def _figures(self) -> list[str]:
        """F1, precision, recall, false alarms and missed; a figure of no rows (nothing marked, no
        normal rows) is "n/a" and why, not a 0 that reads as measured, and so is F1 without anomalous
        rows (it would be 0 whatever was marked)."""
        return [
            f"F1 {_ratio(self.f1, self.anomalous, 'no anomalous rows')}",
            f"precision {_ratio(self.precision, self.marked, 'nothing marked')}",
            f"recall {_ratio(self.recall, self.anomalous, 'no anomalous rows')}",
            f"false alarms {_share(self.false_alarm_rate, self.rows - self.anomalous, 'normal')}",
            f"missed {_share(self.missed_rate, self.anomalous, 'anomalous')}",
        ]


def _ratio(value: float, of: int, why_none: str) -> str:
    """`value` to three places, or "n/a (`why_none`)" when it is a ratio `of` no rows."""
    return f"{value:.3f}" if of else f"n/a ({why_none})"


def _share(rate: float, rows: int, kind: str) -> str:
    """`rate` as a percentage of the `rows` labelled `kind`, or "n/a" when there are none."""
    return f"{100 * rate:.1f} % of {kind} rows" if rows else f"n/a (no {kind} rows)"


def as_labels(column: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A label column as 1 (anomalous: any number but 0), 0 (normal) or NaN (unknown: empty)."""
    labels = np.where(column != 0, 1.0, 0.0)
    labels[~np.isfinite(column)] = np.nan
    return labels


def point_scores(alarm: npt.ArrayLike, labels: npt.ArrayLike) -> PointScores:
    """Compare 0/1 `alarm` with `labels` (1, 0 or NaN for unknown), row by row."""
    marked = np.asarray(alarm) != 0
    lab = np.asarray(labels, dtype=np.float64)
    if marked.shape != lab.shape:
        raise ValueError(f"{marked.shape[0]} alarm rows against {lab.shape[0]} labels")
    known = np.isfinite(lab)
    bad = known & (lab == 1)
    good = known & (lab == 0)
    starts = np.flatnonzero(bad & ~np.concatenate(([False], bad[:-1])))
    ends = np.flatnonzero(bad & ~np.concatenate((bad[1:], [False]))) + 1
    delays = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        hit = np.flatnonzero(marked[start:end])
        if hit.size:
            delays.append(int(hit[0]))
    return PointScores(
        rows=int(known.sum()),
        anomalous=int(bad.sum()),
        marked=int((marked & known).sum()),
        hits=int((marked & bad).sum()),
        false_alarms=int((marked & good).sum()),
        misses=int((~marked & bad).sum()),
        episodes=len(starts),
        found=len(delays),
        delays=tuple(delays),
    )
