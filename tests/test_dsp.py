"""core/dsp.py gives scipy's numbers, and the live audio path imports neither scipy.signal nor scipy.fft.

Each function is compared with the scipy function it stands in for, on random signals: the same
shapes, and values within TOL relative to the largest magnitude of scipy's result (they differ only
in the order of floating-point sums: about 1e-15 measured; windows and firwin are bit-identical).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.fft
from scipy import signal

from water_edge.core import dsp
from water_edge.models.leak.levels import Decimator

TOL = 1e-12
ROOT = Path(__file__).resolve().parents[1]
# (from, to) as the call sites meet them: the leak features' 8 kHz, the machine-sound 16 kHz
RATE_PAIRS = [(16000, 8000), (48000, 8000), (44100, 16000), (8000, 16000), (22050, 16000), (44100, 8000)]
LENGTHS = [1, 2, 7, 100, 441, 1000, 4097, 22051]


def _close(ours: npt.ArrayLike, theirs: npt.ArrayLike, tol: float = TOL) -> float:
    a, b = np.asarray(ours), np.asarray(theirs)
    assert a.shape == b.shape
    if b.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-300)
    err = float(np.max(np.abs(a - b))) / scale
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"
    return err


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261207)


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 400, 511, 4096])
def test_windows_are_scipys(n: int) -> None:
    assert np.array_equal(dsp.hann(n), signal.get_window("hann", n, fftbins=True))
    assert np.array_equal(dsp.hann(n, sym=True), signal.get_window("hann", n, fftbins=False))
    assert np.array_equal(dsp.hamming(n), signal.get_window("hamming", n, fftbins=False))
    assert np.array_equal(dsp.hamming(n, sym=False), signal.get_window("hamming", n, fftbins=True))
    _close(dsp.kaiser(n, 5.0), signal.get_window(("kaiser", 5.0), n, fftbins=False), 1e-15)
    _close(dsp.kaiser(n, 8.6, sym=False), signal.get_window(("kaiser", 8.6), n, fftbins=True), 1e-15)


@pytest.mark.parametrize("numtaps", [1, 3, 31, 127, 128, 401])
@pytest.mark.parametrize("cutoff", [0.05, 0.9 / 6, 0.9 / 2, 0.5, 0.99])
def test_firwin_is_scipys(numtaps: int, cutoff: float) -> None:
    _close(dsp.firwin(numtaps, cutoff), signal.firwin(numtaps, cutoff), 1e-15)
    _close(
        dsp.firwin(numtaps, cutoff, kaiser_beta=5.0),
        signal.firwin(numtaps, cutoff, window=("kaiser", 5.0)),
        1e-15,
    )


def test_firwin_refuses_what_it_does_not_design() -> None:
    for cutoff in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="cutoff"):
            dsp.firwin(31, cutoff)
    with pytest.raises(ValueError, match="numtaps"):
        dsp.firwin(0, 0.5)


@pytest.mark.parametrize("chunks", [[16000], [1000, 7, 1, 126, 127, 128, 5000], [3, 50, 1, 2]])
@pytest.mark.parametrize("ratio", [2, 3, 6])
def test_fir_filter_streams_as_lfilter_with_state(
    rng: np.random.Generator, chunks: list[int], ratio: int
) -> None:
    taps = signal.firwin(127, 0.9 / ratio)
    ours, theirs = np.zeros(126), np.zeros(126)
    outs: list[npt.NDArray[np.float64]] = []
    x_all = rng.standard_normal(sum(chunks))
    start = 0
    for size in chunks:
        x = x_all[start : start + size]
        start += size
        y1, ours = dsp.fir_filter(taps, x, ours)
        y2, theirs = signal.lfilter(taps, 1.0, x, zi=theirs)
        _close(y1, y2)
        _close(ours, theirs)
        outs.append(y1)
    # chunked = one pass over the whole signal
    _close(np.concatenate(outs), signal.lfilter(taps, 1.0, x_all))


def test_fir_filter_empty_chunk_keeps_state() -> None:
    taps = dsp.firwin(5, 0.5)
    zi = np.arange(4.0)
    y, zf = dsp.fir_filter(taps, np.zeros(0), zi)
    assert y.shape == (0,)
    assert np.array_equal(zf, zi)
    with pytest.raises(ValueError, match="zi"):
        dsp.fir_filter(taps, np.ones(3), np.zeros(3))


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_decimator_is_firwin_lfilter_and_every_rth_sample(rng: np.random.Generator, rate: int) -> None:
    """models/leak/levels.Decimator, chunk by chunk, against the scipy code it replaced."""
    ratio = rate // 8000
    taps = signal.firwin(127, 0.9 / ratio)
    x = rng.standard_normal(rate * 2 + 333)
    expected = signal.lfilter(taps, 1.0, x)[::ratio]
    dec = Decimator(rate)
    got = np.concatenate([dec.feed(x[s : s + 997]) for s in range(0, x.size, 997)])
    _close(got, expected)


@pytest.mark.parametrize(("src", "dst"), RATE_PAIRS)
@pytest.mark.parametrize("n", LENGTHS)
def test_resample_poly_is_scipys(rng: np.random.Generator, src: int, dst: int, n: int) -> None:
    ratio = Fraction(dst, src).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    x = rng.standard_normal(n)
    ours = dsp.resample_poly(x, up, down)
    assert ours.shape == (-(-n * up // down),)
    _close(ours, signal.resample_poly(x, up, down))
    for channels in (1, 2):
        x2 = rng.standard_normal((n, channels))
        _close(dsp.resample_poly(x2, up, down), signal.resample_poly(x2, up, down, axis=0))


@pytest.mark.parametrize(("up", "down"), [(1, 1), (4, 4), (3, 2), (2, 3), (640, 441), (6, 4)])
def test_resample_poly_other_ratios(rng: np.random.Generator, up: int, down: int) -> None:
    x = rng.standard_normal(5003)
    _close(dsp.resample_poly(x, up, down), signal.resample_poly(x, up, down))
    x2 = rng.standard_normal((2, 777))
    _close(dsp.resample_poly(x2, up, down, axis=1), signal.resample_poly(x2, up, down, axis=1))


def test_resample_poly_of_a_tone_stays_a_tone() -> None:
    """Not only scipy's numbers: a 1 kHz tone at 44.1 kHz is a 1 kHz tone at 16 kHz."""
    t = np.arange(44100) / 44100
    y = dsp.resample_poly(np.sin(2 * np.pi * 1000 * t), 160, 441)
    ref = np.sin(2 * np.pi * 1000 * np.arange(y.size) / 16000)
    assert np.max(np.abs(y - ref)[200:-200]) < 5e-3  # the Kaiser (beta 5) passband ripple


