"""Dropouts in a recording: stretches where the converter or the logger delivered one value over and
over (digital silence after a buffer underrun, an SD card that stalled, a cable pulled and put back).

No pipe sounds like that: even a quiet main read through a 16-bit input moves by a few steps from
one sample to the next. A twentieth of a second of identical samples (400 at 8 kHz) does not
happen in anything the sensor heard. A second holding such a stretch is not the pipe, and the offline leak
commands leave it out of the levels they learn from and judge, as the gateway leaves out the
seconds its audio driver marks `silence`, `dc` or `dropout` (`holds_dropout`, the same rule on each
analysis window).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

BLOCKS_PER_SECOND: Final = 20  # judged in blocks of 50 ms: a run of 100 ms or more holds a whole one


def dropout_seconds(x: npt.ArrayLike, sample_rate: int) -> npt.NDArray[np.bool_]:
    """Per whole second of the 1-D signal `x`: whether one of its 50 ms blocks holds one value (a
    dropout of 100 ms or more always covers a whole block). Reductions over a view: no copy of a
    five-minute segment, nor an index per sample."""
    samples = np.asarray(x)
    seconds = samples.size // sample_rate
    block = sample_rate // BLOCKS_PER_SECOND
    if seconds == 0 or block < 2:
        return np.zeros(seconds, dtype=bool)
    per_second = samples[: seconds * sample_rate].reshape(seconds, sample_rate)
    blocks = per_second[:, : BLOCKS_PER_SECOND * block].reshape(seconds, BLOCKS_PER_SECOND, block)
    out: npt.NDArray[np.bool_] = np.asarray(_constant(blocks).any(axis=1), dtype=bool)
    return out


def holds_dropout(x: npt.ArrayLike, sample_rate: int) -> bool:
    """Whether the 1-D stretch `x` (an analysis window of any length) holds a 50 ms block of one
    value, its blocks counted from its first sample: the rule of `dropout_seconds`, for the
    gateway's windows."""
    samples = np.asarray(x)
    block = sample_rate // BLOCKS_PER_SECOND
    count = samples.size // block if block >= 2 else 0
    if count == 0:
        return False
    return bool(_constant(samples[: count * block].reshape(count, block)).any())


def _constant(blocks: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """Per block (the last axis): whether it holds one value."""
    out: npt.NDArray[np.bool_] = blocks.max(axis=-1) == blocks.min(axis=-1)
    return out
