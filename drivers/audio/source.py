"""What the driver needs from an audio source (device, file or stream), and the shared counters.

A source is opened in a worker thread (it may block on a device or a socket), learns its sample
rate and channel count, then `start(sink)` hands every captured block, as float32 (n, channels)
with the absolute index of its first frame, to `sink` from its own thread. Frames a source knows
it lost (a device overflow, a gap in the stream) simply do not appear: the index jumps.
`health()` reports the source's own counters (`drivers.audio.health.SourceHealth`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from water_edge.core.reading import now_ns
from water_edge.drivers.audio.health import Gap, GapCounts, SourceHealth
from water_edge.drivers.audio.ring import Frames
from water_edge.drivers.audio.window import Clock

Sink = Callable[[Frames, int], None]


@dataclass
class GapLog:
    """Dropped frames by cause, and the latest gaps (each one an event-worthy condition)."""

    frames: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    recent: deque[Gap] = field(default_factory=lambda: deque(maxlen=20))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cause: str, frames: int, ts_ns: int | None = None) -> None:
        with self._lock:
            self.frames[cause] = self.frames.get(cause, 0) + frames
            self.events[cause] = self.events.get(cause, 0) + 1
            self.recent.append(Gap(ts_ns or now_ns(), cause, frames))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.frames.values())

    def snapshot(self) -> GapCounts:
        with self._lock:
            return GapCounts(
                dropped_frames=sum(self.frames.values()),
                dropped_by_cause=dict(self.frames),
                gaps=sum(self.events.values()),
                recent_gaps=tuple(self.recent),
            )


class Source(Protocol):
    sample_rate: int
    channels: int
    clock: Clock
    # Set by the source's thread when it fails; the driver raises DriverIOError with it.
    error: str | None
    # A file played once has ended; nothing more will come and that is not a failure.
    finished: bool

    def open(self) -> None: ...

    def start(self, sink: Sink) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> SourceHealth: ...


def to_float32(data: np.ndarray[Any, Any]) -> Frames:
    """PCM or float samples -> float32 with full scale +-1.0."""
    kind, size = data.dtype.kind, data.dtype.itemsize
    if kind == "f":
        return np.asarray(data, dtype=np.float32)
    if kind == "i":
        return (data.astype(np.float32) / float(1 << (8 * size - 1))).astype(np.float32)
    if kind == "u" and size == 1:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise ValueError(f"unsupported sample type {data.dtype}")


def zero_nonfinite(frames: Frames) -> npt.NDArray[np.intp]:
    """Set NaN and infinite samples to 0 in place and return the rows (frames) that held any.

    They carry no sound (a float source's garbage: a broken converter, a damaged file) and would
    make every level, feature and baseline computed over them NaN; read as 0, an input sending
    nothing else reads as digital silence, which the models report as a lost signal."""
    finite = np.isfinite(frames)
    if finite.all():
        return np.zeros(0, dtype=np.intp)
    frames[~finite] = 0.0
    return np.flatnonzero(~finite.all(axis=1))
