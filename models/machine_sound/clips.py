"""Clips from an audio device's analysis windows: the new frames of each window, averaged to mono,
joined until a clip is full.

The audio driver delivers overlapping windows (`window_s` long, one every `hop_s`; see
`drivers.audio.driver`), each with the UTC time of its first frame and never spanning a gap. The
assembler keeps the time up to which it has taken audio and appends only what a window adds after
that, so any window and hop give the same clips; a window that starts after that time (frames were
lost) starts a new clip, and so does a change of sample rate or channels.

A window the driver marked with a sensor fault on a chosen channel (`AudioWindow.faults`) may not
be the machine's sound: mains hum only, a copy of another channel, a dropout (50 ms of one value:
its silent frames would move the clip's level statistics), or one channel dead while another is
heard (the mix would be the machine 6 dB down) abandon the clip and are left out (`faulty`).
Digital silence or DC on every chosen channel is kept, in clips of its own, for the processor to
report the microphone not heard; a clip never mixes such audio with sound. A window
saturated at full scale (`clipping`) is the machine, distorted: its clip is marked `saturated`, to
be scored (a machine that loud may be failing) but never learnt from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from water_edge.core.processor import AudioWindowLike

NS = 1_000_000_000
_DEAD = ("silence", "dc")  # the driver's faults of an input sending nothing (`processor._silent`)
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Clip:
    start_ts_ns: int
    sample_rate: int
    samples: F32  # mono, full scale +-1
    saturated: bool = False  # a window of it was saturated at full scale: score, never learn


class ClipAssembler:
    """Feed windows in time order; get back each clip as it completes."""

    def __init__(self, clip_s: float, channels: Sequence[str] | None = None) -> None:
        self.clip_s = clip_s
        self.channels = list(channels) if channels else None
        self.gaps = 0  # clips abandoned because audio was lost inside them
        self.faulty = 0  # windows left out, and clips abandoned, for a sensor fault
        self._silent: bool | None = None  # the clip being joined is of a dead input (silence, DC)
        self._saturated = False  # a window of the clip being joined was saturated
        self._parts: list[F32] = []
        self._have = 0
        self._start_ns = 0
        self._end_ns: int | None = None  # time up to which audio has been taken
        self._rate = 0
        self._columns: list[int] | None = None

    def _select(self, window: AudioWindowLike) -> list[int]:
        names = list(window.channel_names)
        if self.channels is None:
            return list(range(len(names)))
        missing = [c for c in self.channels if c not in names]
        if missing:
            raise ValueError(f"channels {', '.join(missing)} not in the device's {', '.join(names)}")
        return [names.index(c) for c in self.channels]

    def _reset(self) -> None:
        if self._have:
            self.gaps += 1
        self._parts, self._have, self._end_ns, self._saturated = [], 0, None, False

    def feed(self, window: AudioWindowLike) -> list[Clip]:
        rate = int(window.sample_rate)
        samples = window.samples
        if rate != self._rate:
            self._reset()
            self._rate, self._columns = rate, None
        if self._columns is None:
            self._columns = self._select(window)
        faults = tuple(getattr(window, "faults", ()) or ())
        kinds = [faults[c] if c < len(faults) else None for c in self._columns]
        dead = [k in _DEAD for k in kinds]
        if any(k not in (None, "clipping", *_DEAD) for k in kinds) or (any(dead) and not all(dead)):
            self.faulty += 1 + (self._have > 0)
            self._parts, self._have, self._end_ns, self._saturated = [], 0, None, False
            return []
        silent = all(dead)
        if self._silent is not None and silent != self._silent and self._have:
            self.faulty += 1  # sound and a dead input never share a clip
            self._parts, self._have, self._end_ns, self._saturated = [], 0, None, False
        self._silent = silent
        saturated = "clipping" in kinds
        start = int(window.start_ts_ns)
        skip = 0
        if self._end_ns is not None:
            skip = round((self._end_ns - start) * rate / NS)
            if skip < 0:  # audio missing between the last window and this one
                self._reset()
                skip = 0
        if skip >= len(samples):  # nothing new: the gateway clock stepped back (a window is never sent twice)
            self._reset()
            skip = 0
        new = samples[skip:, self._columns].mean(axis=1, dtype=np.float64).astype(np.float32)
        if self._end_ns is None:
            self._start_ns = start + round(skip * NS / rate)
        self._end_ns = start + round(len(samples) * NS / rate)
        out: list[Clip] = []
        need = round(self.clip_s * rate)
        while len(new):
            take = min(len(new), need - self._have)
            self._parts.append(new[:take])
            self._have += take
            self._saturated |= saturated
            new = new[take:]
            if self._have == need:
                out.append(Clip(self._start_ns, rate, np.concatenate(self._parts), self._saturated))
                self._start_ns += round(need * NS / rate)
                self._parts, self._have, self._saturated = [], 0, False
        return out
