"""Leak features: log-spaced band levels of one hydrophone channel, made gain-independent.

Every input is first brought to one canonical form — first channel, 8 kHz (`prepare`) — so a WAV of
any rate and channel count, a 16 kHz live stream and the 8 kHz real recordings all give the same
features. A 2 s window is cut into 256 ms frames (hop 128 ms); the power spectrum is summed into
20 log-spaced bands from 10 Hz to 3.6 kHz (about 1/2.3 octave each: fine where plastic-pipe leaks
live, tens of Hz, and still covering the metal-pipe band up to ~2 kHz). Features per band:
  - level: dB relative to the window's total power (the spectral *shape*; hydrophone sensitivity and
    preamp gain are unknown per site, so absolute level is reported as evidence but not fed to the model);
  - spread: standard deviation over frames of the band's dB level (leak noise is steady; traffic,
    clicks and flow surges are not).
Cost: one 8192-point real FFT per frame, 8 frames per window: well under a millisecond on a Pi core.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.core import dsp

SAMPLE_RATE: Final = 8000
# Below this a recording holds nothing of a pipe's leak bands worth judging (the audio driver's own
# lower limit for `sample_rate`).
MIN_SAMPLE_RATE: Final = 1000
WINDOW_S: Final = 2.0
WINDOW: Final = int(SAMPLE_RATE * WINDOW_S)
NFFT: Final = 8192
HOP: Final = 1024
N_BANDS: Final = 20
BAND_EDGES_HZ: Final = np.geomspace(10.0, 3600.0, N_BANDS + 1)
N_FEATURES: Final = 2 * N_BANDS
_EPS: Final = 1e-12

FloatArray = npt.NDArray[np.float64]


def _band_matrix() -> FloatArray:
    freqs = np.fft.rfftfreq(NFFT, 1 / SAMPLE_RATE)
    m = np.zeros((N_BANDS, freqs.size))
    for b in range(N_BANDS):
        sel = (freqs >= BAND_EDGES_HZ[b]) & (freqs < BAND_EDGES_HZ[b + 1])
        if not sel.any():  # cannot happen for these constants; kept as a guard if they change
            sel[np.argmin(np.abs(freqs - np.sqrt(BAND_EDGES_HZ[b] * BAND_EDGES_HZ[b + 1])))] = True
        m[b, sel] = 1.0
    return m


_BANDS: Final = _band_matrix()
BAND_MATRIX: Final = _BANDS  # (N_BANDS, NFFT // 2 + 1): sums a power spectrum into the bands
_HANN: Final = np.hanning(NFFT)


def band_centres_hz() -> list[float]:
    return [round(float(np.sqrt(a * b)), 1) for a, b in itertools.pairwise(BAND_EDGES_HZ)]


CENTRES_HZ: Final = np.array(band_centres_hz())  # the same, as an array for band masks


def classifier_hears(sample_rate: int) -> bool:
    """Whether the classifier applies to audio sampled at `sample_rate`: its features are band
    levels relative to the spectrum up to 4 kHz, and audio without the top of it reads as a leak (a
    quiet PVC pipe at 4 kHz: probability 1.0, at 8 kHz 0.09). Below it the field detector judges
    the levels alone, on the gateway and offline."""
    return sample_rate >= SAMPLE_RATE


def prepare(samples: npt.ArrayLike, sample_rate: int) -> tuple[FloatArray, list[str]]:
    """First channel at 8 kHz, its offset (median) removed; and the list of what was done to get there."""
    x = np.asarray(samples, dtype=np.float64)
    notes: list[str] = []
    if x.ndim == 2:
        if x.shape[1] > 1:
            notes.append(f"first of {x.shape[1]} channels")
        x = x[:, 0]
    elif x.ndim != 1:
        raise ValueError(f"audio must be 1-D or (samples, channels), got shape {x.shape}")
    if sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(
            f"sample rate {sample_rate} Hz is too low to hear a pipe: need at least {MIN_SAMPLE_RATE} Hz"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        ratio = Fraction(SAMPLE_RATE, int(sample_rate)).limit_denominator(1000)
        x = dsp.resample_poly(x, ratio.numerator, ratio.denominator)
        notes.append(f"resampled from {sample_rate} Hz to {SAMPLE_RATE} Hz")
    # The median: a click of a million times the signal, or a dropout, barely moves it; the mean
    # would carry that offset into every window of the file.
    return x - np.median(x), notes


def band_powers(x: FloatArray) -> FloatArray:
    """Per-frame band powers, shape (frames, N_BANDS), for an 8 kHz signal of at least NFFT samples."""
    if x.size < NFFT:
        raise ValueError(f"need at least {NFFT} samples at {SAMPLE_RATE} Hz, got {x.size}")
    n_frames = 1 + (x.size - NFFT) // HOP
    idx = np.arange(NFFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    frames = x[idx] * _HANN
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    out: FloatArray = spec @ _BANDS.T
    return out


def window_features(x: FloatArray) -> FloatArray:
    """The model's input for one window of canonical audio: N_FEATURES float values."""
    p = band_powers(x)
    total = p.sum(axis=1, keepdims=True) + _EPS
    rel_db = 10 * np.log10(p / total + _EPS)
    mean_p = p.mean(axis=0)
    level = 10 * np.log10(mean_p / (mean_p.sum() + _EPS) + _EPS)
    spread = rel_db.std(axis=0)
    return np.concatenate([level, spread])


def windows(x: FloatArray, hop_s: float = WINDOW_S) -> FloatArray:
    """Feature rows for consecutive windows of a canonical signal, shape (n, N_FEATURES)."""
    hop = int(hop_s * SAMPLE_RATE)
    if x.size < WINDOW:
        return window_features(x)[None, :]
    starts = range(0, x.size - WINDOW + 1, hop)
    return np.stack([window_features(x[s : s + WINDOW]) for s in starts])


def rms_dbfs(x: FloatArray) -> float:
    return float(10 * np.log10(np.mean(x * x) + _EPS))
