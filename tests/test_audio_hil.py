"""The audio driver end to end through its real capture path: the real PVC hydrophone recordings
and a generated two-sensor WAV through the file player, firmware-sim's live stream over TCP
(loss and restart under the supervisor, a consumer too slow for the ring), and bad input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from scipy.io import wavfile

from tests.support.plant import Plant, start_plant
from tests.support.testing import eventually, free_port, skip_without_ipv6_loopback
from water_edge.agent.supervisor import DeviceRunner
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Event, Reading
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.driver import AudioDriver
from water_edge.drivers.audio.window import AudioWindow
from water_edge.sim import hydrophone_stream
from water_edge.sim.component import SimContext
from water_edge.sim.hydrophone import BACKGROUND_RMS_DBFS
from water_edge.sim.pumpstation import PumpStation

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "leak-pvc-hydrophone"
RECORDING = DATA / "no-leak.wav"
# The real recordings live in ../shared/data beside the checkout (never copied into the repo).
needs_recording = pytest.mark.skipif(
    not RECORDING.is_file(), reason=f"real recording not present at {RECORDING}"
)


def audio(**kw: Any) -> AudioDriver:
    return AudioDriver(AudioConfig(name="hydro1", kind="audio", **kw))


async def collect(driver: AudioDriver, until: Any, within_s: float = 15.0) -> list[Reading]:
    """Run stream() until `until(readings)` holds; return the readings."""
    got: list[Reading] = []

    async def consume() -> None:
        async for batch in driver.stream():
            got.extend(batch)
            if until(got):
                return

    await asyncio.wait_for(consume(), within_s)
    return got


@pytest.fixture
async def closing() -> AsyncIterator[list[AudioDriver]]:
    drivers: list[AudioDriver] = []
    yield drivers
    for d in drivers:
        await d.aclose()


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2)))


@needs_recording
async def test_real_recording_windows_and_levels_match_the_file(closing: list[AudioDriver]) -> None:
    rate, data = wavfile.read(RECORDING)
    x = data.astype(np.float64) / 32768
    d = audio(
        source="file",
        path=RECORDING,
        playback_speed=40,
        window_s=1.0,
        hop_s=0.5,
        level_interval_s=5,
        channel_names=["A"],
    )
    closing.append(d)
    windows: list[AudioWindow] = []
    d.add_window_listener(windows.append)
    await d.open()
    intervals = len(x) // (5 * rate)
    readings = await collect(d, lambda got: sum(r.tag == "A.rms_dbfs" for r in got) >= intervals)
    rms = [r for r in readings if r.tag == "A.rms_dbfs"]
    for k, r in enumerate(rms):
        assert r.value == pytest.approx(rms_db(x[k * 5 * rate : (k + 1) * 5 * rate]), abs=0.006)
        assert r.unit == "dBFS"
        assert r.quality == "good"
    assert rms[1].ts_ns - rms[0].ts_ns == 5_000_000_000
    tags = {r.tag for r in readings}
    assert "A.band_2000hz_dbfs" in tags
    assert "A.band_4000hz_dbfs" not in tags
    assert "A.peak_dbfs" in tags
    # windows: 1 s, every 0.5 s, exact samples, exact timestamps
    assert len(windows) >= 2 * (intervals * 5) - 1
    t0 = windows[0].start_ts_ns
    for k, w in enumerate(windows):
        assert w.samples.shape == (rate, 1)
        assert w.sample_rate == rate
        assert w.dropped_before == 0
        assert w.start_ts_ns - t0 == k * 500_000_000
    k = 7
    assert np.allclose(windows[k].samples[:, 0], x[k * rate // 2 : k * rate // 2 + rate], atol=1e-7)
    assert d.health().dropped_frames == 0


@pytest.fixture(scope="module")
def two_channel_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hyd") / "leak.wav"
    argv = ["--wav", str(path), "--seconds", "3", "--leak-position-m", "30", "--seed", "3"]
    assert hydrophone_stream.main(argv) == 0
    return path


def test_a_leak_at_10_db_is_recorded_without_clipping_at_the_default_gain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's scene: a leak 10 dB over the background. At the recorder's old unity gain it ran
    past full scale (the agent then refused to learn from those seconds); the default gain leaves
    headroom, and a gain set too high is named as the cause."""
    scene = ["--seconds", "20", "--leak-position-m", "35", "--snr-db", "10", "--seed", "7"]
    default, hot = tmp_path / "default.wav", tmp_path / "hot.wav"
    assert hydrophone_stream.main(["--wav", str(default), *scene]) == 0
    assert "clipped" not in capsys.readouterr().out
    _, x = wavfile.read(default)
    assert np.abs(x.astype(np.int32)).max() < 32767
    assert hydrophone_stream.main(["--wav", str(hot), *scene, "--gain-db", "0"]) == 0
    assert "clipped at full scale (lower --gain-db)" in capsys.readouterr().out
    _, y = wavfile.read(hot)
    assert y.max() == 32767  # held at full scale, not wrapped round
    assert y.min() == -32768


