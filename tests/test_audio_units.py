"""Audio driver parts without a source: ring buffer, windows, levels, night minimum, the PortAudio
callback (driven directly: this container has no audio device), the device source through a capture
backend of the test's own, and config validation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import sounddevice as sd
from pydantic import ValidationError

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.device import CaptureCallback, CaptureSettings
from water_edge.drivers.audio.driver import AudioDriver
from water_edge.drivers.audio.levels import LevelMeter, NightTracker
from water_edge.drivers.audio.ring import Chunk, FrameRing
from water_edge.drivers.audio.source import GapLog
from water_edge.drivers.audio.window import AudioWindow, Clock, Windower

SR = 1000


def frames(start: int, n: int, ch: int = 2) -> np.ndarray:
    """Frames whose value is their absolute index, so any misplacement shows."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], ch, axis=1)


def test_ring_keeps_order_across_wraparound_and_marks_gaps() -> None:
    ring = FrameRing(capacity=100, channels=2)
    got: list[Chunk] = []
    for start in (0, 40, 80):  # 120 frames through a 100-frame ring: wraps
        assert ring.write(frames(start, 40), start) == 0
        got += ring.drain()
    ring.write(frames(150, 30), 150)  # frames 120..149 lost upstream
    got += ring.drain()
    joined = np.concatenate([c.frames for c in got[:3]])
    assert np.array_equal(joined[:, 0], np.arange(120))
    assert [c.start for c in got] == [0, 40, 80, 150]


def test_ring_drops_the_newest_block_when_full_and_counts_it() -> None:
    ring = FrameRing(capacity=100, channels=1)
    assert ring.write(frames(0, 80, 1), 0) == 0
    assert ring.write(frames(80, 40, 1), 80) == 40
    assert ring.write(frames(120, 20, 1), 120) == 0
    assert (ring.overrun_frames, ring.overrun_events) == (40, 1)
    chunks = ring.drain()
    assert [(c.start, len(c.frames)) for c in chunks] == [(0, 80), (120, 20)]
    assert ring.fill == 0


def test_windows_have_exact_timestamps_overlap_and_never_span_a_gap() -> None:
    clock = Clock(t0_ns=1_700_000_000_000_000_000, sample_rate=SR)
    win = Windower("h1", clock, ["A", "B"], window=500, hop=250)
    out = win.feed([Chunk(0, frames(0, 1000))])
    assert [w.start_ts_ns - clock.t0_ns for w in out] == [0, 250_000_000, 500_000_000]
    assert np.array_equal(out[1].samples[:, 0], np.arange(250, 750))
    assert all(w.dropped_before == 0 and w.samples.shape == (500, 2) for w in out)
    # 100 frames lost: the partial window is dropped, the next starts after the gap
    out = win.feed([Chunk(1100, frames(1100, 600))])
    assert len(out) == 1
    assert out[0].start_ts_ns == clock.ts(1100)
    assert out[0].dropped_before == 100
    assert out[0].channel_names == ("A", "B")


def meter(interval_s: int = 2, calibration: list[float] | None = None) -> LevelMeter:
    clock = Clock(0, 8000)
    night = NightTracker("02:00", "04:00", 7, 1)
    return LevelMeter(
        "h1",
        clock,
        ["A"],
        interval_s=interval_s,
        bands_hz=[125.0, 1000.0],
        calibration_db=calibration,
        night=night,
    )


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


def test_levels_of_a_sine_rms_peak_and_band() -> None:
    sr = 8000
    t = np.arange(2 * sr) / sr
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None]
    readings = by_tag(meter(calibration=[150.0]).feed([Chunk(0, x)]))
    expected = 20 * np.log10(0.5 / np.sqrt(2))
    assert readings["A.rms_dbfs"].value == pytest.approx(expected, abs=0.05)
    assert readings["A.rms_db"].value == pytest.approx(expected + 150, abs=0.05)
    assert readings["A.peak_dbfs"].value == pytest.approx(20 * np.log10(0.5), abs=0.05)
    assert readings["A.band_1000hz_db"].value == pytest.approx(expected + 150, abs=0.2)
    assert readings["A.band_125hz_db"].value < expected + 150 - 40
    assert readings["A.rms_dbfs"].ts_ns == 2 * 1_000_000_000  # end of the interval
    assert readings["A.rms_dbfs"].quality == "good"


def test_an_interval_with_a_gap_is_uncertain_not_wrong() -> None:
    sr = 8000
    m = meter(interval_s=3)
    noise = np.random.default_rng(1).normal(0, 0.1, (4 * sr, 1)).astype(np.float32)
    out = m.feed([Chunk(0, noise[: sr + 100]), Chunk(2 * sr, noise[2 * sr : 3 * sr])])
    out += m.feed([Chunk(3 * sr, noise[3 * sr :])])
    first = by_tag(out)
    assert first["A.rms_dbfs"].quality == "uncertain"
    assert "2 of 3 s" in (first["A.rms_dbfs"].reason or "")
    direct = np.concatenate([noise[:sr], noise[2 * sr : 3 * sr]])
    expected = 10 * np.log10(np.mean(direct.astype(float) ** 2))
    assert first["A.rms_dbfs"].value == pytest.approx(expected, abs=0.01)


