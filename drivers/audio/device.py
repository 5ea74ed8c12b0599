"""The PortAudio capture source: an input stream whose callback feeds the ring.

`CaptureCallback` is the function PortAudio calls on its own thread for every block; it is a
separate object so that its overflow accounting can be exercised without a sound card. On an
input overflow PortAudio discarded frames; their number is estimated from the ADC timestamps
when the host API provides them, and is at least one so the gap is never hidden.

A block bitwise equal to the one before (a driver replaying its last buffer after an xrun or while
the card goes away) is not sound: it is dropped as a gap (`repeated_block`). The sample count is
steered to the gateway's clock (`ClockSteering`): a card whose crystal runs a little off would
otherwise stamp its frames seconds a day away from the wall clock.

The stream comes from a `CaptureBackend` the source receives: by default `SoundDeviceBackend`,
the one place that calls sounddevice and turns its errors into `DriverIOError`; tests hand in a
backend of their own and drive the callback themselves. PortAudio reads the list of sound cards
once, when it starts: a card unplugged and plugged back (perhaps under another index) is only seen
again after the list is read anew, which `SoundDeviceBackend` does before it opens a card while
no other card of this process is capturing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import numpy as np
import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import now_ns
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.health import SourceHealth
from water_edge.drivers.audio.source import GapLog, Sink, to_float32
from water_edge.drivers.audio.window import Clock

log = structlog.get_logger(__name__)

NS: Final = 1_000_000_000
STEER_EVERY_S: Final = 10  # seconds of frames between two comparisons with the gateway clock
SLEW_S: Final = 60  # a timestamp error is taken out over this long (no jumps)
RATE_AFTER_S: Final = 600  # from then on, the card's true rate is measured and followed
MAX_SLEW: Final = 1e-3  # the frame period is steered at most this far from the nominal (1000 ppm)
STEP_NS: Final = NS  # an error beyond this is a step of the wall clock: restart the count there


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


class _PortAudioUse:
    """This process's PortAudio streams: the device list can be reread while none is open."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams_open = 0
        self.opened_before = False  # PortAudio read the list when sounddevice was imported

    def reread_devices(self, sd: Any) -> None:
        """Have PortAudio read the sound cards anew (a card plugged in, or back under a new index),
        unless another stream of this process is open: restarting PortAudio would close it."""
        with self.lock:
            if not self.opened_before:
                self.opened_before = True
                return
            if self.streams_open:
                return
            try:
                sd._terminate()
                sd._initialize()
            except sd.PortAudioError as exc:
                raise DriverIOError(f"cannot restart PortAudio to look for sound cards: {exc}") from exc

    def opened(self, change: int) -> None:
        with self.lock:
            self.streams_open += change


PORTAUDIO = _PortAudioUse()


