"""What real sound hardware and sensors do that a clean recording does not, through the audio
driver's real capture path (a WAV through the file player; PortAudio itself replaced by a fake only
where no sound card can run here): a USB interface unplugged and plugged back under a new index,
a card that replays its last buffer, a card whose clock is a little off over a day, and sensors
that still send samples without listening to the pipe (digital silence, DC, mains hum from a
hydrophone disconnected at its preamp, saturation, a channel copied from the other), which must
be flagged, counted and kept out of the leak baseline and the machine-sound clips."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import AsyncGenerator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from scipy.io import wavfile
from structlog.testing import capture_logs

from tests.support.supervised import supervised
from tests.support.testing import eventually
from tests.test_leak_field import SECTION
from water_edge.core.local_zone import zone
from water_edge.core.reading import Event, Reading
from water_edge.drivers.audio import device as device_module
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.device import CaptureCallback
from water_edge.drivers.audio.driver import AudioDriver
from water_edge.drivers.audio.faults import classify
from water_edge.drivers.audio.levels import LevelMeter, NightTracker
from water_edge.drivers.audio.ring import Chunk
from water_edge.drivers.audio.source import GapLog
from water_edge.drivers.audio.window import AudioWindow, Clock, Windower
from water_edge.models.leak.baseline import Baseline, BaselineError
from water_edge.models.leak.calibration import calibrate_sensor
from water_edge.models.leak.processor import AudioLeakProcessor
from water_edge.models.leak.store import SensorStore
from water_edge.models.machine_sound.clips import ClipAssembler
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

RATE = 8000
NS = 1_000_000_000


async def play(
    path: Path, shown: list[str | None] | None = None, **kw: Any
) -> tuple[list[Reading], list[AudioWindow], AudioDriver]:
    """Play a WAV through the driver (fast) to its end: every reading and window it gave (and in
    `shown`, channel A's `sensor_faults` as each window was delivered). The ring holds the whole
    file: at 200 times real time a busy machine would otherwise drop frames."""
    kw.setdefault("buffer_s", 300)
    d = AudioDriver(AudioConfig(name="hyd", kind="audio", source="file", path=path, **kw))
    windows: list[AudioWindow] = []
    d.add_window_listener(windows.append)
    if shown is not None:
        d.add_window_listener(lambda _: shown.append(d.sensor_faults.get("A")))
    await d.open()
    got: list[Reading] = []
    rate, data = wavfile.read(path, mmap=True)
    frames: int = data.shape[0]
    seconds: int = frames // rate
    interval: int = kw.get("level_interval_s", 10)
    window, hop = round(d.config.window_s * rate), round(d.config.hop_s * rate)

    async def consume() -> None:
        async for batch in d.stream():
            got.extend(batch)

    def played() -> bool:  # the last windows come in a drain after the last level reading
        levels = sum(r.tag.endswith("A.rms_dbfs") for r in got)
        return levels >= seconds // interval and len(windows) >= (frames - window) // hop + 1

    task = asyncio.create_task(consume())
    try:
        await eventually(played, 30, lambda: f"{len(got)} readings and {len(windows)} windows")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await d.aclose()
    return got, windows, d


# --- sensor faults in the signal ----------------------------------------------------------------

SEGMENTS = ["ok", "mains_hum", "dc", "silence", "duplicate", "clipping", "ok"]  # 2 s each, channel B


def faulty_two_channel_wav(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A: a hydrophone's noise throughout. B: its own noise, then each fault for 2 s."""
    rng = np.random.default_rng(5)
    n = 2 * RATE
    t = np.arange(n) / RATE
    a = (0.05 * rng.standard_normal(len(SEGMENTS) * n)).astype(np.float32)
    parts = []
    for i, kind in enumerate(SEGMENTS):
        mine = 0.05 * rng.standard_normal(n)
        parts.append(
            {
                "ok": mine,
                # disconnected at the preamp: the open input picks up 50 Hz and its odd harmonics
                "mains_hum": 0.2 * np.sin(2 * np.pi * 50 * t)
                + 0.05 * np.sin(2 * np.pi * 150 * t + 1)
                + 0.02 * np.sin(2 * np.pi * 250 * t)
                + 1e-4 * rng.standard_normal(n),
                "dc": np.full(n, 0.02),
                "silence": np.zeros(n),
                "duplicate": a[i * n : (i + 1) * n],
                "clipping": np.clip(40 * mine, -1.0, 1.0),
            }[kind]
        )
    x = np.stack([a, np.concatenate(parts).astype(np.float32)], axis=1)
    path = tmp_path / "faults.wav"
    wavfile.write(path, RATE, x)
    return path, x


async def test_sensor_faults_in_the_signal_are_flagged_counted_and_said(tmp_path: Path) -> None:
    path, _ = faulty_two_channel_wav(tmp_path)
    readings, windows, d = await play(
        path, playback_speed=50, window_s=0.5, hop_s=0.5, level_interval_s=2, channel_names=["A", "B"]
    )
    b = [r for r in readings if r.tag == "B.rms_dbfs"]
    a = [r for r in readings if r.tag == "A.rms_dbfs"]
    # Before, every one of these read `good`: hum, a stuck DC, zeros, a copy of A and a saturated
    # input went out as the pipe's level. Saturated is the pipe, distorted: uncertain, not bad.
    assert [r.quality for r in b] == ["good", "bad", "bad", "bad", "bad", "uncertain", "good"]
    assert [r.quality for r in a] == ["good"] * 7
    assert (
        b[1].reason == "sensor fault: mains hum only (a hydrophone disconnected at its preamp?) in 2 of 2 s"
    )
    assert b[3].reason == "sensor fault: digital silence in 2 of 2 s"
    assert b[4].reason == "sensor fault: a copy of another channel in 2 of 2 s"
    assert b[5].reason == "sensor fault: saturated at full scale in 2 of 2 s"
    bands = [r for r in readings if r.tag.startswith("B.band_") and r.ts_ns == b[2].ts_ns]
    assert len(bands) == 7  # 31.5 Hz .. 2 kHz at 8 kHz
    assert all(r.quality == "bad" for r in bands)

    assert len(windows) == 28
    assert [w.faults for w in windows[:4]] == [(None, None)] * 4
    got = [w.faults[1] for w in windows]
    assert got == [None if k == "ok" else k for k in SEGMENTS for _ in range(4)]
    assert all(w.faults[0] is None for w in windows)
    health = d.health()
    assert health.fault_windows == {
        "B.clipping": 4, "B.dc": 4, "B.duplicate": 4, "B.mains_hum": 4, "B.silence": 4
    }  # fmt: skip
    assert health.sensor_faults == {}  # closed: unknown
    assert "windows with a sensor fault: B.clipping 4, B.dc 4, B.duplicate 4, B.mains_hum 4, B.silence 4" in (
        health.status_lines()
    )


async def test_a_sensor_fault_shows_in_status_while_it_lasts(tmp_path: Path) -> None:
    x = np.zeros((6 * RATE, 1), dtype=np.float32)  # an input enabled with nothing on it
    path = tmp_path / "dead.wav"
    wavfile.write(path, RATE, x)
    d = AudioDriver(
        AudioConfig(name="hyd", kind="audio", source="file", path=path, loop=True, playback_speed=20)
    )
    await d.open()
    try:
        stream = cast(AsyncGenerator[list[Reading], None], d.stream())  # an async generator: has aclose()
        await asyncio.wait_for(anext(stream), 10)
        assert d.health().sensor_faults == {"A": "silence"}
        assert (
            "SENSOR FAULT A: digital silence: kept out of the models' baselines" in d.health().status_lines()
        )
        await stream.aclose()
    finally:
        await d.aclose()


def test_a_dropout_is_not_the_night_minimum() -> None:
    # Noise loggers report the quietest second of the night. Before: 10 s of zeros from a card
    # that dropped out made it -200 dBFS, and the night-to-night spread 90 dB.
    rng = np.random.default_rng(6)
    night = NightTracker("00:00", "00:01", 7, 2, localtime=time.gmtime)  # 1970-01-01 00:00 UTC
    m = LevelMeter("h", Clock(0, RATE), ["A", "B"], interval_s=10, bands_hz=[125.0], calibration_db=None,
                   night=night)  # fmt: skip
    minima = []
    for day in range(2):
        x = (0.01 * rng.standard_normal((70 * RATE, 2))).astype(np.float32)
        if day == 1:
            x[20 * RATE : 30 * RATE, 0] = 0.0  # A dropped out for 10 s
        start = day * 86400 * RATE
        readings = m.feed([Chunk(start, x)])
        minima += [r for r in readings if "night_min" in r.tag]
    values = {r.tag: cast(float, r.value) for r in minima}  # the level meter's values are floats
    assert values["A.night_min_dbfs"] == pytest.approx(-40.0, abs=0.5)
    assert values["A.night_min_spread_db"] < 1.0
    assert values["B.night_min_spread_db"] < 1.0


async def test_machine_sound_clips_never_hold_a_faulty_stretch(tmp_path: Path) -> None:
    path, _ = faulty_two_channel_wav(tmp_path)
    _, windows, _ = await play(
        path, playback_speed=50, window_s=0.5, hop_s=0.5, level_interval_s=2, channel_names=["A", "B"]
    )
    assembler = ClipAssembler(1.0, ["B"])
    clips = [c for w in windows for c in assembler.feed(w)]
    t0 = windows[0].start_ts_ns
    starts = [round((c.start_ts_ns - t0) / NS, 1) for c in clips]
    # Before: a clip of every second, hum and the copy of A included, none marked (14 clips).
    # Now: the machine's sound (0-2 s, 12-14 s), the dead input's own clips (DC, zeros) for the
    # processor to report the microphone not heard, the saturated ones marked (scored, never
    # learnt); hum and the copy left out.
    assert starts == [0.0, 1.0, 4.0, 5.0, 6.0, 7.0, 10.0, 11.0, 12.0, 13.0]
    assert [c.saturated for c in clips] == [False] * 6 + [True, True, False, False]
    assert assembler.faulty == 8
    assert all(np.all(c.samples == c.samples[0]) for c in clips[2:6])


def test_what_is_and_is_not_a_sensor_fault() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(RATE) / RATE

    def one(x: np.ndarray) -> str | None:
        return classify(x.astype(np.float32)[:, None], RATE)[0]

    noise = 0.05 * rng.standard_normal(RATE)
    assert one(noise) is None
    assert one(0.3 * np.sin(2 * np.pi * 250 * t)) is None  # a calibrator's tone
    assert one(0.3 * np.sin(2 * np.pi * 1000 * t)) is None
    # a pump's 100 Hz line 10 dB over the pipe's noise: a hydrophone that hears
    assert one(0.22 * np.sin(2 * np.pi * 100 * t) + noise) is None
    assert one(0.3 * np.sin(2 * np.pi * 50.1 * t) + 1e-3 * rng.standard_normal(RATE)) == "mains_hum"
    us = 0.3 * np.sin(2 * np.pi * 60 * t) + 0.1 * np.sin(2 * np.pi * 180 * t)
    assert one(us + 1e-3 * rng.standard_normal(RATE)) == "mains_hum"
    assert one(np.full(RATE, -0.5)) == "dc"
    assert one(np.zeros(RATE)) == "silence"
    assert one(np.clip(noise * 30, -1, 1)) == "clipping"
    assert classify(np.stack([noise, noise], axis=1).astype(np.float32), RATE) == (None, "duplicate")
    stalled = noise.copy()
    stalled[3000:3800] = 0.0  # 100 ms of zeros: a buffer underrun
    assert one(stalled) == "dropout"
    held = noise.copy()
    held[5100:5900] = held[5099]  # 100 ms of the last value: a converter that stopped
    assert one(held) == "dropout"
    short = noise.copy()
    short[3000:3240] = 0.0  # 30 ms: shorter than any 50 ms block
    assert one(short) is None
    lsb = 1 / 32768  # the quietest input a 16-bit card hears: noise of one step, quantised
    assert one(np.round(rng.standard_normal(RATE)) * lsb) is None


# --- the leak baseline never learns a fault as the pipe's quiet -------------------------------


async def test_a_dropout_and_a_hydrophone_off_its_preamp_stay_out_of_the_leak_baseline(
    tmp_path: Path,
) -> None:
    # Night audio of two hydrophones. A: the USB interface dropped out for 25 s (the sound server
    # fed zeros) in the first check. B: disconnected at its preamp all along: mains hum only.
    x = _night_audio(seed=101)
    x[10 * RATE : 35 * RATE, 0] = 0.0
    t = np.arange(x.shape[0]) / RATE
    rng = np.random.default_rng(3)
    x[:, 1] = (
        0.3 * np.sin(2 * np.pi * 50 * t)
        + 0.05 * np.sin(2 * np.pi * 150 * t)
        + 1e-4 * rng.standard_normal(t.size)
    )
    path = tmp_path / "night.wav"
    wavfile.write(path, RATE, x)
    _, windows, _ = await play(path, playback_speed=200, channel_names=["A", "B"])  # 1 s windows, 0.5 s hop

    state = tmp_path / "state"
    proc, events = await _listened(state, [windows] * 4)
    checks = SensorStore(state, "hyd.A").checks()
    first, second = checks[0], checks[1]
    # Before: the 25 s of zeros were 42 % of the first check: its quiet level read -187 dB, the
    # pipe's quiet of that minute 120 dB lower than the next, and went into the baseline.
    assert first.seconds < second.seconds
    assert first.quiet_db == pytest.approx(second.quiet_db, abs=3.0)
    assert min(c.quiet_db for c in checks) > -100
    learned = {e.source: e for e in events if e.kind == "leak_baseline"}
    assert set(learned) == {"hyd.A"}  # before: hyd.B learned a baseline of mains hum
    assert min(learned["hyd.A"].detail["night_quiet_db"]) > -100
    assert not SensorStore(state, "hyd.B").checks_path.exists()
    lost = [e for e in events if e.kind == "hydrophone_signal_lost"]
    assert [(e.source, e.detail["reason"]) for e in lost] == [
        ("hyd.B", "sensor fault: mains hum only (a hydrophone disconnected at its preamp?)")
    ]
    health = proc.health().sensors
    assert health["hyd.B"].fault_seconds >= 4 * 119
    assert 4 * 25 <= health["hyd.A"].fault_seconds <= 4 * 27
    assert not [e for e in events if e.kind in ("leak", "leak_warning")]


async def test_a_stalling_input_never_teaches_the_baseline_a_quieter_pipe(tmp_path: Path) -> None:
    # A USB interface that stalls 0.7 s in every 5 (the sound server feeds zeros) through the three
    # nights the baseline is learnt from; then it is replaced. No window is all zeros, so before,
    # nothing was marked: the tenth percentile of the one-second levels (a check's quiet) fell on
    # the stalled seconds, 17 dB under the pipe's, and the clean nights after rose 18 dB over it.
    x = _night_audio(seed=103)
    wavfile.write(tmp_path / "clean.wav", RATE, x)
    stalled = x.copy()
    for at in np.arange(1.2, 120, 5.0):
        stalled[round(at * RATE) : round((at + 0.7) * RATE), 0] = 0.0
    wavfile.write(tmp_path / "stalled.wav", RATE, stalled)
    _, clean, _ = await play(tmp_path / "clean.wav", playback_speed=200, channel_names=["A", "B"])
    with capture_logs() as logs:
        _, stalls, driver = await play(tmp_path / "stalled.wav", playback_speed=200, channel_names=["A", "B"])
    # one fault while the card keeps stalling, not two log lines per stall
    said = [(e["event"], e.get("fault")) for e in logs if e["event"].startswith("audio.sensor_fault")]
    assert said == [("audio.sensor_fault", "dropout")]
    assert all(w.faults[0] in (None, "dropout") for w in stalls)
    assert sum(w.faults[0] == "dropout" for w in stalls) >= 2 * 24  # each stall: 2 or 3 windows hold it
    assert driver.health().fault_windows["A.dropout"] >= 2 * 24

    state = tmp_path / "state"
    proc, events = await _listened(state, [stalls] * 3 + [clean] * 3)
    checks = SensorStore(state, "hyd.A").checks()
    learnt = [c for c in checks if c.night <= "2025-03-03"]
    heard = [c for c in checks if c.night >= "2025-03-04"]
    assert len(learnt) == 6
    assert len(heard) >= 5  # the last night's last check is never closed
    # each stall costs the one second (two where it crosses a second) it falls in, not its window
    a = proc.health().sensors["hyd.A"]
    assert 3 * 24 <= a.fault_seconds <= 3 * 2 * 24
    assert all(c.seconds >= 60 - 2 * 12 for c in learnt)
    # the same pipe (the same audio) in each check: stalled or not, the same quiet
    assert max(abs(s.quiet_db - c.quiet_db) for s in learnt for c in heard if s.index == c.index) < 1.0
    assert [e.source for e in events if e.kind == "leak_baseline"] == ["hyd.A", "hyd.B"]
    assert not [e for e in events if e.kind in ("leak", "leak_warning", "hydrophone_signal_lost")]
    learnt_baseline = SensorStore(state, "hyd.A").load()
    assert learnt_baseline is not None
    assert learnt_baseline.sample_rate == RATE  # the device's rate: what `score leak` compares with


async def test_a_stall_that_holds_a_value_is_left_out_at_a_rate_that_is_resampled(tmp_path: Path) -> None:
    # At 44.1 kHz the leak detector's audio is resampled to 8 kHz, which blurs a held value: its
    # seconds are not one value any more. The driver's window mark (on the audio as captured)
    # leaves them out instead. Before: none of the ten 0.3 s stalls was left out.
    from scipy import signal

    x = signal.resample_poly(_night_audio(seed=105).astype(np.float64), 441, 80).astype(np.float32)
    rate = 44100
    for at in np.arange(5.2, 60, 6.0):
        a = round(at * rate)
        x[a : a + round(0.3 * rate), 0] = x[a - 1, 0]  # the converter stopped on its last value
    path = tmp_path / "held.wav"
    wavfile.write(path, rate, x[: 62 * rate])
    _, windows, _ = await play(path, playback_speed=100, channel_names=["A", "B"])
    assert sum(w.faults[0] == "dropout" for w in windows) >= 2 * 10
    proc, events = await _listened(tmp_path / "state", [windows])
    a, b = proc.health().sensors["hyd.A"], proc.health().sensors["hyd.B"]
    # each stall: the second it falls in (a window's mark reaches the seconds not yet measured)
    assert 10 <= a.fault_seconds <= 2 * 10
    assert b.fault_seconds == 0
    assert not [e for e in events if e.kind == "hydrophone_signal_lost"]


async def test_a_card_that_stops_stalling_is_shown_cleared_after_a_minute(tmp_path: Path) -> None:
    # Stalls in the first 20 s, then 80 s without one: one fault, one clear, the clear a minute of
    # audio after the last stall (not after each stall, as with the other faults).
    x = _night_audio(seed=104)[: 100 * RATE]
    for at in (2.3, 7.3, 12.3, 17.3):
        x[round(at * RATE) : round((at + 0.2) * RATE), 0] = 0.0
    wavfile.write(tmp_path / "stalls.wav", RATE, x)
    shown: list[str | None] = []
    with capture_logs() as logs:
        _, windows, _ = await play(
            tmp_path / "stalls.wav", shown, playback_speed=200, channel_names=["A", "B"]
        )
    said = [(e["event"], e.get("fault")) for e in logs if e["event"].startswith("audio.sensor_fault")]
    assert said == [("audio.sensor_fault", "dropout"), ("audio.sensor_fault_cleared", None)]
    assert [w.faults[0] for w in windows].count("dropout") >= 4 * 2
    assert all(w.faults[1] is None for w in windows)
    t0 = windows[0].start_ts_ns
    since = [(w.start_ts_ns - t0) / NS for w, fault in zip(windows, shown, strict=True) if fault]
    stalled = [(w.start_ts_ns - t0) / NS for w in windows if w.faults[0] == "dropout"]
    assert since[0] == stalled[0] == pytest.approx(1.5, abs=0.5)  # from the first stall's window
    assert stalled[-1] + 59 <= since[-1] < stalled[-1] + 60  # to a minute after the last one's


async def test_a_saturated_hydrophone_is_judged_but_never_learnt_from(tmp_path: Path) -> None:
    # Three good nights, then the preamp's gain is turned up too far on A: it clips. A leak can be
    # loud enough to clip, so those nights are judged; a baseline learnt from them would be
    # distorted in every band. Before: nothing knew, and recalibrating took them in.
    x = _night_audio(seed=102)
    wavfile.write(tmp_path / "good.wav", RATE, x)
    hot = x.copy()
    hot[:, 0] = np.clip(20 * hot[:, 0], -1.0, 1.0)
    wavfile.write(tmp_path / "hot.wav", RATE, hot)
    _, good, _ = await play(tmp_path / "good.wav", playback_speed=200, channel_names=["A", "B"])
    _, clipped, _ = await play(tmp_path / "hot.wav", playback_speed=200, channel_names=["A", "B"])
    assert all(w.faults == ("clipping", None) for w in clipped)

    state = tmp_path / "state"
    proc, events = await _listened(state, [good, good, good, clipped, clipped, good])
    learned = [(e.source, e.detail["nights"]) for e in events if e.kind == "leak_baseline"]
    assert ("hyd.A", ["2025-03-01", "2025-03-02", "2025-03-03"]) in learned
    # Judged: clipping spreads the pipe's sound into bands it never reached, which reads as a
    # change of shape; what the detector says carries how much of the check was saturated.
    judged = [e for e in events if e.source == "hyd.A" and e.kind in ("leak_warning", "leak")]
    assert judged
    assert all(e.detail["input_saturated_s"] >= 50 for e in judged)
    a = proc.health().sensors["hyd.A"]
    assert a.checks >= 4  # nights 4 and 5 judged
    assert a.saturated_seconds >= 2 * 110
    assert a.fault_seconds == 0
    stored = SensorStore(state, "hyd.A").checks()
    assert {c.night for c in stored if c.saturated_s} == {"2025-03-04", "2025-03-05"}
    again = calibrate_sensor([SECTION], state, "hyd.A", {})
    assert again.nights == ["2025-03-01", "2025-03-02", "2025-03-03", "2025-03-06"]
    assert again.sample_rate == RATE  # from its stored checks: the device's rate
    with pytest.raises(BaselineError, match="saturated at full scale: lower the input gain"):
        Baseline.learn([c for c in stored if c.saturated_s], sensor="hyd.A")


async def test_a_hydrophone_clipping_all_day_holds_no_growing_record_of_it(tmp_path: Path) -> None:
    # Gain set for quiet nights, clipping in the day's traffic: each clipping window was kept until
    # the night window opened (two a second, ~21 MB by 02:00 per channel).
    hot = _night_audio(seed=103)
    hot[:, 0] = np.clip(20 * hot[:, 0], -1.0, 1.0)
    wavfile.write(tmp_path / "hot.wav", RATE, hot)
    _, clipped, _ = await play(tmp_path / "hot.wav", playback_speed=200, channel_names=["A", "B"])
    assert sum(w.faults == ("clipping", None) for w in clipped) >= 200
    proc = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]
    noon = int(datetime(2025, 3, 1, 12, 0, tzinfo=zone("Europe/Amsterdam")).timestamp() * NS)

    async def daytime() -> Any:
        for w in clipped:
            yield dataclasses.replace(w, start_ts_ns=noon + w.start_ts_ns - clipped[0].start_ts_ns)

    async def emit(_: Event) -> None:
        return None

    await proc.consume(daytime(), emit)
    (a,) = [s for s in proc.sensors if s.channel == 0]
    assert len(a.saturated) <= 3
    assert a.saturated_seconds == 0  # not a night: nothing judged, nothing counted