def test_night_minimum_reported_once_per_night_with_spread() -> None:
    def local(t: float) -> time.struct_time:
        return time.gmtime(t)

    night = NightTracker("02:00", "04:00", history=7, channels=1, localtime=local)
    day = 86400
    results = []
    for d, floor in enumerate((-60.0, -50.0, -58.0)):
        for hour in range(6):
            for minute in range(0, 60, 10):
                level = floor if (hour, minute) == (3, 20) else floor + 10
                ts = (d * day + hour * 3600 + minute * 60) * 1_000_000_000
                r = night.feed(ts, np.array([level]))
                if r is not None:
                    results.append(r)
    assert len(results) == 3
    assert [float(r[0][0]) for r in results] == [-60.0, -50.0, -58.0]
    assert results[0][1] is None
    spread = results[2][1]
    assert spread is not None
    assert float(spread[0]) == pytest.approx(np.std([-60, -50, -58], ddof=1))


def test_portaudio_callback_counts_overflows_and_converts_int16() -> None:
    got: list[tuple[int, np.ndarray]] = []
    gaps = GapLog()
    clock = Clock(0, 16000)
    cb = CaptureCallback(lambda f, i: got.append((i, f)), clock, gaps)
    block = np.full((160, 2), 16384, dtype=np.int16)
    ok = sd.CallbackFlags()
    cb(block, 160, SimpleNamespace(inputBufferAdcTime=10.0), ok)
    # PortAudio lost 320 frames before this block: ADC time jumped 30 ms instead of 10 ms
    cb(block, 160, SimpleNamespace(inputBufferAdcTime=10.03), sd.CallbackFlags(sd._lib.paInputOverflow))
    cb(block, 160, SimpleNamespace(inputBufferAdcTime=0.0), sd.CallbackFlags(sd._lib.paInputOverflow))
    assert [i for i, _ in got] == [0, 480, 641]
    assert got[0][1].dtype == np.float32
    assert float(got[0][1][0, 0]) == 0.5
    assert cb.overflows == 2
    assert gaps.snapshot().dropped_by_cause == {"input_overflow": 321}
    assert clock.t0_ns > 0


class FakeStream:
    device = "fake input (hw:9,0)"

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeCapture:
    """A capture backend: the test plays PortAudio's thread by calling the callback it was given."""

    def __init__(self, refuse: str | None = None, only_rate: int | None = None) -> None:
        self.refuse = refuse
        self.only_rate = only_rate  # a USB interface that runs at this rate and no other
        self.settings: CaptureSettings | None = None
        self.callback: CaptureCallback | None = None
        self.stream = FakeStream()

    def check(self, settings: CaptureSettings) -> None:
        self.settings = settings
        if self.refuse:
            raise DriverIOError(f"audio device {settings.device!r}: {self.refuse}")
        if self.only_rate is not None and settings.sample_rate != self.only_rate:
            raise DriverIOError(f"audio device {settings.device!r}: Invalid sample rate [PaErrorCode -9997]")

    def native_rate(self, device: str | int | None) -> int | None:
        return self.only_rate

    def start(self, settings: CaptureSettings, callback: CaptureCallback) -> FakeStream:
        self.callback = callback
        return self.stream


def device_driver(capture: FakeCapture) -> AudioDriver:
    config = AudioConfig(
        name="hyd",
        kind="audio",
        source="device",
        device="USB",
        sample_rate=1000,
        channels=2,
        window_s=0.5,
        hop_s=0.5,
        level_interval_s=1,
    )
    return AudioDriver(config, capture=capture)


async def test_a_device_source_captures_through_its_backend_and_counts_what_portaudio_lost() -> None:
    capture = FakeCapture()
    driver = device_driver(capture)
    windows: list[AudioWindow] = []
    driver.add_window_listener(windows.append)
    await driver.open()
    assert capture.settings == CaptureSettings("USB", 2, "float32", 1000, 1024, "high")
    callback = capture.callback
    assert callback is not None

    def portaudio_thread() -> None:
        block = np.full((100, 2), 0.25, dtype=np.float32)
        for i in range(30):  # 3 s of audio; PortAudio overflowed once, before block 5
            status = SimpleNamespace(input_overflow=i == 5)
            callback(block, 100, SimpleNamespace(inputBufferAdcTime=0.0), status)

    stream = cast(AsyncGenerator[list[Reading], None], driver.stream())  # an async generator: has aclose()
    await asyncio.to_thread(portaudio_thread)
    readings = {r.tag: r for r in await asyncio.wait_for(anext(stream), 5)}
    assert readings["A.rms_dbfs"].value == pytest.approx(-12.04, abs=0.01)
    assert readings["dropped_frames"].value == 1
    assert windows
    assert all(w.samples.shape == (500, 2) for w in windows)
    health = driver.health()
    assert (health.device, health.callbacks, health.input_overflows) == ("USB", 30, 1)
    assert (health.open, health.source, health.sample_rate, health.channels) == (True, "device", 1000, 2)
    assert health.dropped_by_cause == {"input_overflow": 1}
    assert health.path is None  # another kind of source's field
    assert health.status_lines()[0].startswith("device 1000 Hz x 2  windows ")
    await stream.aclose()
    await driver.aclose()
    assert capture.stream.closed
    assert (driver.health().open, driver.health().device) == (False, None)


