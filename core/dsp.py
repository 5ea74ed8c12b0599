"""The few signal-processing functions the gateway's audio path needs, in numpy alone.

`import scipy.signal` costs ~50 MB of anonymous memory on its own (it pulls in scipy.linalg,
.sparse, .special, .stats, .ndimage, .interpolate, .optimize), more than all the rest of the
agent with its audio driver; `scipy.fft` another ~16 MB. The live path (the audio driver's band
levels, the leak and machine-sound processors) uses only what is here, so it imports neither. The
offline commands and the training code still use scipy; tests/test_dsp.py checks that each
function here gives scipy's numbers (within 1e-12 relative to the signal's scale), with the same
lengths, segments and output alignment:

- `hann`, `hamming`, `kaiser`: scipy.signal.windows' formulas (`hann(n)` is
  `get_window("hann", n)`: periodic);
- `firwin`: `scipy.signal.firwin(numtaps, cutoff)` low-pass, scaled to unit gain at 0 Hz;
- `fir_filter`: `scipy.signal.lfilter(taps, 1.0, x, zi=zi)` (an FIR carried across chunks);
- `resample_poly`: `scipy.signal.resample_poly(x, up, down)` with its default Kaiser (beta 5)
  design, computed per polyphase branch (no zero-stuffed full-rate convolution);
- `welch`: `scipy.signal.welch(x, fs, nperseg=..., detrend=False, axis=...)`: periodic Hann,
  50 % overlap, density scaling, one-sided, mean over segments;
- `dct_ortho`, `idct_ortho`: `scipy.fft.dct` / `idct` with `type=2, norm="ortho"`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _general_hamming(n: int, alpha: float, *, sym: bool) -> F64:
    """scipy.signal.windows.general_hamming: alpha - (1 - alpha) cos, over n (+1 when periodic)."""
    if n < 0:
        raise ValueError(f"window length must be non-negative, got {n}")
    if n <= 1:
        return np.ones(n)
    m = n if sym else n + 1
    fac = np.linspace(-np.pi, np.pi, m)
    w: F64 = alpha + (1.0 - alpha) * np.cos(fac)
    return w if sym else w[:-1]


def hann(n: int, *, sym: bool = False) -> F64:
    """The Hann window; periodic (for spectral analysis) unless `sym`, as `get_window("hann", n)`."""
    return _general_hamming(n, 0.5, sym=sym)


def hamming(n: int, *, sym: bool = True) -> F64:
    """The Hamming window; symmetric (for filter design) unless `sym` is False."""
    return _general_hamming(n, 0.54, sym=sym)


def kaiser(n: int, beta: float, *, sym: bool = True) -> F64:
    """The Kaiser window of shape `beta`; symmetric (for filter design) unless `sym` is False."""
    if n < 0:
        raise ValueError(f"window length must be non-negative, got {n}")
    if n <= 1:
        return np.ones(n)
    m = n if sym else n + 1
    k = np.arange(m, dtype=np.float64)
    alpha = (m - 1) / 2.0
    w: F64 = np.i0(beta * np.sqrt(1 - ((k - alpha) / alpha) ** 2.0)) / np.i0(float(beta))
    return w if sym else w[:-1]


def firwin(numtaps: int, cutoff: float, *, kaiser_beta: float | None = None) -> F64:
    """A linear-phase low-pass FIR of `numtaps` taps by the window method: `cutoff` relative to
    Nyquist (0 < cutoff < 1), a symmetric Hamming window (a Kaiser window when `kaiser_beta` is
    given), scaled so that its gain at 0 Hz is exactly 1."""
    if numtaps < 1:
        raise ValueError(f"numtaps must be at least 1, got {numtaps}")
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be between 0 and 1 (Nyquist), got {cutoff}")
    m = np.arange(numtaps, dtype=np.float64) - 0.5 * (numtaps - 1)
    h: F64 = cutoff * np.sinc(cutoff * m)
    h *= hamming(numtaps) if kaiser_beta is None else kaiser(numtaps, kaiser_beta)
    h /= np.sum(h)
    return h


def fir_filter(taps: F64, x: F64, zi: F64) -> tuple[F64, F64]:
    """`lfilter(taps, 1.0, x, zi=zi)` for 1-D `x`: the filtered chunk and the state to pass with the
    next chunk (`zi` of len(taps) - 1; zeros to start)."""
    m = taps.size - 1
    if zi.shape != (m,):
        raise ValueError(f"zi must have shape ({m},), got {zi.shape}")
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0), np.array(zi, dtype=np.float64)
    full: F64 = np.convolve(taps, x)  # x.size + m samples: this chunk's outputs, then its tail
    full[:m] += zi
    return full[: x.size], full[x.size :]


def _polyphase_filter(up: int, down: int) -> tuple[F64, int]:
    """resample_poly's default filter, times `up`, and its half length."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, kaiser_beta=5.0)
    return h * up, half_len