async def test_generated_two_channel_file_loops_seamlessly(
    two_channel_wav: Path, closing: list[AudioDriver]
) -> None:
    rate, data = wavfile.read(two_channel_wav)
    assert (rate, data.shape[1]) == (16000, 2)
    d = audio(
        source="file",
        path=two_channel_wav,
        loop=True,
        playback_speed=10,
        window_s=0.5,
        hop_s=0.25,
        level_interval_s=1,
        channel_names=["A", "B"],
        calibration_db=[120.0, 121.0],
    )
    closing.append(d)
    windows: list[AudioWindow] = []
    d.add_window_listener(windows.append)
    await d.open()
    readings = await collect(d, lambda got: sum(r.tag == "B.rms_db" for r in got) >= 5)
    assert (d.health().loops or 0) >= 1
    x = data.astype(np.float32) / 32768
    looped = np.concatenate([x, x])
    for k, w in enumerate(windows):  # continuous across the wrap: same spacing, same samples
        assert w.start_ts_ns - windows[0].start_ts_ns == k * 250_000_000
        assert w.channel_names == ("A", "B")
        if k < 16:
            assert np.array_equal(w.samples, looped[k * 4000 : k * 4000 + 8000])
    b = [r for r in readings if r.tag == "B.rms_db"]
    b_fs = [r for r in readings if r.tag == "B.rms_dbfs"]
    assert b[0].value == pytest.approx(cast(float, b_fs[0].value) + 121.0, abs=0.011)
    assert b_fs[3].value == pytest.approx(rms_db(x[:16000, 1]), abs=0.006)  # 4th second = 1st again


