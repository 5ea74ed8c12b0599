"""The hydrophone driver: capture -> bounded ring -> analysis windows for the models + level telemetry.

    source thread (PortAudio callback | WAV player | stream reader)
        -> FrameRing (preallocated; a block that does not fit is dropped and counted)
        -> asyncio side: Windower -> window listeners;  LevelMeter -> `stream()` readings

`stream()` yields level readings (per channel: `rms_dbfs`, `peak_dbfs`, octave bands, and with
calibration `rms_db`; once per night `night_min_*` and its spread) every `level_interval_s`,
plus a cumulative `dropped_frames` count; see docs/drivers/audio.md for the tags.

Window contract for in-process consumers (the leak detector and localiser; the `WindowSource`
capability): `add_window_listener(callback)` registers `callback(window: AudioWindow) -> None`.
It is called on the event loop, in time order, for every window of `window_s` seconds, one every
`hop_s` seconds. `window.samples` is a float32 array (frames, channels), full scale +-1.0, owned by the
callee; `start_ts_ns` is the UTC time of its first frame; `channel_names` label the columns;
`dropped_before` counts the frames lost since the previous window (a window never spans a gap);
`faults` names, per channel, a sensor fault the window's samples show (`drivers.audio.faults`:
digital silence, DC, mains hum only, saturation, a copy of another channel, a dropout), which
consumers keep out of what they learn and judge. Dropouts come and go with each stall: a channel
stays shown with them (`sensor_faults`, one log line) until DROPOUT_HOLD_S pass without one.
A callback must return quickly (queue heavy work to a thread): while it runs the ring fills, and
if it stays longer than `buffer_s` frames are dropped and counted. Listeners stay registered
across reconnects; the returned function removes one.

A device source opens its stream through the `CaptureBackend` the driver receives (default: PortAudio
through sounddevice, `drivers.audio.device.SoundDeviceBackend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Final, Self

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.core.clipping import FULL_SCALE
from water_edge.core.errors import DriverIOError
from water_edge.core.local_zone import zone
from water_edge.core.reading import GOOD, Reading
from water_edge.core.sensor_faults import describe
from water_edge.drivers.audio.config import AudioConfig, bands_below_nyquist
from water_edge.drivers.audio.device import CaptureBackend, DeviceSource
from water_edge.drivers.audio.faults import classify
from water_edge.drivers.audio.health import AudioHealth, SourceHealth
from water_edge.drivers.audio.levels import LevelMeter, NightTracker, db, local_clock
from water_edge.drivers.audio.ring import Chunk, FrameRing, Frames
from water_edge.drivers.audio.source import GapLog, Source, zero_nonfinite
from water_edge.drivers.audio.streamclient import StreamSource
from water_edge.drivers.audio.wavfile import FileSource
from water_edge.drivers.audio.window import AudioWindow, Windower
from water_edge.drivers.base import DeviceConfig, TagInfo, WindowSource

log = structlog.get_logger(__name__)

WindowListener = Callable[[AudioWindow], None]
PROBE_S: Final = 1.0
# The consumer is woken once this much audio has arrived (or a hop's worth, if less), not for every
# capture block: each wake costs the loop a self-pipe round trip and a thread hand-off, and a
# 64 ms block is a few times finer than any window or level the consumers need.
WAKE_S: Final = 0.25
DROPOUT_HOLD_S: Final = 60.0  # of audio time without a dropout before the fault is shown cleared

__all__ = ["AudioConfig", "AudioDriver", "AudioWindow", "WindowListener"]


class AudioDriver(WindowSource):  # declared: mypy checks the capability here, not at each use
    config_model: ClassVar[type[DeviceConfig]] = AudioConfig

    def __init__(self, config: AudioConfig, capture: CaptureBackend | None = None) -> None:
        self.name = config.name
        self.config = config
        self._capture = capture
        self._listeners: list[WindowListener] = []
        self.gaps = GapLog()
        self._source: Source | None = None
        self._ring: FrameRing | None = None
        self._windower: Windower | None = None
        self._meter: LevelMeter | None = None
        self._wake: asyncio.Event | None = None
        self._wake_frames = 1
        self._unsignalled = 0  # frames written since the producer last woke the consumer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consuming = False
        self.windows = 0
        self.listener_errors = 0
        self.frames_captured = 0
        self.nonfinite_frames = 0
        self.clipped_frames = 0
        self.fault_windows: dict[str, int] = {}  # "<channel>.<fault>" -> windows that showed it
        self.sensor_faults: dict[str, str] = {}  # channel -> the fault its latest window shows
        self._dropout_seen_ns: dict[str, int] = {}  # channel -> start of its latest window with one

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(config)

    # --- in-process consumers ---------------------------------------------------------------

    def add_window_listener(self, callback: WindowListener) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # --- Driver protocol --------------------------------------------------------------------

    def tags(self) -> Sequence[TagInfo]:
        c = self.config
        if self._meter is not None:
            pairs = self._meter.tag_names()
        else:
            rate = c.sample_rate or 16000
            names = c.names_for(c.expected_channels or 1)
            suffix, unit = ("db", "dB") if c.calibration_db is not None else ("dbfs", "dBFS")
            pairs = []
            for n in names:
                pairs += [(f"{n}.rms_dbfs", "dBFS"), (f"{n}.peak_dbfs", "dBFS")]
                if c.calibration_db is not None:
                    pairs.append((f"{n}.rms_db", "dB"))
                bands = bands_below_nyquist(c.bands_hz, rate)
                pairs += [(f"{n}.band_{fc:g}hz_{suffix}", unit) for fc in bands]
        return [TagInfo(tag, unit) for tag, unit in pairs]

    async def open(self) -> None:
        c = self.config
        source = self._make_source()
        await asyncio.to_thread(source.open)
        try:
            self._check_format(source)
        except DriverIOError:
            await asyncio.to_thread(source.stop)
            raise
        names = c.names_for(source.channels)
        sr = source.sample_rate
        self._ring = FrameRing(max(round(c.buffer_s * sr), round(2 * c.window_s * sr)), source.channels)
        self._windower = Windower(
            self.name, source.clock, names, round(c.window_s * sr), max(1, round(c.hop_s * sr))
        )
        self._meter = LevelMeter(
            self.name,
            source.clock,
            names,
            interval_s=c.level_interval_s,
            bands_hz=bands_below_nyquist(c.bands_hz, sr),
            calibration_db=c.calibration_db,
            night=NightTracker(
                c.night_start, c.night_end, c.night_history, source.channels, local_clock(zone(c.timezone))
            ),
        )
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake_frames = max(1, round(min(c.hop_s, WAKE_S) * sr))
        self._unsignalled = 0
        self._source = source
        source.start(self._produce)
        log.info("audio.opened", driver=self.name, source=c.source, sample_rate=sr, channels=source.channels)

    def _make_source(self) -> Source:
        c = self.config
        if c.source == "device":
            return DeviceSource(c, self.gaps, self._capture)
        if c.source == "file":
            return FileSource(c)
        return StreamSource(c, self.gaps)

    def _check_format(self, source: Source) -> None:
        c = self.config
        where = c.path if c.source == "file" else c.stream_url if c.source == "stream" else c.device
        want = c.expected_channels
        if want is not None and source.channels != want:
            raise DriverIOError(
                f"{self.name}: {where} has {source.channels} channel(s) but the config expects {want} "
                "(channels / channel_names / calibration_db)"
            )
        if c.sample_rate is not None and source.sample_rate != c.sample_rate:
            raise DriverIOError(
                f"{self.name}: {where} is sampled at {source.sample_rate} Hz but the config expects "
                f"sample_rate = {c.sample_rate}"
            )
        if c.window_s * source.sample_rate < 64:
            raise DriverIOError(
                f"{self.name}: window_s = {c.window_s} is under 64 frames at {source.sample_rate} Hz"
            )

    def _produce(self, frames: Frames, start: int) -> None:
        """The sink every source calls from its own thread."""
        ring, loop, wake = self._ring, self._loop, self._wake
        if ring is None or loop is None or wake is None:
            return
        if ring.write(frames, start):
            self.gaps.add("ring_overrun", len(frames))
        elif len(frames):  # an empty block is a source's signal (an error, the end): wake at once
            self._unsignalled += len(frames)
            if self._unsignalled < self._wake_frames:
                return
        self._unsignalled = 0
        with contextlib.suppress(RuntimeError):  # the loop closed while a capture thread finished
            loop.call_soon_threadsafe(wake.set)

    async def stream(self) -> AsyncIterator[list[Reading]]:
        source, ring, wake = self._require_open()
        windower, meter = self._windower, self._meter
        if windower is None or meter is None:
            raise DriverIOError(f"{self.name}: not open")
        self._consuming = True
        try:
            while True:
                await self._wait(source, wake)
                chunks = ring.drain()
                if chunks:
                    self.frames_captured += sum(len(ch.frames) for ch in chunks)
                    nonfinite = self._zero_nonfinite(chunks)
                    self._count_clipped(chunks)
                    for window in windower.feed(chunks):
                        self._deliver(window)
                    readings = await asyncio.to_thread(meter.feed, chunks, nonfinite)
                    if readings:
                        readings.append(
                            Reading(
                                self.name,
                                "dropped_frames",
                                readings[0].ts_ns,
                                self.gaps.total,
                                GOOD,
                                "frames",
                            )
                        )
                        yield readings
                if source.error:
                    raise DriverIOError(f"{self.name}: {source.error}")
        finally:
            self._consuming = False

    def _zero_nonfinite(self, chunks: Sequence[Chunk]) -> npt.NDArray[np.int64]:
        """The absolute indices of the frames that held NaN or infinity, now 0 (counted)."""
        bad = np.concatenate([ch.start + zero_nonfinite(ch.frames).astype(np.int64) for ch in chunks])
        if bad.size:
            if not self.nonfinite_frames:
                log.warning("audio.nonfinite_samples", driver=self.name, frames=int(bad.size))
            self.nonfinite_frames += int(bad.size)
        return bad

    def _count_clipped(self, chunks: Sequence[Chunk]) -> None:
        """Count the frames with a sample at full scale: a preamp driven into clipping distorts
        every level and feature the models learn from, and says so nowhere else."""
        clipped = sum(int(np.count_nonzero((np.abs(ch.frames) >= FULL_SCALE).any(axis=1))) for ch in chunks)
        if clipped:
            if not self.clipped_frames:
                log.warning("audio.clipping", driver=self.name, frames=clipped)
            self.clipped_frames += clipped

    async def _wait(self, source: Source, wake: asyncio.Event) -> None:
        if source.finished and not wake.is_set():
            await wake.wait()  # a file played once: idle until closed
        else:
            try:
                async with asyncio.timeout(self.config.stall_timeout_s):
                    await wake.wait()
            except TimeoutError:
                if not source.finished:
                    raise DriverIOError(
                        f"{self.name}: no audio for {self.config.stall_timeout_s:g} s"
                    ) from None
        wake.clear()

    def _deliver(self, window: AudioWindow) -> None:
        self.windows += 1
        faults = classify(window.samples, window.sample_rate)
        window = dataclasses.replace(window, faults=faults)
        for name, fault in zip(window.channel_names, faults, strict=True):
            if fault == "dropout":
                self._dropout_seen_ns[name] = window.start_ts_ns
            elif fault is None and self._dropouts_recent(name, window.start_ts_ns):
                continue
            if fault is None:
                if self.sensor_faults.pop(name, None) is not None:
                    log.info("audio.sensor_fault_cleared", driver=self.name, channel=name)
                continue
            key = f"{name}.{fault}"
            self.fault_windows[key] = self.fault_windows.get(key, 0) + 1
            if self.sensor_faults.get(name) != fault:
                log.warning(
                    "audio.sensor_fault", driver=self.name, channel=name, fault=fault, means=describe(fault)
                )
                self.sensor_faults[name] = fault
        for callback in list(self._listeners):
            try:
                callback(window)
            except Exception:  # a consumer's bug must not stop capture: log and count
                self.listener_errors += 1
                log.exception("audio.listener_failed", driver=self.name)

    def _dropouts_recent(self, channel: str, ts_ns: int) -> bool:
        """Whether `channel` is shown with dropouts and had one within DROPOUT_HOLD_S: a stalling
        card stalls again and again, and is one fault in the status and one log line, not two lines
        per stall."""
        seen = self._dropout_seen_ns.get(channel)
        if self.sensor_faults.get(channel) != "dropout" or seen is None:
            return False
        return 0 <= ts_ns - seen < DROPOUT_HOLD_S * 1_000_000_000

    async def read(self) -> list[Reading]:
        """One-shot (`edge-agent probe`): RMS and peak of the next second of audio, per channel."""
        source, ring, wake = self._require_open()
        if self._consuming:
            raise DriverIOError(f"{self.name}: stream() is consuming the audio; read() is for probes")
        need = round(PROBE_S * source.sample_rate)
        parts: list[Frames] = []
        first: int | None = None
        while sum(len(p) for p in parts) < need:
            await self._wait(source, wake)
            if source.error:
                raise DriverIOError(f"{self.name}: {source.error}")
            if source.finished and ring.fill == 0 and not parts:
                raise DriverIOError(f"{self.name}: the file has been played")
            for chunk in ring.drain():
                first = chunk.start if first is None else first
                parts.append(chunk.frames)
            if source.finished and ring.fill == 0:
                break
        x = np.concatenate(parts)[:need]
        zero_nonfinite(x)
        x = x.astype(np.float64)
        ts = source.clock.ts(first or 0)
        names = self.config.names_for(source.channels)
        rms = db(np.mean(x * x, axis=0))
        peak = db(np.max(np.abs(x), axis=0) ** 2)
        out = []
        for c, n in enumerate(names):
            out.append(Reading(self.name, f"{n}.rms_dbfs", ts, round(float(rms[c]), 2), GOOD, "dBFS"))
            out.append(Reading(self.name, f"{n}.peak_dbfs", ts, round(float(peak[c]), 2), GOOD, "dBFS"))
        return out

    def _require_open(self) -> tuple[Source, FrameRing, asyncio.Event]:
        if self._source is None or self._ring is None or self._wake is None:
            raise DriverIOError(f"{self.name}: not open")
        return self._source, self._ring, self._wake

    async def aclose(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            await asyncio.to_thread(source.stop)
        self._ring = None
        self._wake = None
        self.sensor_faults.clear()  # unknown until audio comes again
        self._dropout_seen_ns.clear()

    def health(self) -> AudioHealth:
        source, ring, gaps = self._source, self._ring, self.gaps.snapshot()
        source_health = source.health() if source is not None else SourceHealth()
        return AudioHealth(
            **{f.name: getattr(source_health, f.name) for f in dataclasses.fields(SourceHealth)},
            open=source is not None,
            source=self.config.source,
            frames_captured=self.frames_captured,
            windows=self.windows,
            window_listeners=len(self._listeners),
            listener_errors=self.listener_errors,
            nonfinite_frames=self.nonfinite_frames,
            clipped_frames=self.clipped_frames,
            sensor_faults=dict(self.sensor_faults),
            fault_windows=dict(self.fault_windows),
            dropped_frames=gaps.dropped_frames,
            dropped_by_cause=gaps.dropped_by_cause,
            gaps=gaps.gaps,
            recent_gaps=gaps.recent_gaps,
            sample_rate=None if source is None else source.sample_rate,
            channels=None if source is None else source.channels,
            ring_capacity_frames=None if ring is None else ring.capacity,
            ring_fill_frames=None if ring is None else ring.fill,
        )