def resample_poly(x: npt.ArrayLike, up: int, down: int, *, axis: int = 0) -> F64:
    """`x` resampled by up/down along `axis`, as `scipy.signal.resample_poly(x, up, down, axis=axis)`
    computes it: the same Kaiser-windowed low-pass (beta 5, 20 * max(up, down) + 1 taps, cutoff
    1 / max(up, down)), zeros beyond both ends, ceil(n * up / down) samples, output i at input
    position i * down / up. Each output is the dot product of the input with one polyphase branch
    of the filter: ceil(taps / up) multiplications, however large `up` is."""
    if int(up) != up or int(down) != down or up < 1 or down < 1:
        raise ValueError(f"up and down must be positive integers, got {up} and {down}")
    y = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    g = math.gcd(int(up), int(down))
    up, down = int(up) // g, int(down) // g
    if up == down == 1:
        return np.moveaxis(y.copy(), 0, axis)
    n_in = y.shape[0]
    rest = y.shape[1:]
    n_out = -(-n_in * up // down)
    out = np.zeros((n_out, *rest))
    if n_out == 0:
        return np.moveaxis(out, 0, axis)
    h, half_len = _polyphase_filter(up, down)
    taps = -(-h.size // up)  # the longest branch
    branches = np.zeros(taps * up)
    branches[: h.size] = h
    # branch p, reversed: its coefficient for input k - m (m = 0 .. taps - 1) at column taps - 1 - m
    rev = branches.reshape(taps, up).T[:, ::-1]
    # Output i sits at position t = half_len + i * down of the up-sampled, filtered signal: it is
    # sum_m h[t % up + m * up] * x[t // up - m]. Input index j lies at j + taps - 1 in `padded`.
    last = (half_len + (n_out - 1) * down) // up
    padded = np.zeros((taps - 1 + max(n_in, last + 1), *rest))
    padded[taps - 1 : taps - 1 + n_in] = y
    frames = np.lib.stride_tricks.sliding_window_view(padded, taps, axis=0)  # (_, *rest, taps)
    for r in range(min(up, n_out)):
        t = half_len + r * down
        count = -(-(n_out - r) // up)
        # outputs r, r + up, r + 2 up, ...: the same branch, the input `down` samples further on
        out[r::up] = frames[t // up : t // up + (count - 1) * down + 1 : down] @ rev[t % up]
    return np.moveaxis(out, 0, axis)


def welch(x: npt.ArrayLike, fs: float, nperseg: int, *, axis: int = -1) -> tuple[F64, F64]:
    """`scipy.signal.welch(x, fs, nperseg=nperseg, detrend=False, axis=axis)`: the power spectral
    density (units^2 / Hz) of `x` along `axis`, and its frequencies. Segments of `nperseg` samples
    (the whole signal when it is shorter) start every nperseg - nperseg // 2 samples, as many as fit
    whole; each is windowed by a periodic Hann window, its one-sided periodogram scaled by
    1 / (fs * sum(window^2)) and the segments' periodograms averaged. The frequency axis takes the
    place of `axis`."""
    data = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    n = data.shape[-1]
    if n == 0:
        return np.empty(np.shape(x)), np.empty(np.shape(x))
    if nperseg < 1:
        raise ValueError(f"nperseg must be a positive integer, got {nperseg}")
    nperseg = min(int(nperseg), n)
    noverlap = nperseg // 2
    hop = nperseg - noverlap
    count = (n - noverlap) // hop
    win = hann(nperseg)
    segments = np.lib.stride_tricks.sliding_window_view(data, nperseg, axis=-1)[..., ::hop, :][..., :count, :]
    spec = np.fft.rfft(segments * win, axis=-1)
    power = spec.real * spec.real + spec.imag * spec.imag
    power *= 1.0 / (fs * float(np.sum(win * win)))
    power[..., 1 : -1 if nperseg % 2 == 0 else None] *= 2.0
    psd: F64 = np.moveaxis(power.mean(axis=-2), -1, axis)
    freqs = np.fft.rfftfreq(nperseg, 1.0 / fs).astype(np.float64, copy=False)
    return freqs, psd


def _shifts(n: int, sign: float, ndim: int, axis: int) -> npt.NDArray[np.complex128]:
    """exp(sign * i pi k / (2 n)), k = 0 .. n - 1, shaped to broadcast along `axis`."""
    shape = [1] * ndim
    shape[axis] = n
    turns: npt.NDArray[np.complex128] = np.exp(sign * 1j * np.pi * np.arange(n) / (2 * n))
    return turns.reshape(shape)


def _weights(n: int, ndim: int, axis: int) -> F64:
    """The orthonormal scale of DCT-II coefficient k: sqrt(1 / n) for k = 0, sqrt(2 / n) above."""
    w = np.full(n, math.sqrt(2.0 / n))
    w[0] = math.sqrt(1.0 / n)
    shape = [1] * ndim
    shape[axis] = n
    return w.reshape(shape)


def dct_ortho(x: npt.ArrayLike, axis: int = -1) -> F64:
    """`scipy.fft.dct(x, type=2, norm="ortho", axis=axis)`: X_k = w_k sum_n x_n cos(pi k (2n + 1) / 2N),
    by one FFT of length 2N: sum_n x_n e^{-i pi k n / N} turned by e^{-i pi k / 2N}."""
    a = np.asarray(x, dtype=np.float64)
    axis = axis % a.ndim
    n = a.shape[axis]
    spec = np.fft.rfft(a, 2 * n, axis=axis)
    spec = np.take(spec, np.arange(n), axis=axis) * _shifts(n, -1.0, a.ndim, axis)
    out: F64 = spec.real * _weights(n, a.ndim, axis)
    return out


def idct_ortho(x: npt.ArrayLike, axis: int = -1) -> F64:
    """`scipy.fft.idct(x, type=2, norm="ortho", axis=axis)`, the inverse of `dct_ortho` (an
    orthonormal DCT-III): x_n = sum_k w_k X_k cos(pi k (2n + 1) / 2N), by one inverse FFT of length
    2N of the coefficients turned by e^{i pi k / 2N}."""
    a = np.asarray(x, dtype=np.float64)
    axis = axis % a.ndim
    n = a.shape[axis]
    coeffs = (a * _weights(n, a.ndim, axis)) * _shifts(n, 1.0, a.ndim, axis)
    full = np.fft.ifft(coeffs, 2 * n, axis=axis) * (2 * n)
    out: F64 = np.take(full, np.arange(n), axis=axis).real
    return out
