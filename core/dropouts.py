"""Dropouts in a recording: stretches where the converter or the logger delivered one value over and
over (digital silence after a buffer underrun, an SD card that stalled, a cable pulled and put back).

No pipe sounds like that: even a quiet main read through a 16-bit input moves by a few steps from
one sample to the next. A twentieth of a second of identical samples (400 at 8 kHz) does not
happen in anything the sensor heard. A second holding such a stretch is not the pipe, and the offline leak
commands leave it out of the levels they learn from and judge, as the gateway leaves out the
seconds its audio driver marks `silence` or `dc`.
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
    out: npt.NDArray[np.bool_] = (blocks.max(axis=2) == blocks.min(axis=2)).any(axis=1)
    return out
