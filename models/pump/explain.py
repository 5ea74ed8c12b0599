"""Which signals a marked row of `edge-agent models score pump --explain` stands on, in words.

An engineer trying the offline command on a stretch of history asks of every marked stretch "which
signal, and which way?" before trusting it. Per marked row: the channels whose own score reached
`SHARE` of the alarm level, strongest first (at most `TOP`; the strongest alone when none did),
each with the way it moved — `above` / `below` its calibrated level (or, for the gateway detector,
its calibrated relation to the other signals), `noisier` / `steadier` when the steady detector
judged its row-to-row noise, `frozen: the same value for N samples` when the gateway detector's
frozen test holds it. Unmarked rows are left empty, and only marked rows are worded: a week at 1 s
whose every row is marked is worded a block at a time (`place`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Words = npt.NDArray[np.str_]  # rows x channels: which way each channel moved

SHARE = 0.5  # of the alarm level: a channel this far up helps carry the row
TOP = 3
RELATION_WINDOW = 8  # rows whose mean residual says above or below the calibrated relation
BLOCK_ROWS = 8192  # marked rows worded at a time (`place`)
FROZEN = " frozen: "  # how a frozen channel's words start (`frozen_words`)


def _row(names: Sequence[str], score: F64, words: Words) -> str:
    order = np.argsort(-score, kind="stable")[:TOP]
    chosen = [int(c) for c in order if score[c] >= SHARE] or [int(order[0])]
    return "; ".join(f"{names[c]} {words[c]}" for c in chosen)


def signals(names: Sequence[str], channel: F64, moved: Words) -> list[str]:
    """One text per marked row: `channel` (rows x channels) in units of the alarm level, `moved[t][c]`
    the word for how channel c moved at row t."""
    return [_row(names, channel[t], moved[t]) for t in range(len(channel))]


def place(texts: list[str], rows: npt.NDArray[np.intp], worded: Callable[[slice], list[str]]) -> None:
    """Put the texts of the marked `rows` into `texts` (one per row of the file), `BLOCK_ROWS` of
    them at a time: `worded(part)` gives those of `rows[part]`, so the word arrays behind them stay
    small when most of a week is marked."""
    for lo in range(0, len(rows), BLOCK_ROWS):
        part = slice(lo, lo + BLOCK_ROWS)
        for row, text in zip(rows[part].tolist(), worded(part), strict=True):
            texts[row] = text


def steady_words(per: F64, direction: npt.NDArray[np.int8], noise: bool) -> Words:
    """How each channel moved, by the statistic that scores it highest (`steady.detect_per_statistic`
    and `SteadyModel.directions`, statistics x rows x channels; the last is the noise statistic
    when `noise`)."""
    winner = per.argmax(axis=0)  # rows x channels
    up = np.take_along_axis(direction, winner[None], axis=0)[0] >= 0
    by_noise = winner == per.shape[0] - 1 if noise else np.zeros_like(up)
    out: Words = np.where(by_noise, np.where(up, "noisier", "steadier"), np.where(up, "above", "below"))
    return out


def relation_words(mean_residual: F64) -> Words:
    """The gateway detector's channels moved `above` or `below` their calibrated relation by the
    sign of their mean residual over the last `RELATION_WINDOW` rows (`detector.explain_rows`)."""
    out: Words = np.where(mean_residual >= 0, "above", "below")
    return out


def frozen_words(
    words: Words,
    run: npt.NDArray[np.float32],
    frozen: npt.NDArray[np.bool_],
    held: npt.NDArray[np.bool_] | None = None,
) -> Words:
    """`words` with `frozen: the same value for N samples` where `frozen` (rows x channels, the
    gateway detector's frozen test past its limit, `Calibration.frozen`); `run` the runs. Where
    `held` (`detector.held_together_rows`) the words add `, with K others (held upstream?)`."""
    if not frozen.any() and (held is None or not held.any()):
        return words
    said = np.char.add(
        "frozen: the same value for ", np.char.add(run.astype(np.int64).astype(str), " samples")
    )
    out: Words = np.where(frozen, said, words)
    if held is not None and held.any():
        others = np.broadcast_to(held.sum(axis=1, keepdims=True) - 1, held.shape)
        with_others = np.char.add(
            np.char.add(np.char.add(said, ", with "), others.astype(str)), " others (held upstream?)"
        )
        out = np.where(held, with_others, out)
    return out


def summary(texts: Sequence[str]) -> str:
    """How many marked rows name each signal, most named first: `Current 250, Pressure 80`."""
    counts: Counter[str] = Counter()
    for text in texts:
        for part in filter(None, text.split("; ")):
            counts[part.split(FROZEN)[0] if FROZEN in part else part.rsplit(" ", 1)[0]] += 1
    return ", ".join(f"{name} {n:,}" for name, n in counts.most_common())