async def test_a_file_played_once_is_read_to_its_last_frame_a_quarter_second_per_wake(
    two_channel_wav: Path, closing: list[AudioDriver]
) -> None:
    """The consumer is woken per WAKE_S of audio, not per 64 ms capture block (a Pi's CPU), and
    the frames after the last full quarter second still arrive when the file ends."""
    rate, data = wavfile.read(two_channel_wav)
    d = audio(
        source="file", path=two_channel_wav, playback_speed=4, window_s=1.0, hop_s=0.5, stall_timeout_s=60
    )  # not woken by the stall timeout either
    closing.append(d)
    windows: list[AudioWindow] = []
    d.add_window_listener(windows.append)
    await d.open()
    ring = d._ring
    assert ring is not None
    drains = 0
    drain = ring.drain

    def counting_drain() -> Any:
        nonlocal drains
        drains += 1
        return drain()

    ring.drain = counting_drain  # type: ignore[method-assign]
    consumer = asyncio.create_task(collect(d, lambda got: False, within_s=60))
    try:
        await eventually(lambda: d.health().frames_captured == len(data), what="every frame of the file")
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    blocks = -(-len(data) // round(0.064 * rate))
    assert d.health().finished
    assert drains <= len(data) / (0.25 * rate) + 2 < blocks / 3
    assert [w.start_ts_ns - windows[0].start_ts_ns for w in windows] == [
        k * 500_000_000 for k in range(2 * len(data) // rate - 1)
    ]
    assert np.array_equal(windows[-1].samples, data[-rate:].astype(np.float32) / 32768)


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    p = start_plant(components="hydrophones")
    try:
        yield p
    finally:
        p.stop()


async def test_live_stream_from_the_sim_delivers_windows_without_loss(
    plant: Plant, closing: list[AudioDriver]
) -> None:
    hyd: dict[str, Any] = plant.endpoints["hydrophones"]  # the sim's parsed JSON
    assert hyd["sample_rate"] == 16000
    assert hyd["channels"] == 2
    assert "alsa_loopback" in hyd
    d = audio(source="stream", stream_url=str(hyd["url"]), channel_names=["A", "B"], level_interval_s=1)
    closing.append(d)
    windows: list[AudioWindow] = []
    d.add_window_listener(windows.append)
    await d.open()
    before = time.time_ns()
    readings = await collect(d, lambda got: sum(r.tag == "A.rms_dbfs" for r in got) >= 2)
    assert len(windows) >= 3
    assert all(w.samples.shape == (16000, 2) and w.dropped_before == 0 for w in windows)
    # timestamps are the sim's clock: within a block or two of now
    assert abs(windows[-1].start_ts_ns + 1_000_000_000 - before) < 4_000_000_000
    level = next(r for r in readings if r.tag == "A.rms_dbfs")
    quiet_dbfs = BACKGROUND_RMS_DBFS + float(hyd["gain_db"])  # the calibrated background, after the gain
    assert quiet_dbfs - 10 < float(cast(float, level.value)) < quiet_dbfs + 10
    assert all(np.abs(w.samples).max() <= 1.0 for w in windows)  # a converter's output, even as float32
    h = d.health()
    assert h.dropped_frames == 0
    assert (h.blocks or 0) > 10
    assert next(r for r in readings if r.tag == "dropped_frames").value == 0


async def test_a_consumer_too_slow_for_the_ring_loses_counted_frames_not_the_driver(
    plant: Plant, closing: list[AudioDriver]
) -> None:
    d = audio(
        source="stream",
        stream_url=str(plant.endpoints["hydrophones"]["url"]),
        buffer_s=1.0,
        window_s=0.5,
        hop_s=0.5,
        level_interval_s=1,
    )
    closing.append(d)
    windows: list[AudioWindow] = []

    def slow(w: AudioWindow) -> None:
        windows.append(w)
        if len(windows) == 2:
            # The stimulus, not a wait: the event loop is blocked, the capture thread fills the ring.
            time.sleep(2.0)

    d.add_window_listener(slow)
    await d.open()
    await collect(d, lambda got: len(windows) >= 8)
    h = d.health()
    assert h.dropped_by_cause.get("ring_overrun", 0) >= 8000
    assert h.ring_capacity_frames == 16000
    assert (h.ring_fill_frames or 0) <= 16000
    assert any(w.dropped_before > 0 for w in windows[2:])
    assert h.recent_gaps[0].cause == "ring_overrun"


async def test_stream_lost_and_back_is_reopened_by_the_supervisor() -> None:
    port = free_port()
    ctx = SimContext(
        station=PumpStation(0),
        points=[],
        seed=0,
        host="127.0.0.1",
        workdir=Path("/tmp"),
        options={"port": port},
    )
    sim = hydrophone_stream.HydrophoneComponent()
    await sim.start(ctx)
    config = AudioConfig(
        name="hydro1", kind="audio", source="stream", stream_url=f"tcp://127.0.0.1:{port}", level_interval_s=1
    )
    events: list[Event] = []
    readings: list[Reading] = []

    async def on_readings(_stream: str, batch: list[Reading]) -> None:
        readings.extend(batch)

    async def on_event(event: Event) -> None:
        events.append(event)

    runner = DeviceRunner(
        config, AudioDriver(config), on_readings, on_event, backoff_min_s=0.2, backoff_max_s=0.5
    )
    task = asyncio.create_task(runner.run())

    try:
        await eventually(lambda: any(r.tag == "A.rms_dbfs" and r.quality == "good" for r in readings), 15)
        await sim.stop()
        await eventually(lambda: any(e.kind == "driver_down" for e in events), 15)
        assert runner.stats.state == "down"
        assert any(r.quality == "bad" and r.tag == "A.rms_dbfs" for r in readings)  # the gap shows
        sim = hydrophone_stream.HydrophoneComponent()
        await sim.start(ctx)
        await eventually(lambda: any(e.kind == "driver_up" for e in events), 15)
        n = len(readings)
        await eventually(lambda: any(r.quality == "good" for r in readings[n:]), 15)
        assert runner.stats.reconnects == 1
        assert runner.stats.crashes == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def test_nan_and_infinite_samples_are_read_as_silence_counted_and_flagged(
    tmp_path: Path, closing: list[AudioDriver]
) -> None:
    # A float WAV (or a float source) may hold NaN or infinity: a broken converter, a damaged
    # file. Before, they went into every level (NaN readings of quality good), every window (the
    # leak detector dropped them uncounted; an infinity crashed the machine-sound processor).
    rate = 8000
    x = 0.1 * np.random.default_rng(2).standard_normal((6 * rate, 2)).astype(np.float32)
    x[rate + 17, 0] = np.nan
    x[rate + 400, 1] = np.inf
    x[2 * rate + 5, 0] = -np.inf
    x[4 * rate :] = np.nan  # from here the input sends nothing but NaN
    path = tmp_path / "garbage.wav"
    wavfile.write(path, rate, x)
    d = audio(source="file", path=path, playback_speed=20, window_s=0.5, hop_s=0.25,
              level_interval_s=1, channel_names=["A", "B"])  # fmt: skip
    closing.append(d)
    windows: list[AudioWindow] = []
    d.add_window_listener(windows.append)
    await d.open()
    readings = await collect(d, lambda got: sum(r.tag == "B.rms_dbfs" for r in got) >= 6)
    assert all(np.isfinite(r.value) for r in readings if isinstance(r.value, float))
    assert all(np.isfinite(w.samples).all() for w in windows)
    assert len(windows) == 4 * 6 - 1
    rms = [r for r in readings if r.tag == "A.rms_dbfs"]
    assert [r.quality for r in rms] == ["good", "uncertain", "uncertain", "good", "bad", "bad"]
    assert rms[1].reason == "2 frame(s) held NaN or infinite samples, read as 0"
    assert rms[0].value == pytest.approx(rms_db(x[:rate, 0]), abs=0.006)
    assert rms[4].value == -200.0  # read as digital silence: the models report a lost signal
    assert rms[4].reason == (
        f"{rate} frame(s) held NaN or infinite samples, read as 0; sensor fault: digital silence in 1 of 1 s"
    )
    assert all(w.faults == ("silence", "silence") for w in windows[-3:])  # kept out of the baselines
    health = d.health()
    assert health.nonfinite_frames == 3 + 2 * rate
    assert health.dropped_frames == 0
    assert f"{3 + 2 * rate} frames held NaN or infinite samples (read as 0)" in health.status_lines()


async def test_an_input_driven_into_clipping_is_counted_and_said(
    tmp_path: Path, closing: list[AudioDriver]
) -> None:
    """A preamp with its gain too high flattens the loud parts at full scale: every level and
    feature the models learn is distorted, and nothing said so."""
    rate = 8000
    x = (0.05 * np.random.default_rng(3).standard_normal((4 * rate, 1))).astype(np.float32)
    x[rate : rate + 800] = 1.0  # a tenth of a second pinned at full scale
    x[2 * rate : 2 * rate + 200] = -1.0
    path = tmp_path / "clipped.wav"
    wavfile.write(path, rate, (x * 32767).astype(np.int16))
    d = audio(source="file", path=path, playback_speed=20, window_s=0.5, hop_s=0.25, level_interval_s=1)
    closing.append(d)
    await d.open()
    await collect(d, lambda got: sum(r.tag.endswith(".rms_dbfs") for r in got) >= 4)
    health = d.health()
    assert health.clipped_frames == 1000
    assert "CLIPPING: 1000 frames at full scale (3.12% of those captured): lower the input gain" in (
        health.status_lines()
    )


# --- bad input ---------------------------------------------------------------------------------


def wav_with_format_tag(path: Path, tag: int) -> Path:
    import struct

    fmt = struct.pack("<HHIIHH", tag, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 4) + b"\0" * 4
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@needs_recording
async def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n")
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(RECORDING.read_bytes()[:20000])
    cases = [
        (text, "not a readable WAV file"),
        (truncated, "truncated WAV file"),
        (wav_with_format_tag(tmp_path / "mp3.wav", 0x55), "not a readable WAV file"),
        (tmp_path / "missing.wav", "no such file"),
    ]
    for path, message in cases:
        with pytest.raises(DriverIOError, match=message) as err:
            await audio(source="file", path=path).open()
        assert str(path) in str(err.value)
    with pytest.raises(DriverIOError, match=r"has 1 channel\(s\) but the config expects 2"):
        await audio(source="file", path=RECORDING, channel_names=["A", "B"]).open()
    with pytest.raises(DriverIOError, match="sampled at 8000 Hz but the config expects sample_rate = 16000"):
        await audio(source="file", path=RECORDING, sample_rate=16000).open()


async def test_a_header_whose_frame_size_is_no_sample_type_is_a_clear_error(tmp_path: Path) -> None:
    # Found by fuzzing the WAV reader (atheris): float samples, 32 bits, but 35 bytes per frame.
    # scipy asked numpy for the type '<f35' and its TypeError escaped the reader: the driver's open
    # failed with a traceback in place of a reason naming the file.
    import struct

    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 8000 * 35, 35, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 70) + bytes(70)
    path = tmp_path / "odd.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(DriverIOError, match="not a readable WAV file") as err:
        await audio(source="file", path=path).open()
    assert str(path) in str(err.value)


OVERWRITE_WHILE_PLAYED = """
import asyncio, os, sys
from pathlib import Path
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.driver import AudioDriver

async def main() -> None:
    path = Path(sys.argv[1])
    d = AudioDriver(AudioConfig(name="hydro1", kind="audio", source="file", path=path, playback_speed=4))
    await d.open()
    async def play() -> None:
        async for _ in d.stream():
            pass
    task = asyncio.create_task(play())
    await asyncio.sleep(0.5)
    os.truncate(path, 1001)  # what `cp new.wav rec.wav` does first
    try:
        await asyncio.wait_for(task, 10)
    except Exception as exc:
        print(type(exc).__name__, exc)
    await d.aclose()

asyncio.run(main())
"""


def test_a_file_overwritten_while_it_is_played_is_a_driver_error_not_a_crash(tmp_path: Path) -> None:
    # Before, blocks were read through the file's memory map: the pages past the new end raised
    # SIGBUS and the whole agent died, without a word in its log.
    path = tmp_path / "rec.wav"
    wavfile.write(path, 8000, (1000 * np.sin(np.arange(8000 * 20) / 5)).astype(np.int16))
    res = subprocess.run(
        [sys.executable, "-c", OVERWRITE_WHILE_PLAYED, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert f"DriverIOError hydro1: {path}: now ends before frame" in res.stdout
    assert "the file changed while it was read" in res.stdout


async def test_a_stream_on_an_ipv6_address_is_read(closing: list[AudioDriver]) -> None:
    skip_without_ipv6_loopback()
    ctx = SimContext(
        station=PumpStation(0), points=[], seed=0, host="::1", workdir=Path("/tmp"), options={"port": 0}
    )
    sim = hydrophone_stream.HydrophoneComponent()
    (endpoint,) = await sim.start(ctx)
    try:
        url = str(endpoint.detail["url"])
        assert url.startswith("tcp://[::1]:")
        d = audio(source="stream", stream_url=url, channel_names=["A", "B"], level_interval_s=1)
        closing.append(d)
        await d.open()
        readings = await collect(d, lambda got: any(r.tag == "A.rms_dbfs" for r in got))
        assert any(r.tag == "A.rms_dbfs" and r.quality == "good" for r in readings)
    finally:
        await sim.stop()


async def test_bad_streams_give_clear_errors() -> None:
    with pytest.raises(DriverIOError, match="cannot connect"):
        await audio(source="stream", stream_url=f"tcp://127.0.0.1:{free_port()}").open()

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 100)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DriverIOError, match="not a hydrophone stream"):
            await audio(source="stream", stream_url=f"tcp://127.0.0.1:{port}").open()
    finally:
        server.close()


def test_no_portaudio_device_is_a_clear_error() -> None:
    import sounddevice as sd

    if len(sd.query_devices()) > 0:
        pytest.skip("this machine has an audio device")  # the error path needs a machine without one
    with pytest.raises(DriverIOError, match="audio device"):
        asyncio.run(audio(source="device", sample_rate=16000, channels=2).open())