class _NoDriver:
    def add_window_listener(self, callback: object) -> object:
        return lambda: None


def _night_audio(seed: int) -> np.ndarray:
    """121 s of two hydrophones on a quiet ductile-iron main, at half of full scale at most."""
    scene = PipeScene("ductile_iron", 150.0, 100.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=RATE,
                      channels=2, seed=seed, site_seed=7)  # fmt: skip
    x = HydrophoneSynth(scene).render_seconds(121).astype(np.float32)
    peak: float = np.max(np.abs(x))
    return 0.5 * x / peak


async def _listened(state: Path, nights: list[list[AudioWindow]]) -> tuple[AudioLeakProcessor, list[Event]]:
    """A leak processor (`SECTION`) on `state` given each night's windows, from 1 March 2025 at 02:00
    local time on: the processor and the events it emitted."""
    proc = AudioLeakProcessor(SECTION, _NoDriver(), state)  # type: ignore[arg-type]
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    async def played() -> Any:
        tz = zone("Europe/Amsterdam")
        for day, windows in enumerate(nights, start=1):
            start = int(datetime(2025, 3, day, 2, 0, tzinfo=tz).timestamp() * NS)
            for w in windows:
                yield dataclasses.replace(w, start_ts_ns=start + w.start_ts_ns - windows[0].start_ts_ns)

    await proc.consume(played(), emit)
    return proc, events


