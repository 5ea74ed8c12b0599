"""The file source: a WAV recording played into the ring in real time (or faster), once or looped.

The file is opened as a memory map but read a block at a time (`core.wavio.frames`), so a day-long
recording costs no RAM and a file cut short while it plays (`cp` over it) is a driver error, not a
SIGBUS; a thread paces blocks by the monotonic clock so the driver sees audio arrive as a device
would deliver it. Timestamps follow the recording's own timeline starting at the moment playback
began.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import now_ns
from water_edge.core.wavio import WavError, frames, open_wav
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.health import SourceHealth
from water_edge.drivers.audio.source import Sink, to_float32
from water_edge.drivers.audio.window import Clock

log = structlog.get_logger(__name__)

BLOCK_S = 0.064  # a typical capture block; fine enough for 50 ms hops


def load_wav(path: Path) -> tuple[int, np.ndarray[Any, Any]]:
    """(sample rate, samples shaped (n, channels), memory-mapped where the format allows);
    DriverIOError naming the file when unusable (the same reasons `models score leak` gives)."""
    try:
        data, rate = open_wav(path)
    except WavError as exc:
        raise DriverIOError(str(exc)) from exc
    if rate < 1000:
        raise DriverIOError(f"{path}: implausible sample rate {rate} Hz")
    return rate, data


class FileSource:
    def __init__(self, config: AudioConfig) -> None:
        if config.path is None:
            raise DriverIOError(f"{config.name}: no file configured")
        self.config = config
        self.path = config.path
        self.sample_rate = 0
        self.channels = 0
        self.clock = Clock(0, 1)
        self.error: str | None = None
        self.finished = False
        self.loops = 0
        self._data: np.ndarray[Any, Any] | None = None
        self._file: BinaryIO | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        self.sample_rate, self._data = load_wav(self.path)
        # Read through this handle: a file replaced by a rename plays on as it was opened.
        self._file = self.path.open("rb")
        self.channels = self._data.shape[1]
        self.clock = Clock(now_ns(), self.sample_rate)

    def start(self, sink: Sink) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._play, args=(sink,), name=f"audio-file:{self.config.name}", daemon=True
        )
        self._thread.start()

    def _play(self, sink: Sink) -> None:
        data = self._data
        if data is None:
            return
        sr, speed = self.sample_rate, self.config.playback_speed
        block = max(1, round(BLOCK_S * sr))
        self.clock.t0_ns = now_ns()
        began = time.monotonic()
        index = pos = 0
        try:
            while not self._stop.is_set():
                n = min(block, len(data) - pos)
                # a block is delivered once all of its frames have "happened"
                due = began + (index + n) / (sr * speed)
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                sink(to_float32(frames(data, pos, pos + n, self._file)), index)
                index += n
                pos += n
                if pos >= len(data):
                    if not self.config.loop:
                        self.finished = True
                        log.info("audio.file_finished", driver=self.config.name, path=str(self.path))
                        sink(np.zeros((0, self.channels), np.float32), index)  # the driver takes the rest
                        return
                    pos = 0
                    self.loops += 1
        except (OSError, ValueError) as exc:  # the file cut short while played; an I/O error on the card
            self.error = str(exc) if isinstance(exc, WavError) else f"{self.path}: read failed: {exc}"
            sink(np.zeros((0, self.channels), np.float32), index)  # wake the driver to see it

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._data = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def health(self) -> SourceHealth:
        return SourceHealth(
            path=str(self.path), loop=self.config.loop, loops=self.loops, finished=self.finished
        )
