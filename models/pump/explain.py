"""Which signals a marked row of `edge-agent models score pump --explain` stands on, in words.

An engineer trying the offline command on a stretch of history asks of every marked stretch "which
signal, and which way?" before trusting it. Per marked row: the channels whose own score reached
`SHARE` of the alarm level, strongest first (at most `TOP`; the strongest alone when none did),
each with the way it moved — `above` / `below` its calibrated level (or, for the gateway detector,
its calibrated relation to the other signals), `noisier` / `steadier` when the steady detector
judged its row-to-row noise. Unmarked rows are left empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

SHARE = 0.5  # of the alarm level: a channel this far up helps carry the row
TOP = 3


def _row(names: Sequence[str], score: F64, words: Sequence[str]) -> str:
    order = np.argsort(-score, kind="stable")[:TOP]
    chosen = [int(c) for c in order if score[c] >= SHARE] or [int(order[0])]
    return "; ".join(f"{names[c]} {words[c]}" for c in chosen)


def signals(
    names: Sequence[str], channel: F64, moved: Sequence[Sequence[str]], alarm: npt.NDArray[np.int8]
) -> list[str]:
    """One text per row: `channel` (rows x channels) in units of the alarm level, `moved[t][c]`
    the word for how channel c moved at row t; empty where `alarm` is 0."""
    return [_row(names, channel[t], moved[t]) if alarm[t] else "" for t in range(len(alarm))]


def steady_words(per: F64, direction: F64, noise: bool) -> list[list[str]]:
    """How each channel moved, by the statistic that scores it highest (`steady.detect_per_statistic`
    and `SteadyModel.directions`, statistics x rows x channels; the last is the noise statistic
    when `noise`)."""
    winner = per.argmax(axis=0)  # rows x channels
    up = np.take_along_axis(direction, winner[None], axis=0)[0] >= 0
    by_noise = winner == per.shape[0] - 1 if noise else np.zeros_like(up)
    table = np.where(by_noise, np.where(up, "noisier", "steadier"), np.where(up, "above", "below"))
    return [list(map(str, row)) for row in table]


def relation_words(residual: F64, window: int = 8) -> list[list[str]]:
    """The gateway detector's channels moved `above` or `below` their calibrated relation by the
    sign of their mean residual over the last `window` rows."""
    c = np.cumsum(np.vstack([np.zeros((1, residual.shape[1])), np.nan_to_num(residual)]), axis=0)
    idx = np.arange(1, len(residual) + 1)
    mean = c[idx] - c[np.maximum(0, idx - window)]
    return [["above" if v >= 0 else "below" for v in row] for row in mean]


def summary(texts: Sequence[str]) -> str:
    """How many marked rows name each signal, most named first: `Current 250, Pressure 80`."""
    counts: Counter[str] = Counter()
    for text in texts:
        for part in filter(None, text.split("; ")):
            counts[part.rsplit(" ", 1)[0]] += 1
    return ", ".join(f"{name} {n:,}" for name, n in counts.most_common())