async def test_audio_after_a_gap_is_not_joined_to_the_audio_before_it(tmp_path: Path) -> None:
    # An overloaded gateway: PortAudio overflowed every 3 s in the first minute, 0.45 s each. The
    # driver never lets a window span a gap; before, the leak detector joined the audio after each
    # gap to the audio before as one continuous clip (each jump was within its 0.5 s tolerance), so
    # its seconds ran 9.45 s behind by the end of the minute and the next minute's loud audio was
    # judged as this minute's quiet.
    rng = np.random.default_rng(8)
    x = 0.01 * rng.standard_normal((123 * RATE, 2)).astype(np.float32)
    x[60 * RATE :] *= 10  # +20 dB from 02:01:00
    tz = zone("Europe/Amsterdam")
    start = int(datetime(2025, 3, 1, 2, 0, tzinfo=tz).timestamp() * NS)
    windower = Windower("hyd", Clock(start, RATE), ["A", "B"], RATE, RATE // 2)
    gaps = [(3 * k * RATE, 3 * k * RATE + round(0.45 * RATE)) for k in range(1, 20)]
    chunks, at = [], 0
    for lo, hi in gaps:
        chunks.append(Chunk(at, x[at:lo]))
        at = hi
    chunks.append(Chunk(at, x[at:]))
    windows = windower.feed(chunks)
    assert sum(w.dropped_before > 0 for w in windows) == 19
    proc = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]

    async def feed() -> Any:
        for w in windows:
            yield w

    async def emit(_: Event) -> None:
        return None

    await proc.consume(feed(), emit)
    checks = SensorStore(tmp_path, "hyd.A").checks()
    # 02:00's minute is quiet throughout: its loudest seconds are as quiet as its quietest (before:
    # 20.4 dB apart, the loud minute's first 9 s in it), and 20 dB below the next minute's.
    assert float(np.median(checks[0].p90 - checks[0].p10)) < 5
    assert [c.index for c in checks] == [0, 1]  # before: the second minute never closed
    assert float(np.median(checks[1].p10 - checks[0].p90)) > 12