class SoundDeviceBackend:
    """PortAudio through sounddevice, imported on first use (start-up time on a Pi)."""

    def check(self, settings: CaptureSettings) -> None:
        sd = _sounddevice()
        PORTAUDIO.reread_devices(sd)
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
        PORTAUDIO.opened(+1)
        try:
            stream = sd.InputStream(
                device=settings.device,
                channels=settings.channels,
                dtype=settings.dtype,
                samplerate=settings.sample_rate,
                blocksize=settings.blocksize,
                latency=settings.latency,
                callback=callback,
                finished_callback=callback.finished,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            PORTAUDIO.opened(-1)
            raise DriverIOError(f"cannot start capture on {settings.device!r}: {exc}") from exc
        return _SoundDeviceStream(stream, callback)


class _SoundDeviceStream:
    def __init__(self, stream: Any, callback: CaptureCallback) -> None:
        self._stream = stream
        self._callback = callback
        self._closed = False

    @property
    def device(self) -> object:
        return self._stream.device

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._callback.closing = True  # PortAudio calls `finished` for our own stop too
        sd = _sounddevice()
        try:
            self._stream.abort()
            self._stream.close()
        except sd.PortAudioError as exc:
            raise DriverIOError(str(exc)) from exc
        finally:
            PORTAUDIO.opened(-1)


class ClockSteering:
    """Keeps a device's frame timestamps on the gateway's clock.

    Every STEER_EVERY_S of frames, the block that arrived least late in that time (its first frame
    was sampled one block before the callback) says how far the count has drifted; the frame period
    is then set to take that error out over SLEW_S, from RATE_AFTER_S on around the card's own rate
    measured over the whole capture. Timestamps stay continuous and increasing; a 47.99 kHz card
    counted as 48 kHz stays within tens of milliseconds instead of drifting 18 s a day. An error
    beyond STEP_NS is the wall clock stepping (NTP after a boot without RTC): the count restarts there.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.nominal = NS / clock.sample_rate
        self.period = self.nominal  # ns per frame now, the error being taken out
        self.base = self.nominal  # ns per frame the card really takes, measured from RATE_AFTER_S
        self.steps = 0
        self.last_error_ns = 0
        self._ref: tuple[int, int] | None = None  # (index, wall ns) of the first best block
        self._best: tuple[int, int, int] | None = None  # (error, index, wall ns) this period
        self._next = STEER_EVERY_S * clock.sample_rate

    def observe(self, index: int, wall_ns: int) -> None:
        """Frame `index` was sampled at about `wall_ns` (later, never earlier, than it really was)."""
        error = self.clock.ts(index) - wall_ns
        if self._best is None or error > self._best[0]:
            self._best = (error, index, wall_ns)
        if index < self._next:
            return
        error, best_index, best_wall = self._best
        self._best, self._next = None, index + STEER_EVERY_S * self.clock.sample_rate
        self.last_error_ns = error
        if abs(error) > STEP_NS:
            self.clock.restart(best_index, best_wall)
            self.steps += 1
            self._ref, self.period, self.base = None, self.nominal, self.nominal
            log.warning("audio.clock_step", error_s=round(error / NS, 3))
            return
        if self._ref is None:
            self._ref = (best_index, best_wall)
        frames = best_index - self._ref[0]
        if frames >= RATE_AFTER_S * self.clock.sample_rate:
            measured = (best_wall - self._ref[1]) / frames
            self.base = min(max(measured, self.nominal * (1 - MAX_SLEW)), self.nominal * (1 + MAX_SLEW))
        period = self.base - error / (SLEW_S * self.clock.sample_rate)
        self.period = min(max(period, self.nominal * (1 - MAX_SLEW)), self.nominal * (1 + MAX_SLEW))
        self.clock.steer(index, self.period)


class CaptureCallback:
    """Called by PortAudio as `callback(indata, frames, time_info, status)`; `finished()` when
    the stream stops (PortAudio calls it for a stream that died: a card unplugged)."""

    def __init__(self, sink: Sink, clock: Clock, gaps: GapLog) -> None:
        self.sink = sink
        self.clock = clock
        self.gaps = gaps
        self.steering = ClockSteering(clock)
        self.index = 0
        self.callbacks = 0
        self.overflows = 0
        self.repeated_blocks = 0
        self.last_callback_mono: float | None = None
        self.closing = False  # set before our own stop: `finished` is then no failure
        self.on_finished: Callable[[], None] | None = None
        self._last_adc: float | None = None
        self._last_frames = 0
        self._last_block: Any = None

    def finished(self) -> None:
        if not self.closing and self.on_finished is not None:
            self.on_finished()

    def __call__(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.last_callback_mono = time.monotonic()
        sr = self.clock.sample_rate
        wall = now_ns() - frames * NS // sr  # the first frame of this block was sampled one block ago
        first = self.callbacks == 0
        if first:
            self.clock.t0_ns = wall
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
        if not first:
            self.steering.observe(self.index, wall)
        block = indata[:frames]
        last, self._last_block = self._last_block, np.array(block, copy=True)
        if (
            last is not None
            and last.shape == block.shape
            and frames > 1
            and np.array_equal(last, block)
            and not np.all(block == block[0])  # a constant input is a sensor fault, judged later
        ):
            # the same buffer again: the driver replayed it; no sound was sampled for these frames
            self.repeated_blocks += 1
            self.gaps.add("repeated_block", frames)
            self.index += frames
            return
        self.sink(to_float32(block), self.index)
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

        def stopped() -> None:  # PortAudio's thread: the stream died under us
            self.error = "the sound card stopped delivering audio (unplugged, or its driver failed)"
            log.warning("audio.capture_stopped", driver=self.config.name, device=str(self.config.device))
            sink(np.zeros((0, self.channels), dtype=np.float32), 0)  # wakes the driver to see the error

        self.callback.on_finished = stopped
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
            repeated_blocks=0 if cb is None else cb.repeated_blocks,
            clock_error_ms=None if cb is None else round(cb.steering.last_error_ns / 1e6, 1),
            clock_rate_hz=None if cb is None else round(NS / cb.steering.base, 2),
        )
