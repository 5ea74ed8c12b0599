"""Read any PCM or float WAV a field technician may bring: 8/16/24/32-bit integer or float, any rate,
any channel count, as float64 in -1..1. Every problem is one `WavError` with a plain reason.

`open_wav` gives the samples as stored, memory-mapped where the format allows (all but 24-bit PCM),
so a night-long recording can be read a piece at a time with `to_float`; `read_wav` is both at once.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt


class WavError(ValueError):
    """The file is not a WAV this tool can read."""


def open_wav(path: Path) -> tuple[np.ndarray[Any, Any], int]:
    """The samples as stored, shaped (frames, channels) (a memory map unless 24-bit PCM), and the rate."""
    # Here, not at the top: the agent's audio driver imports this module for its file source, and
    # scipy.io brings scipy.sparse (~16 MB of a gateway's memory) to an agent that never reads a WAV.
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks: read past them
            try:
                rate, data = wavfile.read(path, mmap=True)
            except ValueError as exc:
                if "greater than file size" in str(exc):
                    raise WavError(f"{path}: truncated WAV file (data runs past its end)") from exc
                if "not compatible" not in str(exc):
                    raise
                rate, data = wavfile.read(path, mmap=False)  # 24-bit PCM cannot be mapped
    except WavError:
        raise
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavError(f"{path}: is a directory") from None
    except PermissionError:
        raise WavError(f"{path}: cannot read (permission denied)") from None
    except ZeroDivisionError:  # scipy divides by the header's channel count and bytes per frame
        raise WavError(
            f"{path}: not a readable WAV file (its header says 0 channels or 0 bytes per frame)"
        ) from None
    # scipy's reader fails on garbage with whatever its parser trips over, including an
    # UnboundLocalError when no 'fmt ' chunk precedes 'data', and numpy's TypeError for a sample
    # type its header's frame size makes up (float samples 35 bytes wide: '<f35').
    except (ValueError, EOFError, OSError, struct.error, IndexError, UnboundLocalError, TypeError) as exc:
        raise WavError(f"{path}: not a readable WAV file ({exc})") from exc
    if data.size == 0:
        raise WavError(f"{path}: contains no samples")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise WavError(f"{path}: unsupported sample type {data.dtype}")
    if rate <= 0:
        raise WavError(f"{path}: invalid sample rate {rate}")
    return (data if data.ndim == 2 else data.reshape(-1, 1)), int(rate)


def to_float(block: np.ndarray[Any, Any], path: Path | str = "") -> npt.NDArray[np.float64]:
    """Stored samples (any slice of `open_wav`'s) as float64 in -1..1."""
    x = np.asarray(block)
    if x.dtype == np.uint8:
        return (x.astype(np.float64) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    out = x.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise WavError(f"{path}: contains NaN or infinite samples")
    return out


def frames(
    raw: np.ndarray[Any, Any], start: int, stop: int, file: BinaryIO | None = None
) -> np.ndarray[Any, Any]:
    """Frames [start, stop) of `open_wav`'s array, as stored. From a memory map they are read from the
    file (`file`, that file kept open, else by its name), not through the map: pages touched through
    a map stay in the process's memory, and a page past the end of a file cut short since it was
    opened (`cp` over it) kills the process (SIGBUS); read, a file that no longer holds them is a
    `WavError`."""
    if not isinstance(raw, np.memmap) or raw.filename is None:
        return raw[start:stop]
    channels = raw.shape[1]
    stop = min(stop, raw.shape[0])
    offset = raw.offset + start * channels * raw.dtype.itemsize
    count = max(0, stop - start) * channels
    if file is None:
        block = np.fromfile(raw.filename, dtype=raw.dtype, count=count, offset=offset)
    else:
        file.seek(offset)
        block = np.fromfile(file, dtype=raw.dtype, count=count)
    if block.size < count:
        raise WavError(
            f"{raw.filename}: now ends before frame {start + block.size // channels} of {raw.shape[0]}: "
            "the file changed while it was read"
        )
    return block.reshape(-1, channels)


def read_wav(path: Path) -> tuple[npt.NDArray[np.float64], int]:
    """Samples shaped (frames, channels) scaled to -1..1, and the sample rate."""
    data, rate = open_wav(path)
    return to_float(data, path), rate