# --- the PortAudio callback ---------------------------------------------------------------------


def test_a_block_the_card_replays_is_dropped_as_a_gap_not_heard_twice() -> None:
    got: list[tuple[int, np.ndarray]] = []
    gaps = GapLog()
    cb = CaptureCallback(lambda f, i: got.append((i, f.copy())), Clock(0, 16000), gaps)
    rng = np.random.default_rng(1)
    b1, b2 = (rng.standard_normal((160, 2)).astype(np.float32) for _ in range(2))
    ok = SimpleNamespace(input_overflow=False)
    info = SimpleNamespace(inputBufferAdcTime=0.0)
    for block in (b1, b1, b2, np.zeros((160, 2), np.float32), np.zeros((160, 2), np.float32)):
        cb(block, 160, info, ok)
    # before: the replayed buffer went on as 10 ms more of the pipe (5 blocks delivered)
    assert [i for i, _ in got] == [0, 320, 480, 640]  # zeros are a sensor fault, judged later
    assert cb.repeated_blocks == 1
    assert gaps.snapshot().dropped_by_cause == {"repeated_block": 160}


def test_the_gateway_clock_set_after_boot_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Pi without RTC starts capturing before NTP sets its clock, here 3 h forward. Before: every
    # frame until the next reopen was stamped 3 h off (nights judged in the wrong hours).
    wall0, step = 1_760_000_000 * NS, 3 * 3600 * NS
    now = [wall0]
    monkeypatch.setattr(device_module, "now_ns", lambda: now[0])
    clock = Clock(0, 8000)
    cb = CaptureCallback(lambda f, i: None, clock, GapLog())
    data = np.zeros((800, 1), dtype=np.float32)
    ok = SimpleNamespace(input_overflow=False)
    info = SimpleNamespace(inputBufferAdcTime=0.0)
    stamps = []
    for k in range(300):  # 30 s in 0.1 s blocks; NTP steps the clock at 5 s
        data[0, 0] = k * 1e-5
        now[0] = wall0 + (step if k >= 50 else 0) + (k + 1) * NS // 10 + 5_000_000
        cb(data, 800, info, ok)
        stamps.append(clock.ts(k * 800))
    assert abs(clock.ts(300 * 800) - (wall0 + step + 30 * NS)) < 50_000_000
    assert cb.steering.steps == 1
    assert all(b > a for a, b in itertools.pairwise(stamps))  # a step forward, never back