@pytest.mark.parametrize("n", [1, 3, 100, 4095, 4096, 4097, 10000, 16000, 44100, 48000])
@pytest.mark.parametrize("nperseg", [255, 256, 4096, 8192])
def test_welch_is_scipys(rng: np.random.Generator, n: int, nperseg: int) -> None:
    """The audio driver's call: (samples, channels) along axis 0; and 1-D."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy's "nperseg is greater than signal length"
        for shape in [(n,), (n, 1), (n, 2)]:
            x = rng.standard_normal(shape)
            f1, p1 = dsp.welch(x, fs=48000, nperseg=nperseg, axis=0)
            f2, p2 = signal.welch(x, fs=48000, nperseg=nperseg, axis=0, detrend=False)
            assert np.array_equal(f1, f2)
            _close(p1, p2)
        x = rng.standard_normal((2, n))
        _, p1 = dsp.welch(x, fs=8000, nperseg=nperseg)
        _, p2 = signal.welch(x, fs=8000, nperseg=nperseg, detrend=False)
        _close(p1, p2)


def test_welch_of_white_noise_is_its_variance_over_nyquist(rng: np.random.Generator) -> None:
    _, p = dsp.welch(rng.standard_normal(200_000) * 0.5, fs=16000, nperseg=1024)
    assert abs(float(np.mean(p[1:-1])) / (0.25 / 8000) - 1) < 0.02


@pytest.mark.parametrize("n", [1, 2, 7, 128])
def test_dct_and_idct_are_scipys(rng: np.random.Generator, n: int) -> None:
    x = rng.standard_normal((5, n))
    for axis in (0, 1, -1):
        _close(dsp.dct_ortho(x, axis=axis), scipy.fft.dct(x, type=2, norm="ortho", axis=axis))
        _close(dsp.idct_ortho(x, axis=axis), scipy.fft.idct(x, type=2, norm="ortho", axis=axis))
    _close(dsp.dct_ortho(x[0]), scipy.fft.dct(x[0], type=2, norm="ortho"))
    _close(dsp.idct_ortho(dsp.dct_ortho(x[0])), x[0])


def test_the_live_audio_path_imports_no_scipy() -> None:
    """What `edge-agent run` imports for audio devices with the leak and machine-sound models, and
    what they run on audio (band levels, decimation, resampling, clip features), in a fresh
    interpreter: no part of scipy loads (scipy.signal alone was ~50 MB of a 256 MB unit)."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import water_edge.agent.cli, water_edge.agent.runtime, water_edge.agent.assembly
        import water_edge.drivers.audio.driver
        import water_edge.models.leak.factory, water_edge.models.leak.processor
        import water_edge.models.machine_sound.factory, water_edge.models.machine_sound.processor
        from water_edge.drivers.audio.levels import LevelMeter, NightTracker
        from water_edge.drivers.audio.window import Clock
        from water_edge.drivers.audio.ring import Chunk
        from water_edge.models.leak import features as leak_features
        from water_edge.models.leak.levels import Decimator
        from water_edge.models.machine_sound import detector, features as ms_features

        x = np.random.default_rng(1).standard_normal((48000 * 2, 2)).astype(np.float32) * 0.1
        clock = Clock(0, 48000)
        meter = LevelMeter("a", clock, ["A", "B"], interval_s=1, bands_hz=[31.5, 1000.0],
                           calibration_db=None, night=NightTracker("02:00", "04:00", 7, 2))
        assert meter.feed([Chunk(0, x)])
        Decimator(48000).feed(x[:, 0].astype(np.float64))
        leak_features.prepare(x[:44100, 0], 44100)
        f = ms_features.clip_features(x[:44100, 0], 44100)
        detector.to_bands(f[None, :])
        detector.shape_basis()
        loaded = sorted(m for m in sys.modules if m == "scipy" or m.startswith("scipy."))[:5]
        print(loaded)
        assert not loaded, loaded
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"
