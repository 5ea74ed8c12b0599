"""Audio saturated at full scale: what the audio driver flags as `clipping` in a window, and what
the offline leak commands find per second of a recording.

A sample within 0.1 % of full scale is clipped (int16 reads 32767 / -32768, float 1.0); a stretch
with 1 % or more of its samples there is saturated: its levels are understated and its spectrum
carries the clipping's harmonics. A leak may be that loud, so a saturated stretch is judged; a
baseline never learns from one.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FULL_SCALE: Final = 0.999  # a sample this close to full scale is clipped
CLIPPED_SHARE: Final = 0.01  # of a stretch's samples at full scale: it is saturated


def saturated_seconds(x: npt.ArrayLike, sample_rate: int) -> npt.NDArray[np.bool_]:
    """Per whole second of the 1-D signal `x` (full scale +-1): whether it is saturated."""
    samples = np.asarray(x)
    seconds = samples.size // sample_rate
    whole = samples[: seconds * sample_rate]
    clipped = (whole >= FULL_SCALE) | (whole <= -FULL_SCALE)  # no float copy of a 5-minute segment
    out: npt.NDArray[np.bool_] = clipped.reshape(seconds, sample_rate).mean(axis=1) >= CLIPPED_SHARE
    return out