async def test_a_device_the_backend_refuses_is_a_driver_io_error_naming_it() -> None:
    driver = device_driver(FakeCapture(refuse="Invalid number of channels"))
    with pytest.raises(DriverIOError, match=r"^hyd: audio device 'USB': Invalid number of channels$"):
        await driver.open()


async def test_a_device_that_runs_at_48_khz_only_is_captured_at_48_khz_when_no_rate_is_set() -> None:
    # Many USB audio interfaces refuse 16 kHz. Without a configured sample_rate the driver captures
    # at the device's own rate (the models resample); with one, the error says what the device runs at.
    capture = FakeCapture(only_rate=48_000)
    config = AudioConfig(
        name="hyd", kind="audio", source="device", device="USB", window_s=0.5, hop_s=0.5, level_interval_s=1
    )
    driver = AudioDriver(config, capture=capture)
    windows: list[AudioWindow] = []
    driver.add_window_listener(windows.append)
    await driver.open()
    assert capture.settings is not None
    assert capture.settings.sample_rate == 48_000
    callback = capture.callback
    assert callback is not None

    def portaudio_thread() -> None:
        block = np.full((4800, 1), 0.25, dtype=np.float32)
        for _ in range(20):  # 2 s at 48 kHz
            callback(
                block, 4800, SimpleNamespace(inputBufferAdcTime=0.0), SimpleNamespace(input_overflow=False)
            )

    stream = cast(AsyncGenerator[list[Reading], None], driver.stream())  # an async generator: has aclose()
    await asyncio.to_thread(portaudio_thread)
    readings = {r.tag: r for r in await asyncio.wait_for(anext(stream), 5)}
    assert readings["A.rms_dbfs"].value == pytest.approx(-12.04, abs=0.01)
    assert windows
    assert all(w.sample_rate == 48_000 and w.samples.shape == (24_000, 1) for w in windows)
    assert driver.health().sample_rate == 48_000
    await stream.aclose()
    await driver.aclose()

    fixed = AudioConfig(name="hyd", kind="audio", source="device", device="USB", sample_rate=16_000)
    with pytest.raises(
        DriverIOError, match=r"Invalid sample rate .* runs at 48000 Hz: set sample_rate = 48000"
    ):
        await AudioDriver(fixed, capture=FakeCapture(only_rate=48_000)).open()


BASE: dict[str, Any] = {"name": "h1", "kind": "audio"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"source": "file"}, "needs 'path'"),
        ({"source": "stream"}, "needs 'stream_url'"),
        ({"source": "stream", "stream_url": "http://x"}, "tcp://HOST:PORT"),
        ({"source": "stream", "stream_url": "tcp://[10.0.0.5]:5000"}, r"'tcp://\[IPv6\]:PORT'"),
        ({"source": "stream", "stream_url": "tcp://[fe80::1]:0"}, r"port 0 is not in 1\.\.65535"),
        ({"source": "device", "window_s": 1.0, "hop_s": 2.0}, "must not exceed"),
        ({"source": "device", "channels": 2, "channel_names": ["A"]}, "channels = 2"),
        ({"source": "device", "night_start": "25:00"}, "HH:MM"),
        ({"source": "device", "gain": 3}, "Extra inputs"),
    ],
)
def test_config_errors_say_what_was_expected(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AudioConfig(**BASE, **extra)


def test_loopback_output_is_the_alsa_loopback_playback_device() -> None:
    """firmware-sim plays the hydrophones into snd-aloop where it exists (none in CI's container)."""
    from water_edge.sim.hydrophone_stream import find_loopback_output

    devices = [
        {"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "max_output_channels": 2},
        {"name": "Loopback: PCM (hw:1,0)", "max_input_channels": 32, "max_output_channels": 0},
        {"name": "Loopback: PCM (hw:1,1)", "max_output_channels": 32},
    ]
    assert find_loopback_output(devices) == 2
    assert find_loopback_output(devices[:2]) is None
    assert find_loopback_output([]) is None
