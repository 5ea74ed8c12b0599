"""Per-second band levels of one hydrophone, as field noise loggers keep them.

Each whole second of canonical audio (8 kHz, `features.prepare`) gives one row of the 20 band
levels the leak features use (10 Hz - 3.6 kHz, log-spaced), in dB re full scale: a Hann-windowed
8192-point FFT of that second, its power summed per band and scaled so that white noise of mean
square s2 puts s2 x (bandwidth / 4 kHz) into a band. These rows are what a night's quiet level,
its spread and the sensor's baseline are built from; with them, each band's tonality (a pump's
line stands out of its band, a leak's hiss does not). Cost: one real FFT per second of audio.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.core import dsp
from water_edge.models.leak import features

SECOND: Final = features.SAMPLE_RATE
_WIN: Final = np.hanning(SECOND)
# One-sided power: 2 |X_k|^2 / (NFFT * sum(w^2)) per bin sums to the window-weighted mean square.
_SCALE: Final = 2.0 / (features.NFFT * float(np.sum(_WIN**2)))
_FLOOR_DB: Final = -200.0

FloatArray = npt.NDArray[np.float64]


_WIDTHS: Final = np.diff(features.BAND_EDGES_HZ)
# How much the one-second level of a *steady* noise wanders in each band: a 1 s Hann-windowed
# measurement of band B has about nu = 2 B / 1.5 degrees of freedom, so its level has a standard
# deviation of about 4.34 sqrt(2 / nu) dB (capped at the 5.6 dB of nu = 2). p50 - p10 of a normal
# spread is 1.28 sigma.
STEADY_LOWER_SPREAD_DB: Final = 1.28 * np.minimum(5.6, 4.34 * np.sqrt(2 / (2 * _WIDTHS / 1.5)))


def steady(p10: FloatArray, p50: FloatArray, tol_db: float) -> npt.NDArray[np.bool_]:
    """Per band: is the lower half of the one-second levels no wider than a steady noise's + tol?"""
    out: npt.NDArray[np.bool_] = (p50 - p10) <= STEADY_LOWER_SPREAD_DB + tol_db
    return out


def unsteady_bands(p10: FloatArray, p50: FloatArray, tol_db: float) -> int:
    """How many bands wander (not `steady`): rain and storms move many at once, a leak none."""
    return int(np.count_nonzero(~steady(p10, p50, tol_db)))


_STARTS: Final = np.argmax(features.BAND_MATRIX > 0, axis=1)
_COUNTS: Final = features.BAND_MATRIX.sum(axis=1)


def second_bands(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per whole second of canonical audio: band levels (dB re full scale) and band tonality (dB:
    the strongest bin over the band's mean bin; a pump or mains tone stands out, leak noise does
    not), each shaped (seconds, N_BANDS)."""
    n = x.size // SECOND
    if n == 0:
        return np.zeros((0, features.N_BANDS)), np.zeros((0, features.N_BANDS))
    frames = x[: n * SECOND].reshape(n, SECOND)
    # Each second's own mean, as the gateway removes it: a file's mean carries a click's or a
    # dropout's offset into every second, where its leakage lifts the lowest bands.
    frames = (frames - frames.mean(axis=1, keepdims=True)) * _WIN
    spec = np.abs(np.fft.rfft(frames, features.NFFT, axis=1)) ** 2
    power = spec @ features.BAND_MATRIX.T
    peak = np.maximum.reduceat(spec, _STARTS, axis=1)[:, : features.N_BANDS]
    levels: FloatArray = np.maximum(10.0 * np.log10(np.maximum(power * _SCALE, 1e-20)), _FLOOR_DB)
    tonal: FloatArray = 10.0 * np.log10(np.maximum(peak * _COUNTS, 1e-30) / np.maximum(power, 1e-30))
    return levels, tonal


def second_levels(x: FloatArray) -> FloatArray:
    """Band levels (dB re full scale) of each whole second of canonical audio: shape (seconds, N_BANDS)."""
    return second_bands(x)[0]


class SecondLevels:
    """Cuts a stream of canonical audio into whole seconds and gives each second's band levels."""

    def __init__(self) -> None:
        self._buf = np.zeros(0)

    def feed(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Levels and tonality of the whole seconds completed by `x` (see `second_bands`)."""
        self._buf = np.concatenate([self._buf, x])
        n = self._buf.size // SECOND
        rows = second_bands(self._buf[: n * SECOND])
        self._buf = self._buf[n * SECOND :]
        return rows

    def reset(self) -> None:
        self._buf = np.zeros(0)


class Decimator:
    """Brings one channel to the canonical 8 kHz across chunk boundaries (a filter with state):
    integer ratios by a 127-tap low-pass FIR then every r-th sample; other rates per chunk with
    `features.prepare` (its edges are then slightly off; capture at a multiple of 8 kHz)."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self.ratio = sample_rate // SECOND if sample_rate % SECOND == 0 else 0
        self._taps: FloatArray | None = None
        if self.ratio > 1:
            self._taps = dsp.firwin(127, 0.9 / self.ratio)
            self._zi = np.zeros(126)
        self._phase = 0

    def feed(self, x: FloatArray) -> FloatArray:
        if self.ratio == 1:
            return x
        if self._taps is None:
            return features.prepare(x, self.rate)[0]
        y, self._zi = dsp.fir_filter(self._taps, x, self._zi)
        out: FloatArray = y[self._phase :: self.ratio]
        self._phase = (self._phase - x.size) % self.ratio
        return out
