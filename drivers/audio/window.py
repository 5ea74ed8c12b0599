"""Cuts the drained frame stream into overlapping analysis windows for the models.

A window never spans a gap: when frames are missing (overflow, overrun, stream loss) the partial
window is discarded and the next one starts after the gap, carrying in `dropped_before` how many
frames were lost since the previous window. Timestamps come from absolute frame indices, so a
window's `start_ts_ns` is exact even after gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from water_edge.drivers.audio.ring import Chunk, Frames


@dataclass(frozen=True, slots=True)
class AudioWindow:
    """`samples` is float32 (n, channels), full scale +-1.0; `samples[0]` was taken at `start_ts_ns`."""

    source: str
    start_ts_ns: int
    sample_rate: int
    samples: Frames
    channel_names: tuple[str, ...]
    dropped_before: int = 0
    # Per channel, the sensor fault its samples show (`drivers.audio.faults`: "silence", "dc",
    # "mains_hum", "clipping", "duplicate", "dropout"), or None; empty when not classified.
    faults: tuple[str | None, ...] = ()

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class Clock:
    """Maps absolute frame indices to UTC ns: index 0 was sampled at `t0_ns`, then one frame every
    1/sample_rate s, until `steer` says how long a frame really lasts from some index on (a sound
    card's clock is a little off: timestamps would drift from the wall clock by seconds a day)."""

    def __init__(self, t0_ns: int, sample_rate: int) -> None:
        self.t0_ns = t0_ns
        self.sample_rate = sample_rate
        # (from index, its ts, ns per frame) of the steered segments: the one before and the latest,
        # swapped as one tuple so a reader on another thread sees a consistent pair.
        self._steered: tuple[tuple[int, int, float], tuple[int, int, float]] | None = None

    def ts(self, index: int) -> int:
        steered = self._steered
        if steered is None:
            return self.t0_ns + index * 1_000_000_000 // self.sample_rate
        before, latest = steered
        start, start_ns, period = latest if index >= latest[0] else before
        return start_ns + round((index - start) * period)

    def steer(self, index: int, period_ns: float) -> None:
        """From frame `index` on, a frame lasts `period_ns`; the timestamps stay continuous."""
        here = (index, self.ts(index), period_ns)
        steered = self._steered
        before = (0, self.t0_ns, 1e9 / self.sample_rate) if steered is None else steered[1]
        self._steered = (before, here)

    def restart(self, index: int, ts_ns: int) -> None:
        """Frame `index` was sampled at `ts_ns` (the wall clock stepped): count from there."""
        self._steered = ((index, ts_ns, 1e9 / self.sample_rate), (index, ts_ns, 1e9 / self.sample_rate))


class Windower:
    def __init__(self, source: str, clock: Clock, channels: Sequence[str], window: int, hop: int) -> None:
        if not 0 < hop <= window:
            raise ValueError("need 0 < hop <= window")
        self.source = source
        self.clock = clock
        self.channel_names = tuple(channels)
        self.window = window
        self.hop = hop
        self._buf: Frames = np.zeros((window, len(channels)), dtype=np.float32)
        self._fill = 0
        self._buf_start = 0  # absolute index of _buf[0] (meaningful while _fill > 0)
        self._expected: int | None = None  # absolute index of the next frame
        self._dropped = 0
        self.windows = 0

    def feed(self, chunks: Sequence[Chunk]) -> list[AudioWindow]:
        out: list[AudioWindow] = []
        for chunk in chunks:
            if self._expected is not None and chunk.start != self._expected:
                self._dropped += max(0, chunk.start - self._expected)
                self._fill = 0
            if self._fill == 0:
                self._buf_start = chunk.start
            self._expected = chunk.start + len(chunk.frames)
            frames = chunk.frames
            while len(frames):
                take = min(self.window - self._fill, len(frames))
                self._buf[self._fill : self._fill + take] = frames[:take]
                self._fill += take
                frames = frames[take:]
                if self._fill == self.window:
                    out.append(self._emit())
        return out

    def _emit(self) -> AudioWindow:
        window = AudioWindow(
            self.source,
            self.clock.ts(self._buf_start),
            self.clock.sample_rate,
            self._buf.copy(),
            self.channel_names,
            self._dropped,
        )
        self._dropped = 0
        self.windows += 1
        keep = self.window - self.hop
        self._buf[:keep] = self._buf[self.hop :]
        self._fill = keep
        self._buf_start += self.hop
        return window
