"""The PortAudio capture source: a sounddevice `InputStream` whose callback feeds the ring.

`CaptureCallback` is the function PortAudio calls on its own thread for every block; it is a
separate object so that its overflow accounting can be exercised without a sound card. On an
input overflow PortAudio discarded frames; their number is estimated from the ADC timestamps
when the host API provides them, and is at least one so the gap is never hidden.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import now_ns
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.source import GapLog, Sink, to_float32
from water_edge.drivers.audio.window import Clock

log = structlog.get_logger(__name__)


class CaptureCallback:
    """Called by PortAudio as `callback(indata, frames, time_info, status)`."""

    def __init__(self, sink: Sink, clock: Clock, gaps: GapLog) -> None:
        self.sink = sink
        self.clock = clock
        self.gaps = gaps
        self.index = 0
        self.callbacks = 0
        self.overflows = 0
        self.last_callback_mono: float | None = None
        self._last_adc: float | None = None
        self._last_frames = 0

    def __call__(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.last_callback_mono = time.monotonic()
        sr = self.clock.sample_rate
        if self.callbacks == 0:
            # the first frame of this block was sampled one block ago
            self.clock.t0_ns = now_ns() - frames * 1_000_000_000 // sr
        self.callbacks += 1
        adc = float(getattr(time_info, "inputBufferAdcTime", 0.0) or 0.0)
        if status.input_overflow:
            self.overflows += 1
            lost = 1
            if adc > 0 and self._last_adc is not None:
                expected = self._last_adc + self._last_frames / sr
                lost = max(1, round((adc - expected) * sr))
            self.gaps.add("input_overflow", lost)
            self.index += lost
        self._last_adc = adc if adc > 0 else None
        self._last_frames = frames
        self.sink(to_float32(indata[:frames]), self.index)
        self.index += frames


class DeviceSource:
    def __init__(self, config: AudioConfig, gaps: GapLog) -> None:
        self.config = config
        self.gaps = gaps
        self.sample_rate = config.sample_rate or 16000
        self.channels = config.expected_channels or 1
        self.clock = Clock(now_ns(), self.sample_rate)
        self.error: str | None = None
        self.finished = False
        self.callback: CaptureCallback | None = None
        self._stream: Any = None

    def open(self) -> None:
        import sounddevice as sd  # type: ignore[import-untyped,unused-ignore]

        c = self.config
        try:
            sd.check_input_settings(
                device=c.device, channels=self.channels, dtype=c.dtype, samplerate=self.sample_rate
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise DriverIOError(f"{c.name}: audio device {c.device!r}: {exc}") from exc

    def start(self, sink: Sink) -> None:
        import sounddevice as sd  # type: ignore[import-untyped,unused-ignore]

        c = self.config
        self.callback = CaptureCallback(sink, self.clock, self.gaps)
        try:
            self._stream = sd.InputStream(
                device=c.device,
                channels=self.channels,
                dtype=c.dtype,
                samplerate=self.sample_rate,
                blocksize=c.blocksize,
                latency=c.latency,
                callback=self.callback,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            raise DriverIOError(f"{c.name}: cannot start capture on {c.device!r}: {exc}") from exc
        log.info(
            "audio.capture_started",
            driver=c.name,
            device=str(self._stream.device),
            sample_rate=self.sample_rate,
            channels=self.channels,
        )

    def stop(self) -> None:
        import sounddevice as sd  # type: ignore[import-untyped,unused-ignore]

        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except sd.PortAudioError as exc:
                log.warning("audio.close_failed", driver=self.config.name, error=str(exc))

    def health(self) -> dict[str, Any]:
        cb = self.callback
        return {
            "device": str(self.config.device),
            "callbacks": 0 if cb is None else cb.callbacks,
            "input_overflows": 0 if cb is None else cb.overflows,
        }
