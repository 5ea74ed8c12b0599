"""Giving freed heap memory back to the system after a large, short computation (a calibration).

The agent runs under a memory cap (`MemoryMax=` in deploy/edge-agent.service). numpy's arrays are
freed when a computation ends, but glibc keeps much of what it freed: blocks of a few hundred KB
to 32 MB come from its heaps once it has raised its mmap threshold, and each worker thread of the
asyncio executor allocates from an arena of its own, so the free space is fragmented across
arenas the allocator does not shrink by itself. The process's RSS then stays near the peak of the
computation. `malloc_trim(0)` returns the free pages of every arena to the kernel: measured on a
day's pump calibration, it released ~70 of ~100 MiB retained.

Elsewhere (musl, macOS, Windows, a Python not linked against glibc) there is no `malloc_trim`:
`release_memory` then does nothing. It never raises.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _find_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols the process is linked with: its C library's
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> bool:
    """Ask the C library to give its free heap memory back to the system (glibc `malloc_trim(0)`,
    all arenas). True when it said it released some; False when it released none, or where it
    cannot (not glibc). Takes a few milliseconds; call it after a computation that allocated
    much more than the process keeps, not per sample."""
    trim = _find_trim()
    if trim is None:
        return False
    try:
        return bool(trim(0))
    except Exception:  # noqa: BLE001 - giving memory back is a courtesy: it must never fail a caller
        return False
