"""Sensor faults a hydrophone or microphone shows in its own signal, per channel of a stretch of audio.

A sensor that is not listening to the pipe still sends samples, and the models would take them for
the pipe's sound: a quiet night in a baseline, a pump that went silent. What such a signal looks like:

- `silence`: every sample exactly 0 (an ADC sending zeros, a USB card gone under a sound server
  that feeds zeros, an input not enabled);
- `dc`: every sample the same non-zero code (a converter stuck, an input pulled to a rail);
- `mains_hum`: nearly all the power (`HUM_SHARE`) at the 50 or 60 Hz mains frequency and its
  harmonics, the fundamental itself holding `HUM_FUNDAMENTAL_SHARE` of it (a hydrophone
  disconnected at its preamp: the open input picks up the mains; a calibrator's single tone at
  250 Hz or 1 kHz is not hum);
- `clipping`: `CLIPPED_SHARE` or more of the frames at full scale (a saturated input);
- `duplicate`: a channel identical sample for sample to an earlier one (a 2-channel capture whose
  second channel is a copy of the first: a card in mono mode, a channel stuck on its neighbour);
- `dropout`: not constant throughout, but one value for 50 ms or more somewhere
  (`core.dropouts.holds_dropout`: a buffer underrun, a stalled converter or USB transfer, a cable
  pulled and put back, the edges of a `silence`).

Each is described in words by `core.sensor_faults.describe`.

No hydrophone on a pipe, however quiet, gives these: an analogue chain always has noise, and noise
never repeats another channel exactly. The models' own thresholds are not involved: a stretch with a
fault is marked (`AudioWindow.faults`, the level readings' quality) and kept out of what they learn.
"""

from __future__ import annotations

import functools
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from water_edge.core.clipping import CLIPPED_SHARE, FULL_SCALE
from water_edge.core.dropouts import holds_dropout

Fault = Literal["silence", "dc", "mains_hum", "clipping", "duplicate", "dropout"]

HUM_SHARE: Final = 0.98  # of the power within HUM_WIDTH_HZ of the mains harmonics: hum only
HUM_FUNDAMENTAL_SHARE: Final = 0.1  # of the power at 50 (60) Hz itself
HUM_WIDTH_HZ: Final = 2.0
HUM_MAX_HZ: Final = 1000.0  # harmonics up to here
MIN_HUM_S: Final = 0.2  # shorter stretches cannot resolve the harmonics from noise


def classify(frames: npt.NDArray[np.float32], sample_rate: int) -> tuple[Fault | None, ...]:
    """The fault each channel of `frames` (n, channels; finite, full scale +-1) shows, or None."""
    n, channels = frames.shape
    out: list[Fault | None] = []
    for c in range(channels):
        x = frames[:, c]
        if n == 0:
            out.append(None)
        elif bool(np.all(x == x[0])):
            out.append("silence" if x[0] == 0 else "dc")
        elif np.count_nonzero(np.abs(x) >= FULL_SCALE) >= CLIPPED_SHARE * n:
            out.append("clipping")
        elif any(np.array_equal(x, frames[:, j]) for j in range(c)):
            out.append("duplicate")
        elif holds_dropout(x, sample_rate):
            out.append("dropout")
        elif n >= MIN_HUM_S * sample_rate and hum_share(x, sample_rate) >= HUM_SHARE:
            out.append("mains_hum")
        else:
            out.append(None)
    return tuple(out)


def hum_share(x: npt.NDArray[np.float32], sample_rate: int) -> float:
    """The largest share of `x`'s power (its mean removed) within HUM_WIDTH_HZ (at least two
    bins) of the harmonics of 50 Hz, or of 60 Hz, up to HUM_MAX_HZ; 0 for a mains frequency whose
    fundamental holds less than HUM_FUNDAMENTAL_SHARE of the power."""
    y = x.astype(np.float64)
    y -= y.mean()
    window, masks = _hum_masks(y.size, sample_rate)
    power = np.abs(np.fft.rfft(y * window)) ** 2
    total = float(power[1:].sum())
    if total <= 0.0:
        return 0.0
    best = 0.0
    for near, fundamental in masks:
        if float(power[fundamental].sum()) >= HUM_FUNDAMENTAL_SHARE * total:
            best = max(best, float(power[near].sum()) / total)
    return best


@functools.lru_cache(maxsize=8)
def _hum_masks(
    n: int, sample_rate: int
) -> tuple[npt.NDArray[np.float64], list[tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]]]:
    """The Hann window of `n` frames and, for 50 and 60 Hz, the bins near their harmonics and
    near the fundamental."""
    df = sample_rate / n
    freqs = np.arange(n // 2 + 1) * df
    width = max(HUM_WIDTH_HZ, 2 * df)
    masks = []
    for mains in (50.0, 60.0):
        harmonics = np.arange(mains, min(HUM_MAX_HZ, sample_rate / 2) + 1e-9, mains)
        if harmonics.size:
            near = np.min(np.abs(freqs[:, None] - harmonics[None, :]), axis=1) <= width
            masks.append((near, np.abs(freqs - mains) <= width))
    return np.hanning(n), masks
