"""The machine_sound processor on the audio driver's real capture path: a pump's sound (firmware-sim)
played from a WAV file into the driver, clips assembled from its windows, the machine learning its
normal sound, then a bearing fault raising `machine_sound_anomaly` with its evidence."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.io import wavfile

from tests.support.configs import config_file
from tests.support.testing import damage_sqlite_under_its_owner, eventually
from water_edge.agent.assembly import build_drivers, build_processors
from water_edge.agent.config.load import load_config
from water_edge.core.errors import ConfigError
from water_edge.core.instants import iso
from water_edge.core.reading import Event, Reading
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.driver import AudioDriver
from water_edge.drivers.audio.window import AudioWindow
from water_edge.models.machine_sound.config import MachineSoundSection
from water_edge.models.machine_sound.processor import MachineSoundProcessor
from water_edge.sim.machine_sound import MachineScene, MachineSoundSynth, write_wav

pytestmark = pytest.mark.slow

RATE = 16_000
SILENT_S = 20  # the machine is off: 2 clips below running_min_dbfs
FAULT_AT_S = 270  # into the file: 25 normal clips after the silence, then a failing bearing
TOTAL_S = 330
OFF_FROM_S, OFF_TO_S = 240, 300  # the station test: the pump stops, the microphone hears its neighbour


def _pump(seed: int, scene_seed: int | None = None) -> MachineSoundSynth:
    """A pump at 6 dB over its room: the machine of `scene_seed` (default `seed`), noise of `seed`."""
    scene = MachineScene.random(np.random.default_rng(seed if scene_seed is None else scene_seed), snr_db=6.0)
    return MachineSoundSynth(scene, seed=seed)


def _shared(sound: np.ndarray) -> np.ndarray:
    sound.setflags(write=False)  # tests build their files from it, never change it
    return sound


# The pumps' sounds are rendered once for the module (rendering took a third of the tests' CPU)
# and each test takes the stretches it rendered itself before: a synth renders block by block
# (1 s), so its first 120 s and then 130 s are its first 250 s, sample for sample.
@pytest.fixture(scope="module")
def pump3() -> np.ndarray:
    """500 s of pump 3 (scene and noise seed 3): the lost-microphone tests' machine (their first
    290 s), and the one whose history is damaged while it runs."""
    return _shared(_pump(3).render_seconds(500))


@pytest.fixture(scope="module")
def pump4() -> np.ndarray:
    """240 s of pump 4: the corrupted-history test's machine, and the station test's neighbour."""
    return _shared(_pump(4).render_seconds(240))


@pytest.fixture(scope="module")
def pump9() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pump 9: its first 250 s, then 60 s more with a failing bearing from there, and the 50 s it
    sounds without the fault. The fault is nothing (no sound, no random draw) before its onset, so
    the first 250 s are those of the failing pump too; the healthy one goes on from a copy."""
    synth = _pump(9)
    head = synth.render_seconds(FAULT_AT_S - SILENT_S)
    failing = copy.deepcopy(synth)
    failing.inject("bearing", severity=0.5, at_s=FAULT_AT_S - SILENT_S, ramp_s=5.0)
    return (
        _shared(head),
        _shared(failing.render_seconds(TOTAL_S - FAULT_AT_S)),
        _shared(synth.render_seconds(OFF_TO_S - head.size // RATE)),
    )


@pytest.fixture(scope="module")
def recording(
    tmp_path_factory: pytest.TempPathFactory, pump9: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> Path:
    head, failing, _ = pump9  # the bearing starts failing FAULT_AT_S into the file
    # Off, the microphone still hears the room (-80 dBFS): quiet, not digital silence.
    room = 1e-4 * np.random.default_rng(1).standard_normal(SILENT_S * RATE).astype(np.float32)
    sound = np.concatenate([room, head, failing])
    path = tmp_path_factory.mktemp("mic") / "pump.wav"
    write_wav(path, sound, RATE)
    return path


class NoReadings:
    """The processor takes no readings feed (its `streams` is empty)."""

    async def get(self) -> tuple[str, list[Reading]]:
        await asyncio.Event().wait()
        raise AssertionError

    def __aiter__(self) -> AsyncIterator[tuple[str, list[Reading]]]:
        return self

    async def __anext__(self) -> tuple[str, list[Reading]]:
        return await self.get()


# The files play at 160x: a clip each 1/16 s, where a microphone gives one each 10 s. The tests
# count clips, so every clip is queued: a loaded machine (the suite on two cores) delays them, never
# drops them (what a processor that falls behind does, by design). The driver's buffer holds 600 s,
# more than any file here: however long a busy machine leaves it undrained, no frame is lost (its
# default 10 s filled in a quarter of a second at 40x). Playing a file costs CPU for the time it
# plays (each block handed from the source's thread to the event loop) more than for its sound:
# at 160x the tests took half the CPU they took at 40x.
EVERY_CLIP = 100
FAST = 160
BUFFER_S = 600.0


def _driver(path: Path, speed: float = FAST) -> AudioDriver:
    return AudioDriver(
        AudioConfig(
            name="mic", kind="audio", source="file", path=path, playback_speed=speed,
            window_s=1.0, hop_s=0.5, channel_names=["mic"], buffer_s=BUFFER_S,
        )
    )  # fmt: skip


def _quick_calibrating(
    tmp_path: Path, sound: np.ndarray, name: str
) -> tuple[AudioDriver, MachineSoundProcessor]:
    """`sound` as a 16 kHz WAV (float when it holds NaN or infinity) played to a machine that
    calibrates on its first 20 clips heard."""
    path = tmp_path / name
    if np.isfinite(sound).all():
        write_wav(path, sound, RATE)
    else:
        wavfile.write(path, RATE, sound)
    driver = _driver(path)
    section = MachineSoundSection.model_validate(
        {"name": "P2-sound", "device": "mic", "calibration": {"auto_hours": 0.001, "min_clips": 20}}
    )
    return driver, MachineSoundProcessor(section, driver, tmp_path, max_queued=EVERY_CLIP)


@contextlib.asynccontextmanager
async def running(
    processor: MachineSoundProcessor, driver: AudioDriver, source: Any = None
) -> AsyncIterator[list[Event]]:
    """The processor on the driver's playback while the block runs; yields the events it emits."""
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def capture() -> None:
        async for _ in driver.stream():
            pass

    # The processor listens before the file starts to play, so its clips start at the file's time
    # zero: at 40 times real time the driver's 10 s buffer fills in a quarter of a second, and a
    # start-up slowed by a busy machine would otherwise lose the first windows and shift every clip.
    listeners = driver.health().window_listeners
    tasks = [asyncio.create_task(processor.run(source or NoReadings(), emit))]
    try:
        await eventually(lambda: driver.health().window_listeners > listeners, what="the processor listening")
        await driver.open()
        tasks.append(asyncio.create_task(capture()))
        yield events
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await driver.aclose()


def _listening_to(
    recording: Path, tmp_path: Path, speed: float = FAST
) -> tuple[AudioDriver, MachineSoundProcessor]:
    """The recording's machine (off below -70 dBFS), calibrating on its first 20 clips heard."""
    driver = _driver(recording, speed)
    section = MachineSoundSection.model_validate(
        {
            "name": "P1-sound",
            "device": "mic",
            "running_min_dbfs": -70,
            "calibration": {"auto_hours": 0.001, "min_clips": 20},
        }
    )
    return driver, MachineSoundProcessor(section, driver, tmp_path, max_queued=EVERY_CLIP)


async def test_learns_the_normal_sound_then_names_a_bearing_fault(recording: Path, tmp_path: Path) -> None:
    # At 40x: the test looks at the machine armed, 7 clips before it alarms (1.75 s at 40x).
    driver, processor = _listening_to(recording, tmp_path, speed=40)
    assert processor.streams == frozenset()
    starts: list[int] = []
    driver.add_window_listener(lambda w: starts.append(w.start_ts_ns))  # the file's time zero
    async with running(processor, driver) as events:
        await eventually(lambda: processor.health().state == "armed", within_s=30, what="calibration")
        health = processor.health()
        assert health.calibration is not None
        assert health.calibration["version"] == 1
        assert health.calibration["clips"] == 20
        assert health.clips_stopped == 2  # the quiet start was not learnt
        await eventually(lambda: bool(events), within_s=30, what="an anomaly event")

    event = events[0]
    assert event.kind == "machine_sound_anomaly"
    assert event.source == "P1-sound"
    t0 = starts[0]
    assert event.ts_ns - t0 >= (FAULT_AT_S - 10) * 10**9, "alarm before the fault"
    detail = event.detail
    groups = {g["group"] for g in detail["groups"]}
    assert "impulsiveness" in groups or "high_band" in groups, detail
    assert "impulsive" in detail["explanation"] or "above 2 kHz" in detail["explanation"]
    assert detail["calibration_version"] == 1
    assert detail["threshold"] == 1.0
    assert len(detail["trend"]["scores"]) >= 3
    assert detail["trend"]["scores"][-1] > 1.0
    since = np.datetime64(detail["since"].replace("+00:00", ""))
    assert since >= np.datetime64(t0, "ns") + np.timedelta64(FAULT_AT_S - 10, "s")
    health = processor.health()
    assert health.state == "alarm"
    assert health.events == 1
    assert health.scored >= 4
    assert "alarm" in health.status_lines()[0]
    assert (tmp_path / "machine_sound" / "P1-sound" / "history.sqlite").exists()


async def test_an_unplugged_microphone_is_reported_not_learnt_and_not_an_anomaly(
    tmp_path: Path, pump3: np.ndarray
) -> None:
    # Normal sound, then the input sends digital zeros for 30 s (a cable pulled), then sound again:
    # a silent microphone is no change in the machine, and must not be learnt as its normal.
    sound = np.concatenate(
        [pump3[: 120 * RATE], np.zeros(30 * RATE, np.float32), pump3[120 * RATE : 250 * RATE]]
    )
    driver, processor = _quick_calibrating(tmp_path, sound, "unplugged.wav")
    async with running(processor, driver) as events:
        await eventually(lambda: len(events) >= 2, within_s=30, what="signal lost and restored")
        await eventually(lambda: processor.health().state == "armed", within_s=30, what="calibration")
    assert [e.kind for e in events] == ["microphone_signal_lost", "microphone_signal_restored"]
    assert events[0].severity == "warning"
    health = processor.health()
    assert health.clips_silent == 3
    assert health.calibration is not None
    assert health.calibration["clips"] == 20  # 12 + 8 heard clips; the 3 silent ones left out
    assert health.last_error is None


async def test_a_restart_neither_repeats_a_lost_microphone_nor_forgets_to_say_it_is_restored(
    tmp_path: Path, pump3: np.ndarray
) -> None:
    # Before, the lost state lived in memory only: each restart with the microphone still unplugged
    # sent a second `microphone_signal_lost`, and a restart after the repair never sent
    # `microphone_signal_restored`, leaving the centre's "not heard" open.
    # Longer than the clips waited for: a busy machine may shift the clips off the file's 10 s marks.
    silence = np.zeros(60 * RATE, np.float32)
    driver, processor = _quick_calibrating(tmp_path, silence, "unplugged.wav")
    async with running(processor, driver) as events:
        await eventually(lambda: len(events) >= 1, within_s=30, what="signal lost")
        # recorded once the event is out (a stop in between would repeat it): the next clip is after
        await eventually(lambda: processor.health().clips_silent >= 2, within_s=30, what="2 silent clips")
    assert [e.kind for e in events] == ["microphone_signal_lost"]
    lost_at = events[0].ts_ns

    driver, processor = _quick_calibrating(tmp_path, silence, "still-unplugged.wav")  # a restart
    async with running(processor, driver) as events:
        await eventually(lambda: processor.health().clips_silent >= 3, within_s=30, what="3 silent clips")
    assert events == []
    assert "last error: microphone not heard (digital silence)" in "\n".join(
        processor.health().status_lines()
    )

    driver, processor = _quick_calibrating(tmp_path, pump3[: 60 * RATE], "repaired.wav")  # repaired
    async with running(processor, driver) as events:
        await eventually(lambda: len(events) >= 1, within_s=30, what="signal restored")
        await eventually(lambda: _learnt(processor) >= 3, within_s=30, what="3 clips learnt")
    assert [e.kind for e in events] == ["microphone_signal_restored"]
    assert events[0].detail["since"] == iso(lost_at)
    assert processor.health().last_error is None

    learnt = _learnt(processor)  # kept in the history: the next run goes on counting from them
    driver, processor = _quick_calibrating(tmp_path, pump3[: 60 * RATE], "heard.wav")
    async with running(processor, driver) as events:  # restored once, not again
        await eventually(lambda: _learnt(processor) >= learnt + 3, within_s=30, what="3 more clips learnt")
    assert events == []


def _learnt(processor: MachineSoundProcessor) -> int:
    """The clips a learning machine has taken in (of its 20), kept across restarts."""
    return round(20 * (processor.health().learning_progress or 0.0))


async def test_a_converter_stuck_at_one_code_is_a_lost_microphone_not_an_anomaly(
    tmp_path: Path, pump3: np.ndarray
) -> None:
    # An input that reads one code whatever happens (an unplugged input on a converter with an
    # offset: -1 LSB of 16-bit, -90 dBFS of DC) is as silent as zeros. Before, only the RMS was
    # tested, DC included: the clips were learnt and scored, and the armed machine raised a
    # `machine_sound_anomaly` alarm (score 350) for a dead microphone.
    sound = np.concatenate(
        [pump3[: 220 * RATE], np.full(30 * RATE, -1 / 32767, np.float32), pump3[220 * RATE : 290 * RATE]]
    )
    driver, processor = _quick_calibrating(tmp_path, sound, "stuck.wav")
    async with running(processor, driver) as events:
        await eventually(lambda: processor.health().clips >= 32, within_s=30, what="the whole file")
        # judged in a worker behind the clips taken: on a loaded machine the file ends first
        await eventually(lambda: len(events) >= 2, within_s=60, what="signal lost and restored")
    assert [e.kind for e in events] == ["microphone_signal_lost", "microphone_signal_restored"]
    health = processor.health()
    # 30 s stuck: three clips when they fall on the file's 10 s marks; two whole ones (and a part
    # of another) when a machine busy with other work made the driver's buffer shift them.
    assert health.clips_silent in (2, 3)
    assert health.state == "armed"


async def test_a_microphone_sending_nan_or_infinity_is_reported_as_lost_and_never_stops_the_machine(
    tmp_path: Path, pump3: np.ndarray
) -> None:
    # A float source's garbage: a few infinite samples in the machine's sound, then 30 s of NaN
    # only. Before, the first infinity crashed the processor (np.histogram of the clip), again
    # after each restart, and a NaN clip was skipped uncounted with no event.
    sound = np.concatenate(
        [pump3[: 120 * RATE], np.full(30 * RATE, np.nan, np.float32), pump3[120 * RATE : 250 * RATE]]
    )
    sound[np.random.default_rng(4).integers(0, 120 * RATE, 20)] = np.inf
    driver, processor = _quick_calibrating(tmp_path, sound, "garbage.wav")
    async with running(processor, driver) as events:
        await eventually(lambda: len(events) >= 2, within_s=30, what="signal lost and restored")
        await eventually(lambda: processor.health().state == "armed", within_s=30, what="calibration")
    assert [e.kind for e in events] == ["microphone_signal_lost", "microphone_signal_restored"]
    health = processor.health()
    assert health.clips_silent == 3
    assert health.calibration is not None
    assert health.calibration["clips"] == 20
    assert driver.health().nonfinite_frames == 20 + 30 * RATE


async def test_a_history_the_card_corrupted_is_kept_aside_and_the_machine_learns_again(
    tmp_path: Path, pump4: np.ndarray
) -> None:
    history = tmp_path / "machine_sound" / "P3-sound" / "history.sqlite"
    history.parent.mkdir(parents=True)
    history.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)  # a torn header and pages
    path = tmp_path / "pump.wav"
    write_wav(path, pump4, RATE)
    driver = _driver(path)
    section = MachineSoundSection.model_validate(
        {"name": "P3-sound", "device": "mic", "calibration": {"auto_hours": 0.001, "min_clips": 20}}
    )
    processor = MachineSoundProcessor(section, driver, tmp_path, max_queued=EVERY_CLIP)
    async with running(processor, driver) as events:
        await eventually(lambda: processor.health().state == "armed", within_s=60, what="calibration")
    assert [e.kind for e in events][:1] == ["history_quarantined"]
    assert "machine_sound_anomaly" not in [e.kind for e in events]
    kept = Path(events[0].detail["moved_to"])
    assert kept.name.startswith("history.sqlite.quarantined-")
    assert kept.read_bytes().startswith(b"SQLite format 3\x00")
    assert events[0].detail["model"] == "machine_sound"
    health = processor.health()
    assert health.calibration is not None
    assert health.calibration["clips"] >= 20  # learnt from the clips heard since, in a new history
    assert health.last_error is not None
    assert str(kept) in health.last_error


async def test_a_history_damaged_while_running_is_kept_aside_and_the_machine_stays_watched(
    tmp_path: Path, pump3: np.ndarray
) -> None:
    # 50 clips: 20 learnt, 10 scored before the damage (11 when one more came in as it was done),
    # at most 6 until the next write finds it, 10 scored after: 9 to spare (every clip is queued).
    path = tmp_path / "pump.wav"
    write_wav(path, pump3, RATE)
    driver = _driver(path)
    section = MachineSoundSection.model_validate(
        {"name": "P4-sound", "device": "mic", "calibration": {"auto_hours": 0.001, "min_clips": 20}}
    )
    processor = MachineSoundProcessor(section, driver, tmp_path, max_queued=EVERY_CLIP)
    history = tmp_path / "machine_sound" / "P4-sound" / "history.sqlite"
    async with running(processor, driver) as events:
        await eventually(lambda: processor.health().scored >= 10, within_s=60, what="scoring")
        damage_sqlite_under_its_owner(history, seed=5)
        scored_at_damage = processor.health().scored
        await eventually(lambda: bool(events), within_s=60, what="the damage reported")
        await eventually(
            lambda: processor.health().scored >= scored_at_damage + 10, within_s=60, what="scoring on"
        )
    assert [e.kind for e in events] == ["history_quarantined"]
    assert events[0].detail["found"] == "while running"
    kept = Path(events[0].detail["moved_to"])
    assert kept.name.startswith("history.sqlite.quarantined-")
    health = processor.health()
    assert health.state == "armed"
    assert health.last_error is not None
    assert "damaged while running" in health.last_error


async def test_an_anomaly_raised_when_the_agent_stopped_is_cleared_after_the_restart(
    recording: Path, tmp_path: Path
) -> None:
    # Before, a restart forgot the raised alarm: the centre never got its clear.
    section = MachineSoundSection.model_validate(
        {"name": "P1-sound", "device": "mic", "running_min_dbfs": -70,
         "calibration": {"auto_hours": 0.001, "min_clips": 20}}
    )  # fmt: skip
    driver = _driver(recording)
    first = MachineSoundProcessor(section, driver, tmp_path, max_queued=EVERY_CLIP)
    async with running(first, driver) as events:
        await eventually(lambda: bool(events), within_s=60, what="the anomaly")
    assert [e.kind for e in events] == ["machine_sound_anomaly"]

    # The bearing is replaced while the agent is stopped: the same pump, sounding normal again.
    repaired = tmp_path / "repaired.wav"
    write_wav(repaired, _pump(19, scene_seed=9).render_seconds(120), RATE)
    driver = _driver(repaired)
    again = MachineSoundProcessor(section, driver, tmp_path, max_queued=EVERY_CLIP)
    async with running(again, driver) as after:
        await eventually(lambda: bool(after), within_s=60, what="the clear")
    assert [e.kind for e in after] == ["machine_sound_anomaly_cleared"]
    assert after[0].detail["calibration_version"] == events[0].detail["calibration_version"] == 1
    record = tmp_path / "machine_sound" / "P1-sound" / "alarm.json"
    assert record.read_text() == "{}"


class RunSignalFeed:
    """The PLC's run bit of the pump, one reading a second of the file's time (`running(s)` says
    what it reads `s` seconds in), delivered as a batch once the file's time zero is known."""

    def __init__(self, driver: AudioDriver, seconds: int, running: Any) -> None:
        self._zero = asyncio.get_running_loop().create_future()
        self._sent = False
        self._seconds, self._running = seconds, running

        def first_window(w: AudioWindow) -> None:
            if not self._zero.done():
                self._zero.set_result(w.start_ts_ns)

        driver.add_window_listener(first_window)

    async def get(self) -> tuple[str, list[Reading]]:
        if self._sent:
            await asyncio.Event().wait()
        t0 = await self._zero
        self._sent = True
        return "plc", [
            Reading("plc", "pump1.running", t0 + s * 10**9, 1 if self._running(s) else 0)
            for s in range(self._seconds)
        ]

    def __aiter__(self) -> AsyncIterator[tuple[str, list[Reading]]]:
        return self

    async def __anext__(self) -> tuple[str, list[Reading]]:
        return await self.get()


STATION_S = OFF_TO_S + 60


def _station(tmp_path: Path, pump: tuple[np.ndarray, np.ndarray, np.ndarray], neighbour: np.ndarray) -> Path:
    """Pump 9 running, then stopped from OFF_FROM_S to OFF_TO_S (the microphone hears pump 4, as
    loud, next to it), then running again (its sound going on from where it stopped)."""
    head, _, healthy = pump
    running_pump = np.concatenate([head, healthy])  # its first OFF_TO_S seconds, no fault
    sound = np.concatenate(
        [
            running_pump[: OFF_FROM_S * RATE],
            neighbour[: (OFF_TO_S - OFF_FROM_S) * RATE],
            running_pump[OFF_FROM_S * RATE :],
        ]
    )
    assert len(sound) == STATION_S * RATE
    path = tmp_path / "station.wav"
    write_wav(path, sound, RATE)
    return path


async def _listened_with(
    tmp_path: Path, station: Path, running_tag: str | None
) -> tuple[list[Event], MachineSoundProcessor]:
    """The station's file heard with `running_tag`: to its end and every clip judged; without it,
    until the first event (all that is asserted of that run)."""
    driver = _driver(station)
    section = MachineSoundSection.model_validate(
        {
            "name": "P1-sound",
            "device": "mic",
            "calibration": {"auto_hours": 0.001, "min_clips": 20},
            **({"running_tag": running_tag} if running_tag else {}),
        }
    )
    clips = STATION_S // 10
    processor = MachineSoundProcessor(
        section,
        driver,
        tmp_path / str(running_tag is not None),
        max_queued=EVERY_CLIP,
        run_signal_streams=frozenset({"plc"}),
    )
    feed = RunSignalFeed(driver, STATION_S, lambda s: not OFF_FROM_S <= s < OFF_TO_S)
    async with running(processor, driver, feed if running_tag else None) as events:
        if running_tag is None:  # what the run signal prevents: the stop's clips raise an anomaly
            await eventually(lambda: bool(events), within_s=60, what="an event")
            return events, processor
        await eventually(lambda: processor.clips >= clips, within_s=60, what="every clip")
        # scored in a worker behind the clips: a loaded machine (the suite on two cores) lags
        await eventually(lambda: processor.health().scored + processor.clips_stopped >= clips - 20, 90)
    return events, processor


async def test_a_calibration_the_card_cannot_store_is_an_event_and_the_machine_learns_again(
    recording: Path, tmp_path: Path
) -> None:
    # Before, a failed automatic calibration was in the gateway's log and status only: the centre
    # saw a machine that never alarmed, not one nobody listened to. A directory stands where the
    # calibration goes (the OSError path of a full or read-only card).
    (tmp_path / "machine_sound" / "P1-sound" / "calibration.json").mkdir(parents=True)
    driver, processor = _listening_to(recording, tmp_path)
    async with running(processor, driver) as events:
        await eventually(lambda: bool(events), within_s=60, what="the failure event")
        health = processor.health()
    (event,) = events
    assert (event.kind, event.source, event.severity) == (
        "machine_sound_calibration_failed",
        "P1-sound",
        "warning",
    )
    assert "calibration.json" in event.detail["reason"]
    assert event.detail["clips"] == 20 == event.detail["retry_after_clips"]
    assert event.detail["failures"] == 1
    assert event.detail["from"] < event.detail["to"]
    assert health.state == "learning"
    assert health.calibrations_failed == 1
    assert "1 automatic calibration(s) failed, learning again" in health.status_lines()


async def test_a_calibration_that_succeeds_after_a_failed_one_leaves_no_stale_error_in_status(
    tmp_path: Path, pump3: np.ndarray
) -> None:
    # Before, `status` kept the failed calibration's error beside the calibration in service
    # ("armed ... (calibration v1)" over "last error: ... calibration.json ...").
    blocked = tmp_path / "machine_sound" / "P2-sound" / "calibration.json"
    blocked.mkdir(parents=True)  # the first calibration cannot be stored
    driver, processor = _quick_calibrating(tmp_path, pump3[: 500 * RATE], "pump.wav")
    async with running(processor, driver) as events:
        await eventually(lambda: bool(events), within_s=60, what="the failure event")
        assert processor.health().last_error is not None
        blocked.rmdir()  # the card has room again: the next stretch's calibration is stored
        await eventually(lambda: processor.health().state == "armed", within_s=60, what="calibration")
        health = processor.health()
    assert [e.kind for e in events][:1] == ["machine_sound_calibration_failed"]
    assert health.calibration is not None
    assert health.last_error is None
    assert not [line for line in health.status_lines() if line.startswith("last error")]


async def test_the_plcs_run_signal_keeps_a_stopped_pumps_station_out_of_its_sound(
    tmp_path: Path, pump9: tuple[np.ndarray, np.ndarray, np.ndarray], pump4: np.ndarray
) -> None:
    """When the pump stops, its microphone still hears the station (here a neighbouring pump, as
    loud): scored against the running pump, that is a change of sound. With the PLC's run bit
    (`running_tag`), those clips are neither learnt nor scored."""
    station = _station(tmp_path, pump9, pump4)
    plain, _ = await _listened_with(tmp_path, station, None)
    assert [e.kind for e in plain][:1] == ["machine_sound_anomaly"]  # what the run signal prevents
    events, processor = await _listened_with(tmp_path, station, "plc/pump1.running")
    assert processor.streams == frozenset({"plc"})
    assert [e.kind for e in events] == []
    health = processor.health()
    assert health.state == "armed"
    assert health.clips_dropped == 0
    off_clips = (OFF_TO_S - OFF_FROM_S) // 10
    assert off_clips <= health.clips_stopped <= off_clips + 1  # and the clip that ends as it stops
    assert health.clips_no_run_signal == 0
    assert health.scored >= 5
    assert max(health.recent_scores[-3:]) < 1.0  # the pump running again after its stop: normal
    assert any("while the machine was off" in line for line in health.status_lines())


RUN_SIGNAL_TABLES = """
[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "127.0.0.1"
stream = "station-a"

  [[devices.tags]]
  name = "pump1.running"
  table = "coil"
  type = "bool"
  address = 0

[[devices]]
name = "mic"
kind = "audio"
source = "file"
path = "{wav}"

[[models.machine_sound]]
name = "P1-sound"
device = "mic"
running_tag = "{tag}"
"""


def _run_signal_config(tmp_path: Path, tag: str) -> Path:
    wav = tmp_path / "mic.wav"
    write_wav(wav, np.zeros(RATE, np.float32), RATE)
    return config_file(tmp_path, RUN_SIGNAL_TABLES.format(wav=wav, tag=tag))


def test_the_run_signal_is_read_from_its_devices_stream_and_a_misspelt_one_is_named(tmp_path: Path) -> None:
    config = load_config(_run_signal_config(tmp_path, "plc/pump1.running"))
    drivers = build_drivers(config)
    (processor,) = build_processors(config, drivers).processors
    assert isinstance(processor, MachineSoundProcessor)
    assert processor.streams == frozenset({"station-a"})  # the device's stream, not its name
    with pytest.raises(ConfigError) as info:
        load_config(_run_signal_config(tmp_path, "plc/pump1.runing"))
    (problem,) = info.value.problems
    assert "models.machine_sound[0].running_tag" in problem
    assert "did you mean 'pump1.running'" in problem
