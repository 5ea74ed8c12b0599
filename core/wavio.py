"""Read any PCM or float WAV a field technician may bring: 8/16/24/32-bit integer or float, any rate,
any channel count, as float64 in -1..1. Every problem is one `WavError` with a plain reason.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.io import wavfile


class WavError(ValueError):
    """The file is not a WAV this tool can read."""


def read_wav(path: Path) -> tuple[npt.NDArray[np.float64], int]:
    """Samples shaped (frames, channels) scaled to -1..1, and the sample rate."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks: read past them
            rate, data = wavfile.read(path)
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavError(f"{path}: is a directory") from None
    # scipy's reader fails on garbage with whatever its parser trips over, including an
    # UnboundLocalError when no 'fmt ' chunk precedes 'data'.
    except (ValueError, EOFError, OSError, struct.error, IndexError, UnboundLocalError) as exc:
        raise WavError(f"{path}: not a readable WAV file ({exc})") from exc
    if data.size == 0:
        raise WavError(f"{path}: contains no samples")
    x = np.asarray(data)
    if x.dtype == np.uint8:
        out = (x.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.integer):
        out = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    elif np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise WavError(f"{path}: contains NaN or infinite samples")
    else:
        raise WavError(f"{path}: unsupported sample type {x.dtype}")
    if out.ndim == 1:
        out = out[:, None]
    if rate <= 0:
        raise WavError(f"{path}: invalid sample rate {rate}")
    return out, int(rate)
