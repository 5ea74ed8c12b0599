"""The PortAudio capture source: an input stream whose callback feeds the ring.

`CaptureCallback` is the function PortAudio calls on its own thread for every block; it is a
separate object so that its overflow accounting can be exercised without a sound card. On an
input overflow PortAudio discarded frames; their number is estimated from the ADC timestamps
when the host API provides them, and is at least one so the gap is never hidden.

The stream comes from a `CaptureBackend` the source receives: by default `SoundDeviceBackend`,
the one place that calls sounddevice and turns its errors into `DriverIOError`; tests hand in a
backend of their own and drive the callback themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import now_ns
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.health import SourceHealth
from water_edge.drivers.audio.source import GapLog, Sink, to_float32
from water_edge.drivers.audio.window import Clock

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """How to open the input: the config's device keys with the channel count and rate resolved."""

    device: str | int | None  # a name substring or an index; None = the system's default input
    channels: int
    dtype: str
    sample_rate: int
    blocksize: int
    latency: str | float


class CaptureStream(Protocol):
    """A started input stream."""

    @property
    def device(self) -> object:
        """What the host API opened (for the log)."""
        ...

    def close(self) -> None:
        """Stop capturing and release the device; `DriverIOError` if the device refuses."""
        ...


class CaptureBackend(Protocol):
    """Opens input streams. Both methods raise `DriverIOError` saying what is wrong."""

    def check(self, settings: CaptureSettings) -> None:
        """Whether the device can capture with these settings, without starting it."""
        ...

    def start(self, settings: CaptureSettings, callback: CaptureCallback) -> CaptureStream:
        """A running stream that calls `callback(indata, frames, time_info, status)` for every block."""
        ...

    def native_rate(self, device: str | int | None) -> int | None:
        """The input device's own sample rate (what it runs at by default), None if unknown."""
        ...


def _sounddevice() -> Any:
    import sounddevice as sd  # type: ignore[import-untyped,unused-ignore]

    return sd


class SoundDeviceBackend:
    """PortAudio through sounddevice, imported on first use (start-up time on a Pi)."""

    def check(self, settings: CaptureSettings) -> None:
        sd = _sounddevice()
        try:
            sd.check_input_settings(
                device=settings.device,
                channels=settings.channels,
                dtype=settings.dtype,
                samplerate=settings.sample_rate,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise DriverIOError(f"audio device {settings.device!r}: {exc}") from exc

    def native_rate(self, device: str | int | None) -> int | None:
        sd = _sounddevice()
        try:
            rate = sd.query_devices(device, "input")["default_samplerate"]
        except (sd.PortAudioError, ValueError, KeyError):
            return None
        return round(rate) if rate else None

    def start(self, settings: CaptureSettings, callback: CaptureCallback) -> CaptureStream:
        sd = _sounddevice()
        try:
            stream = sd.InputStream(
                device=settings.device,
                channels=settings.channels,
                dtype=settings.dtype,
                samplerate=settings.sample_rate,
                blocksize=settings.blocksize,
                latency=settings.latency,
                callback=callback,
            )
            stream.start()
        except sd.PortAudioError as exc:
            raise DriverIOError(f"cannot start capture on {settings.device!r}: {exc}") from exc
        return _SoundDeviceStream(stream)


class _SoundDeviceStream:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def device(self) -> object:
        return self._stream.device

    def close(self) -> None:
        sd = _sounddevice()
        try:
            self._stream.abort()
            self._stream.close()
        except sd.PortAudioError as exc:
            raise DriverIOError(str(exc)) from exc


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
    def __init__(self, config: AudioConfig, gaps: GapLog, backend: CaptureBackend | None = None) -> None:
        self.config = config
        self.gaps = gaps
        self.sample_rate = config.sample_rate or 16000
        self.channels = config.expected_channels or 1
        self.clock = Clock(now_ns(), self.sample_rate)
        self.error: str | None = None
        self.finished = False
        self.callback: CaptureCallback | None = None
        self._backend = backend or SoundDeviceBackend()
        self._settings = CaptureSettings(
            device=config.device,
            channels=self.channels,
            dtype=config.dtype,
            sample_rate=self.sample_rate,
            blocksize=config.blocksize,
            latency=config.latency,
        )
        self._stream: CaptureStream | None = None

    def open(self) -> None:
        try:
            self._backend.check(self._settings)
        except DriverIOError as exc:
            own = self._backend.native_rate(self.config.device)
            if own is None or own == self.sample_rate:
                raise DriverIOError(f"{self.config.name}: {exc}") from exc
            if self.config.sample_rate is not None:
                raise DriverIOError(
                    f"{self.config.name}: {exc} (the device runs at {own} Hz: set sample_rate = {own}, "
                    "or leave sample_rate out to use the device's own rate)"
                ) from exc
            self._fall_back_to(own, exc)

    def _fall_back_to(self, rate: int, refused: DriverIOError) -> None:
        """No sample_rate configured and the device refuses 16 kHz (many USB interfaces run at
        44.1 or 48 kHz only): capture at its own rate; the models resample what they need."""
        settings = replace(self._settings, sample_rate=rate)
        try:
            self._backend.check(settings)
        except DriverIOError:
            raise DriverIOError(f"{self.config.name}: {refused}") from refused
        log.warning("audio.device_rate", driver=self.config.name, refused=self.sample_rate, sample_rate=rate)
        self._settings, self.sample_rate = settings, rate
        self.clock = Clock(now_ns(), rate)

    def start(self, sink: Sink) -> None:
        self.callback = CaptureCallback(sink, self.clock, self.gaps)
        try:
            self._stream = self._backend.start(self._settings, self.callback)
        except DriverIOError as exc:
            raise DriverIOError(f"{self.config.name}: {exc}") from exc
        log.info(
            "audio.capture_started",
            driver=self.config.name,
            device=str(self._stream.device),
            sample_rate=self.sample_rate,
            channels=self.channels,
        )

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except DriverIOError as exc:
                log.warning("audio.close_failed", driver=self.config.name, error=str(exc))

    def health(self) -> SourceHealth:
        cb = self.callback
        return SourceHealth(
            device=str(self.config.device),
            callbacks=0 if cb is None else cb.callbacks,
            input_overflows=0 if cb is None else cb.overflows,
        )
