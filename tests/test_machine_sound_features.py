"""The machine-sound features computed on the gateway (numpy/scipy) are the MIMII feature definition:
checked against librosa (the reference implementation, a test-only dependency) and scipy.stats on
synthetic signals. Measured agreement when written: cepstral columns within 5e-7 (librosa works in
float32, the gateway in float64; 6e-13 against the float64 reference below), waveform statistics
within 5e-5 relative (skewness and kurtosis, dimensionless and near zero for symmetric sounds,
within 3e-8 absolute); the tolerances below leave a margin for other BLAS/FFT builds.

The reference's power spectrogram is scipy.signal.stft's, framed as librosa's centred STFT is
(zeros padded at both ends, the 400-sample Hann window centred in 512): within 2e-7 relative of
`librosa.stft` on noise (checked 2026-12-03). `librosa.stft` loads librosa.util, whose Numba
functions take ~25 s to compile in a fresh environment, which every CI run is; the mel filter bank
stays librosa's own."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.stats
from scipy import signal

from water_edge.models.machine_sound.features import (
    FEATURE_NAMES,
    N_FEATURES,
    clip_features,
    mel_filterbank,
)

SR = 16_000
DCT_ATOL = 1e-4  # log units; a feature's spread between normal clips of one pump is ~1e-2..1
STAT_RTOL = 1e-4
SHAPE_ATOL = 1e-5  # skewness and kurtosis: scipy computes them in float32 for float32 input


def reference(y: np.ndarray) -> np.ndarray:
    """The definition in the data set's README, computed with librosa and scipy.stats."""
    n_fft, win_length, hop = 512, 400, 160
    window = np.zeros(n_fft)  # the Hann window of win_length, centred in n_fft (librosa's)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = signal.get_window("hann", win_length, fftbins=True)
    _, _, spectrum = signal.stft(
        y.astype(np.float64), window=window, nperseg=n_fft, noverlap=n_fft - hop, boundary="zeros",
        padded=False, return_onesided=True,
    )  # fmt: skip
    power = np.abs(spectrum * window.sum()) ** 2  # scipy scales a frame by 1 / sum(window)
    mel = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=128, dtype=np.float64) @ power
    cepstra = scipy.fft.dct(np.log(mel + 1e-8), type=2, norm="ortho", axis=0).mean(axis=1)
    hist, _ = np.histogram(y, bins=256, density=True)
    hist = hist[hist > 0]
    rms = np.sqrt(np.mean(y.astype(np.float64) ** 2))
    stats = [
        rms,
        scipy.stats.kurtosis(y),
        scipy.stats.skew(y),
        np.ptp(y),
        np.max(np.abs(y)) / rms,
        np.mean(y),
        np.std(y),
        -np.sum(hist * np.log2(hist)),
    ]
    return np.concatenate([cepstra, np.asarray(stats, dtype=np.float64)])


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    t = np.arange(10 * SR) / SR
    tones = 0.05 * np.sin(2 * np.pi * 49.2 * t) + 0.02 * np.sin(2 * np.pi * 295.0 * t)
    clicks = np.zeros_like(t)
    clicks[:: SR // 7] = 0.6
    return {
        "tones and noise": tones + 0.01 * rng.standard_normal(len(t)),
        "impacts ringing a resonance": signal.lfilter([1.0], [1.0, -1.6, 0.9], clicks)
        + 0.002 * rng.standard_normal(len(t)),
        "chirp": 0.1 * signal.chirp(t, 20, t[-1], 7000),
        "quiet pink-ish noise": 1e-4 * np.cumsum(rng.standard_normal(len(t))) / 300,
        "dc offset and hum": 0.01 + 0.03 * np.sin(2 * np.pi * 100 * t),
    }


@pytest.mark.parametrize("name", list(_signals()))
def test_features_match_librosa_and_scipy_on_synthetic_clips(name: str) -> None:
    y = _signals()[name].astype(np.float32)  # as a WAV reader delivers them
    ours = clip_features(y, SR)
    ref = reference(y)
    assert ours.shape == (N_FEATURES,) == (len(FEATURE_NAMES),)
    np.testing.assert_allclose(ours[:128], ref[:128], rtol=0, atol=DCT_ATOL)
    shape = [129, 130]  # kurtosis, skewness
    np.testing.assert_allclose(ours[shape], ref[shape], rtol=0, atol=SHAPE_ATOL)
    rest = [c for c in range(128, N_FEATURES) if c not in shape]
    np.testing.assert_allclose(ours[rest], ref[rest], rtol=STAT_RTOL, atol=1e-9)


def test_mel_filterbank_is_librosas_slaney_bank() -> None:
    np.testing.assert_allclose(
        mel_filterbank(), librosa.filters.mel(sr=SR, n_fft=512, n_mels=128, dtype=np.float64), atol=1e-12
    )


def test_a_microphone_at_48_khz_gives_the_features_of_the_same_sound_at_16_khz() -> None:
    rng = np.random.default_rng(5)

    def sound(rate: int) -> np.ndarray:
        t = np.arange(10 * rate) / rate
        tones = 0.05 * np.sin(2 * np.pi * 98.0 * t) + 0.02 * np.sin(2 * np.pi * 1234.0 * t)
        # white noise of the same density per hertz below 8 kHz at both rates
        scale: float = 0.002 * np.sqrt(rate / SR)
        return tones + scale * rng.standard_normal(len(t))

    at48, at16 = clip_features(sound(48_000), 48_000), clip_features(sound(SR), SR)
    bands48 = scipy.fft.idct(at48[:128], type=2, norm="ortho")
    bands16 = scipy.fft.idct(at16[:128], type=2, norm="ortho")
    below_7k = mel_filterbank()[:, : 7000 * 512 // SR].sum(axis=1) > 0.99 * mel_filterbank().sum(axis=1)
    diff = np.abs(bands48 - bands16)[below_7k]
    # the same spectrum, up to the two noise draws (a wrong rate would move the tones by bands: >> 1)
    assert diff.max() < 0.2, diff
    assert diff.mean() < 0.05, diff
    assert at48[128] == pytest.approx(at16[128], rel=0.02)  # RMS


def test_a_clip_shorter_than_one_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 512 samples"):
        clip_features(np.zeros(100), SR)