def test_a_card_whose_clock_is_off_keeps_its_timestamps_on_the_gateway_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A "48 kHz" card whose crystal really runs at 47,990 Hz, for a day, callbacks arriving 2 to 30
    # ms after their block (scheduling). Before: frames counted at 48 kHz, stamped 18 s early
    # after a day (0.02 %).
    nominal, true_rate, block = 48_000, 47_990.0, 48_000
    wall0 = 1_760_000_000 * NS
    now = [wall0]
    monkeypatch.setattr(device_module, "now_ns", lambda: now[0])
    clock = Clock(0, nominal)
    cb = CaptureCallback(lambda f, i: None, clock, GapLog())
    data = np.zeros((block, 1), dtype=np.float32)
    data[0, 0] = 1e-3  # not a constant block
    rng = np.random.default_rng(4)
    late = rng.uniform(2e6, 30e6, 3600)
    ok = SimpleNamespace(input_overflow=False)
    info = SimpleNamespace(inputBufferAdcTime=0.0)
    errors = []
    for k in range(24 * 3600):  # 1 s blocks for a day
        data[1, 0] = k % 7 * 1e-4  # never the same block twice
        end_of_block = wall0 + round((k + 1) * block / true_rate * NS)
        now[0] = end_of_block + int(late[k % late.size])
        cb(data, block, info, ok)
        if k % 3600 == 3599:  # each hour: the next block's first frame, stamped vs sampled
            errors.append(
                (clock.ts((k + 1) * block) - (wall0 + round((k + 1) * block / true_rate * NS))) / 1e6
            )
    assert max(abs(e) for e in errors[1:]) < 50, errors  # ms, after the first hour
    assert abs(errors[-1]) < 40
    assert NS / cb.steering.base == pytest.approx(true_rate, abs=0.5)  # what status shows


