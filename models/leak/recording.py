"""A recording as checks: how `edge-agent models calibrate leak` and `score leak --baseline` see a WAV.

A recording is treated as one listening night cut into checks of `check_s` seconds (the last,
shorter piece joins the one before). Each check gets its one-second band levels and the
classifier's probabilities on its 2 s windows (hop 1 s), summarised by `CheckStats`.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.models.leak import features
from water_edge.models.leak.baseline import CheckStats
from water_edge.models.leak.detector import LeakScorer
from water_edge.models.leak.levels import SECOND, second_bands

DEFAULT_CHECK_S: Final = 8.0
MIN_CHECK_S: Final = 2

FloatArray = npt.NDArray[np.float64]


def split_checks(n_seconds: int, check_s: float) -> list[tuple[int, int]]:
    """Second ranges [a, b) of the checks of an `n_seconds` recording."""
    size = max(MIN_CHECK_S, round(check_s))
    if n_seconds < MIN_CHECK_S:
        raise ValueError(f"recording too short: {n_seconds} s, need at least {MIN_CHECK_S} s")
    edges = list(range(0, n_seconds, size))
    if len(edges) > 1 and n_seconds - edges[-1] < size:
        edges.pop()  # a short tail joins the check before it
    return [(a, b) for a, b in zip(edges, [*edges[1:], n_seconds], strict=True)]


def recording_checks(
    canon: FloatArray,
    name: str,
    *,
    check_s: float = DEFAULT_CHECK_S,
    scorer: LeakScorer | None = None,
) -> list[CheckStats]:
    """Checks of a canonical (8 kHz, one channel) recording; the classifier is skipped without a scorer."""
    levels, tonal = second_bands(canon)
    out = []
    for index, (a, b) in enumerate(split_checks(levels.shape[0], check_s)):
        probs: list[float] = []
        if scorer is not None:
            piece = canon[a * SECOND : b * SECOND]
            if piece.size >= features.NFFT:
                probs = [float(p) for p in scorer.probabilities(features.windows(piece, hop_s=1.0))]
        out.append(
            CheckStats.from_levels(
                levels[a:b],
                night=name,
                index=index,
                start_ns=a * 1_000_000_000,
                probabilities=probs,
                tonality=tonal[a:b],
            )
        )
    return out
