"""A bounded, preallocated frame ring between a capture thread and the asyncio side.

One producer (PortAudio's callback thread, the file player or the stream reader thread) writes
blocks tagged with the absolute index of their first frame; one consumer drains what is there.
Frames are never overwritten: when the consumer is too slow the newest block is dropped and
counted (an overrun), so memory stays at `capacity` frames whatever happens. A jump in absolute
index (a dropped block here, a device overflow, a gap in the stream) starts a new segment, so
the consumer always knows exactly where the gaps are.

The producer copies into the buffer outside the lock: it only writes the free part, which the
consumer does not read until `_written` moves, and the lock guards only the counters.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Frames = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Contiguous frames: `frames[0]` has absolute index `start`."""

    start: int
    frames: Frames


class FrameRing:
    def __init__(self, capacity: int, channels: int) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError("capacity and channels must be positive")
        self.capacity = capacity
        self.channels = channels
        self._buf: Frames = np.zeros((capacity, channels), dtype=np.float32)
        self._lock = threading.Lock()
        self._written = 0  # frames stored since creation (monotonic)
        self._read = 0
        # (stored position, absolute index) where each contiguous segment begins
        self._segments: deque[tuple[int, int]] = deque()
        self._next_abs: int | None = None
        self.overrun_frames = 0
        self.overrun_events = 0

    @property
    def fill(self) -> int:
        with self._lock:
            return self._written - self._read

    def write(self, frames: Frames, start: int) -> int:
        """Store `frames` (first at absolute index `start`); returns how many were dropped."""
        n = len(frames)
        if n == 0:
            return 0
        if frames.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {frames.shape[1]}")
        with self._lock:
            free = self.capacity - (self._written - self._read)
            written = self._written
        if n > free:
            with self._lock:
                self.overrun_frames += n
                self.overrun_events += 1
            return n
        pos = written % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos : pos + first] = frames[:first]
        if first < n:
            self._buf[: n - first] = frames[first:]
        with self._lock:
            if self._next_abs != start:
                self._segments.append((written, start))
            self._written = written + n
            self._next_abs = start + n
        return 0

    def drain(self) -> list[Chunk]:
        """Everything stored since the last drain, split at gaps, as copies."""
        with self._lock:
            end = self._written
            begin = self._read
            segments = list(self._segments)
        if end == begin:
            return []
        chunks: list[Chunk] = []
        for i, (seg_pos, seg_abs) in enumerate(segments):
            seg_end = segments[i + 1][0] if i + 1 < len(segments) else end
            lo, hi = max(seg_pos, begin), min(seg_end, end)
            if lo >= hi:
                continue
            chunks.append(Chunk(seg_abs + (lo - seg_pos), self._copy(lo, hi)))
        with self._lock:
            self._read = end
            # keep the segment the next write may continue, and any begun since
            while len(self._segments) > 1 and self._segments[1][0] <= end:
                self._segments.popleft()
        return chunks

    def _copy(self, lo: int, hi: int) -> Frames:
        a, b = lo % self.capacity, hi % self.capacity
        if a < b or hi - lo == 0:
            return self._buf[a:b].copy()
        return np.concatenate((self._buf[a:], self._buf[:b]))
