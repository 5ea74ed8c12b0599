"""The 136 clip features of a machine's sound, computed on the gateway in numpy.

The definition is that of the MIMII pump features the detector is measured on (see
`../shared/data/mimii-pump-features/README.md` and docs/machine-sound.md), so a gateway's clips and
those files are the same numbers. One 10 s mono clip at 16 kHz gives:

- columns 0-127: the time average of the orthonormal DCT-II, along the mel axis, of the natural
  log mel power spectrogram: STFT with `N_FFT` 512, a 400-sample periodic Hann window centred in
  it, hop 160, frames centred on the signal (zero padded at its ends), power 2, 128 mel bands on
  the Slaney scale with Slaney area normalisation from 0 Hz to Nyquist, `log(mel + 1e-8)`. As
  librosa's `melspectrogram` computes it with these settings (its defaults otherwise); a test
  checks the two agree on synthetic signals (tests/test_machine_sound_features.py);
- columns 128-135: waveform statistics of the whole clip: RMS, kurtosis (Fisher, biased), skewness
  (biased), peak to peak, crest factor (peak |x| / RMS), mean, standard deviation, and the entropy
  in bits of the 256-bin density histogram of the samples (empty bins dropped):
  `-sum(h * log2(h))` over the bins' densities.

Clips at another rate are resampled to 16 kHz first (polyphase: `core.dsp.resample_poly`, which gives
`scipy.signal.resample_poly`'s numbers without importing scipy).
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.core import dsp

F64 = npt.NDArray[np.float64]

SAMPLE_RATE: Final = 16_000
CLIP_S: Final = 10.0
N_FFT: Final = 512
WIN_LENGTH: Final = 400
HOP: Final = 160
N_MELS: Final = 128
LOG_EPS: Final = 1e-8
HIST_BINS: Final = 256
N_FEATURES: Final = N_MELS + 8
STAT_NAMES: Final[tuple[str, ...]] = (
    "rms",
    "kurtosis",
    "skewness",
    "peak_to_peak",
    "crest_factor",
    "mean",
    "std",
    "entropy",
)
FEATURE_NAMES: Final[tuple[str, ...]] = (*(f"mel_dct_{i}" for i in range(N_MELS)), *STAT_NAMES)
RMS_COLUMN: Final = N_MELS + STAT_NAMES.index("rms")
STD_COLUMN: Final = N_MELS + STAT_NAMES.index("std")
# A clip this quiet (RMS about its mean, dBFS) is digital silence: below a 24-bit converter's own
# noise, so no microphone is heard (unplugged, its input muted), whatever the machine does.
SILENT_DBFS: Final = -140.0


def rms_dbfs(features: F64) -> F64:
    """The clip RMS of feature rows (the last axis is the 136 features), in dB re full scale."""
    out: F64 = 20 * np.log10(np.maximum(np.asarray(features, dtype=np.float64)[..., RMS_COLUMN], 1e-12))
    return out


def silent(features: F64) -> npt.NDArray[np.bool_]:
    """Per feature row: a clip of digital silence. Its RMS about its mean, not its RMS: a converter
    stuck at one code (an offset, no sound: an unplugged input) is as silent as zeros."""
    std = np.asarray(features, dtype=np.float64)[..., STD_COLUMN]
    out: npt.NDArray[np.bool_] = 20 * np.log10(np.maximum(std, 1e-12)) <= SILENT_DBFS
    return out


def _hz_to_mel(hz: F64) -> F64:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (as librosa with htk=False)."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    high = hz >= min_log_hz
    mel[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: F64) -> F64:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    hz = f_sp * mel
    high = mel >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mel[high] - min_log_mel))
    return hz


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> F64:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney scale and area normalisation."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=1)
def _filterbank_t() -> F64:
    return np.ascontiguousarray(mel_filterbank().T)


@lru_cache(maxsize=1)
def _window() -> F64:
    win = dsp.hann(WIN_LENGTH)  # periodic
    pad = (N_FFT - WIN_LENGTH) // 2
    out = np.zeros(N_FFT)
    out[pad : pad + WIN_LENGTH] = win
    out.setflags(write=False)
    return out


def to_rate(x: npt.ArrayLike, sample_rate: int) -> F64:
    """Mono samples resampled to 16 kHz (unchanged when already there)."""
    y = np.asarray(x, dtype=np.float64)
    if sample_rate == SAMPLE_RATE:
        return y
    ratio = Fraction(SAMPLE_RATE, int(sample_rate)).limit_denominator(1000)
    return dsp.resample_poly(y, ratio.numerator, ratio.denominator)


def mean_log_mel(y: F64) -> F64:
    """Time average of the log mel power spectrogram (frames centred, zero padded): 128 values."""
    padded = np.pad(y, N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0]), writeable=False
    )
    spec = np.fft.rfft(frames * _window(), axis=1)
    power = spec.real * spec.real + spec.imag * spec.imag
    mel = power @ _filterbank_t()
    return np.asarray(np.log(mel + LOG_EPS).mean(axis=0), dtype=np.float64)


def waveform_stats(y: F64) -> F64:
    """RMS, kurtosis, skewness, peak to peak, crest factor, mean, std, histogram entropy (bits)."""
    mean = float(y.mean())
    c = y - mean
    c2 = c * c
    m2 = float(c2.mean())
    std = math.sqrt(m2)
    rms = math.sqrt(m2 + mean * mean)
    if m2 > 0:
        skew = float(np.dot(c2, c)) / len(c) / m2**1.5
        kurt = float(np.dot(c2, c2)) / len(c) / (m2 * m2) - 3.0
    else:
        skew, kurt = 0.0, -3.0
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    crest = peak / rms if rms > 0 else 0.0
    ptp = float(np.ptp(y)) if len(y) else 0.0
    if ptp > 0:
        hist, _ = np.histogram(y, bins=HIST_BINS, density=True)
        h = hist[hist > 0]
        entropy = float(-np.sum(h * np.log2(h)))
    else:
        entropy = 0.0
    return np.array([rms, kurt, skew, ptp, crest, mean, std, entropy], dtype=np.float64)


def clip_features(x: npt.ArrayLike, sample_rate: int = SAMPLE_RATE) -> F64:
    """The 136 features of one mono clip (any length of at least one FFT frame; 10 s as defined)."""
    y = to_rate(x, sample_rate)
    if len(y) < N_FFT:
        raise ValueError(f"a clip needs at least {N_FFT} samples at {SAMPLE_RATE} Hz (got {len(y)})")
    spectrum = dsp.dct_ortho(mean_log_mel(y))
    return np.concatenate([spectrum, waveform_stats(y)])