# --- a USB interface unplugged and plugged back -------------------------------------------------


class FakeCard:
    def __init__(self, name: str, rate: int = 8000) -> None:
        self.name = name
        self.rate = rate


class PortAudioError(Exception):
    pass


class FakePortAudio:
    """PortAudio as sounddevice exposes it, with its one property that matters here: the list of
    cards is read at initialisation, not when a stream is opened. A card unplugged stays in the
    list (opening it fails); a card plugged in appears only after `_terminate()` + `_initialize()`."""

    PortAudioError = PortAudioError

    def __init__(self, cards: list[FakeCard]) -> None:
        self.plugged = list(cards)  # what the kernel has now
        self.listed = list(cards)  # what PortAudio read at initialisation
        self.streams: list[FakeInputStream] = []
        self.restarts_with_streams_open = 0

    def _initialize(self) -> None:
        self.listed = list(self.plugged)

    def _terminate(self) -> None:
        if any(s.running for s in self.streams):
            self.restarts_with_streams_open += 1

    def _find(self, device: Any) -> FakeCard:
        if isinstance(device, int):
            if not 0 <= device < len(self.listed):
                raise PortAudioError(f"Error querying device {device}")
            card = self.listed[device]
        else:
            matches = [c for c in self.listed if str(device).lower() in c.name.lower()]
            if not matches:
                raise ValueError(f"No input device matching {device!r}")
            card = matches[0]
        if card not in self.plugged:
            raise PortAudioError("Error opening InputStream: Device unavailable [PaErrorCode -9985]")
        return card

    def check_input_settings(self, device: Any, channels: int, dtype: str, samplerate: int) -> None:
        if self._find(device).rate != samplerate:
            raise PortAudioError("Invalid sample rate [PaErrorCode -9997]")

    def query_devices(self, device: Any, kind: str) -> dict[str, Any]:
        return {"default_samplerate": float(self._find(device).rate)}

    def InputStream(self, **kw: Any) -> FakeInputStream:  # noqa: N802 - sounddevice's name
        stream = FakeInputStream(self, self._find(kw["device"]), kw)
        self.streams.append(stream)
        return stream


class FakeInputStream:
    """Calls the callback from its own thread in real time with noise until closed or its card is
    unplugged; then, as PortAudio does for a stream that died, the finished callback."""

    def __init__(self, pa: FakePortAudio, card: FakeCard, kw: dict[str, Any]) -> None:
        self.pa, self.card, self.kw = pa, card, kw
        self.device = pa.listed.index(card)
        self.running = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.running = True
        self._thread.start()

    def _run(self) -> None:
        n, rate, ch = self.kw["blocksize"], self.kw["samplerate"], self.kw["channels"]
        rng = np.random.default_rng(len(self.pa.streams))
        ok = SimpleNamespace(input_overflow=False)
        info = SimpleNamespace(inputBufferAdcTime=0.0)
        while not self._stop.wait(n / rate):
            if self.card not in self.pa.plugged:
                break
            self.kw["callback"](0.05 * rng.standard_normal((n, ch)).astype(np.float32), n, info, ok)
        self.running = False
        self.kw["finished_callback"]()

    def abort(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def close(self) -> None:
        self.running = False


async def test_a_usb_interface_unplugged_and_plugged_back_is_seen_and_recovers_without_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    usb = FakeCard("Scarlett Solo USB: Audio (hw:1,0)")
    pa = FakePortAudio([FakeCard("bcm2835 Headphones (hw:0,0)"), usb])
    monkeypatch.setattr(device_module, "_sounddevice", lambda: pa)
    monkeypatch.setattr(device_module, "PORTAUDIO", device_module._PortAudioUse())
    config = AudioConfig(name="hyd", kind="audio", source="device", device="Scarlett", sample_rate=8000,
                         channels=1, blocksize=800, level_interval_s=1, stall_timeout_s=2)  # fmt: skip
    driver = AudioDriver(config)
    windows: list[AudioWindow] = []
    driver.add_window_listener(windows.append)
    try:
        async with supervised(config, driver) as run:
            readings, events, runner = run.readings, run.events, run.runner
            await eventually(lambda: any(r.tag == "A.rms_dbfs" and r.quality == "good" for r in readings), 10)
            pa.plugged.remove(usb)  # unplugged
            unplugged = time.monotonic()
            await eventually(lambda: any(e.kind == "driver_down" for e in events), 10)
            noticed = time.monotonic() - unplugged
            assert noticed < 1.5  # PortAudio said the stream died: before the 2 s stall timeout
            assert runner.stats.state == "down"
            down = next(e for e in events if e.kind == "driver_down")
            assert "stopped delivering audio" in str(down.detail)
            n = len(readings)
            await eventually(
                lambda: any(r.quality == "bad" and r.tag == "A.rms_dbfs" for r in readings[n:]), 10
            )

            # Plugged back into another port: the kernel gives it another card number, PortAudio
            # another index. Before: PortAudio's list from start-up still held the old entry, every
            # reopen failed with "Device unavailable", and only an agent restart brought it back.
            pa.plugged.insert(0, FakeCard("Scarlett Solo USB: Audio (hw:2,0)"))
            await eventually(lambda: any(e.kind == "driver_up" for e in events), 10)
            n = len(readings)
            await eventually(
                lambda: any(r.tag == "A.rms_dbfs" and r.quality == "good" for r in readings[n:]), 10
            )
            assert runner.stats.crashes == 0
            assert pa.streams[-1].device == 0
            assert pa.restarts_with_streams_open == 0
            assert all(w.faults == (None,) for w in windows)  # no zeros stood in for the gap
    finally:
        await driver.aclose()


def test_another_card_capturing_is_never_closed_to_reread_the_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    pa = FakePortAudio([FakeCard("USB A"), FakeCard("USB B")])
    monkeypatch.setattr(device_module, "_sounddevice", lambda: pa)
    monkeypatch.setattr(device_module, "PORTAUDIO", device_module._PortAudioUse())
    device_module.PORTAUDIO.opened_before = True
    backend = device_module.SoundDeviceBackend()
    settings = device_module.CaptureSettings("USB A", 1, "float32", 8000, 800, "high")
    backend.check(settings)
    cb = CaptureCallback(lambda f, i: None, Clock(0, 8000), GapLog())
    stream = backend.start(settings, cb)
    backend.check(dataclasses.replace(settings, device="USB B"))  # the second card, while A captures
    assert pa.restarts_with_streams_open == 0
    stream.close()
    assert pa.streams[0].running is False
