"""The models' own state on a card gone read-only (ext4 `errors=remount-ro`) under the running agent,
and at a start on one: the second half of test_readonly_storage.py (the outbox), with its card.

A pump's and a machine's feature history (SQLite) is written all the time; the model must go on
scoring from memory while it cannot be, say so once (not at every write), and write it again
without a restart once the card is back (unmounted, checked and mounted again: a connection opened
before writes to a file system that is gone).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from tests.support.agent_proc import AgentProcess, start_agent
from tests.support.ext4_card import Card
from tests.support.testing import agent_config
from tests.test_flow_leak import _feed, _north_district
from tests.test_leak_field import SECTION as LEAK_SECTION
from tests.test_leak_field import _NoDriver, _run_nights
from water_edge.core.reading import Event, Reading
from water_edge.models import json_record
from water_edge.models.alarm_record import AlarmRecord
from water_edge.models.flow_leak.processor import FlowLeakProcessor
from water_edge.models.leak.processor import AudioLeakProcessor
from water_edge.models.leak.store import SensorStore
from water_edge.models.manifest import ModelError
from water_edge.models.meter.config import MeterGroupConfig
from water_edge.models.meter.processor import MeterProcessor
from water_edge.models.pump.store import FeatureHistory, StorageErrors
from water_edge.sim.machine_sound import MachineScene, MachineSoundSynth, write_wav

pytestmark = pytest.mark.slow


NS = 1_000_000_000

PLC: dict[str, Any] = {
    "name": "plc",
    "kind": "fake",
    "poll_interval_ms": 50,
    "tags": [
        {"name": "flow", "offset": 50.0, "amplitude": 5.0, "period_s": 7.0},
        {"name": "current", "offset": 20.0, "amplitude": 1.0, "period_s": 13.0},
        {"name": "speed", "offset": 1450.0, "amplitude": 5.0, "period_s": 5.0},
    ],
}
PUMP = """
[[models.pump]]
name = "pump1"
sample_interval_s = 0.05
  [models.pump.signals]
  flow = "plc/flow"
  motor_current = "plc/current"
  speed = "plc/speed"
  [models.pump.calibration]
  auto_hours = 0.0015            # 108 samples of 0.05 s
  min_samples = 64
"""


def _config(state: Path, tmp_path: Path, models: str = PUMP) -> Path:
    config = tmp_path / "agent.toml"
    # The status socket off the card: it is asked while the card is away.
    config.write_text(
        agent_config(state, status_socket=tmp_path / "status.sock", devices=[PLC], models=models)
    )
    return config


def _processor(status: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in status["processors"] if p["name"] == "pump_anomaly")


def _pump(status: dict[str, Any], name: str = "pump1") -> dict[str, Any]:
    pump: dict[str, Any] = _processor(status)["health"].get("pumps", {}).get(name, {})
    return pump


def _storage_lines(status: dict[str, Any]) -> list[str]:
    return [p for p in status["verdict"]["problems"] if p.startswith("storage read-only")]


def _history_rows_after(path: Path, ts_ns: int) -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
        (rows,) = conn.execute("SELECT COUNT(*) FROM samples WHERE ts_ns > ?", (ts_ns,)).fetchone()
    finally:
        conn.close()
    return int(rows)


def _not_stored(status: dict[str, Any]) -> bool:
    return "rows not stored" in (_pump(status).get("last_error") or "")


def test_a_pump_scores_on_from_memory_says_so_once_and_writes_its_history_again(
    card: Card, tmp_path: Path
) -> None:
    state = card.mount / "state"
    agent: AgentProcess | None = start_agent(_config(state, tmp_path))
    assert agent is not None
    try:
        armed = agent.wait_status(lambda s: _pump(s).get("state") == "armed", timeout=90)
        assert _pump(armed)["calibration"]["version"] == 1

        card.fail()
        failed = agent.wait_status(lambda s: bool(_storage_lines(s)) and _not_stored(s), timeout=30)
        scored = _pump(failed)["scored"]
        # Three more flushes of 60 samples that cannot be stored: the pump is still scored, its
        # status line says how many rows were lost and since when, the log says it once.
        later = agent.wait_status(lambda s: _not_stored(s) and _pump(s)["scored"] >= scored + 200, timeout=60)
        assert _processor(later)["crashes"] == 0
        assert agent.log().count('"pump.history_not_written"') == 1
        line = _pump(later)["last_error"]
        assert line.startswith(f"{state / 'pump' / 'pump1' / 'history.sqlite'}: ")
        assert " rows not stored since " in line
        assert any("rows not stored" in lin for lin in _processor(later)["lines"])

        card.replace()
        back_at = time.time_ns()
        agent.wait_status(lambda s: not _storage_lines(s), timeout=30)
        written = agent.wait_status(lambda s: _pump(s).get("last_error") is None, timeout=60)
        assert agent.log().count('"pump.history_written_again"') == 1
        scored = _pump(written)["scored"]
        agent.wait_status(lambda s: _pump(s)["scored"] >= scored + 120, timeout=60)  # two more flushes
        assert agent.stop() == 0
        agent = None
        # Without a restart: the history on the mended card took rows sampled after it came back.
        assert _history_rows_after(state / "pump" / "pump1" / "history.sqlite", back_at) >= 120
    finally:
        if agent is not None:
            agent.kill()


def test_a_restart_on_the_read_only_card_scores_from_what_it_can_read_and_writes_once_it_is_back(
    card: Card, tmp_path: Path
) -> None:
    """What systemd's restart (a stop, the watchdog, an update) meets once the card went read-only
    under the agent, with a second pump configured meanwhile (no directory on the card yet).
    Before: the pump processor failed at every start (`[Errno 30] Read-only file system` making
    pump2's directory), was restarted with backoff, and neither pump was watched."""
    state = card.mount / "state"
    config = _config(state, tmp_path)
    agent = start_agent(config)
    try:
        agent.wait_status(lambda s: _pump(s).get("state") == "armed", timeout=90)
        card.fail()
        agent.wait_status(lambda s: bool(_storage_lines(s)), timeout=30)
        assert agent.stop() == 0
    finally:
        agent.kill()

    _config(state, tmp_path, PUMP + PUMP.replace("pump1", "pump2", 1))
    agent = start_agent(config)
    try:
        running = agent.wait_status(
            lambda s: _pump(s).get("scored", 0) >= 100 and _pump(s, "pump2").get("samples", 0) >= 100,
            timeout=60,
        )
        assert _processor(running)["crashes"] == 0
        assert _pump(running)["calibration"]["version"] == 1  # read from the card
        assert _pump(running, "pump2")["state"] == "learning"
        agent.wait_status(_not_stored, timeout=30)
        card.replace()
        back_at = time.time_ns()
        written = agent.wait_status(lambda s: _pump(s).get("last_error") is None, timeout=60)
        scored = _pump(written)["scored"]
        agent.wait_status(lambda s: _pump(s)["scored"] >= scored + 120, timeout=60)  # two more flushes
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert "Traceback" not in agent.log()
    assert agent.log().count('"pump.history_not_written"') == 2  # once for each pump
    assert _history_rows_after(state / "pump" / "pump1" / "history.sqlite", back_at) >= 120


def _rows(first: int, n: int) -> list[tuple[int, Any]]:
    return [(t * NS, np.array([1.0, float(t)])) for t in range(first, first + n)]


def test_a_history_counts_what_it_cannot_store_and_is_opened_afresh_once_the_card_is_back(
    card: Card,
) -> None:
    """`FeatureHistory` alone (the pump's and the machine-sound model's)."""
    path = card.mount / "state" / "pump" / "p" / "history.sqlite"
    history = FeatureHistory(path, ["a", "b"], 14)
    try:
        history.append(_rows(1, 5))
        card.fail()
        for first in (6, 11):
            with pytest.raises(ModelError, match="rows not stored") as failed:
                history.append(_rows(first, 5))
        assert history.count() >= 5  # what it holds is still read
        card.replace()
        history.append(_rows(16, 5))  # before: `disk I/O error` until the agent was restarted
        assert history.count(16 * NS) == 5
        said = str(failed.value)
        assert said.endswith(": 10 rows not stored since 1970-01-01T00:00:06+00:00 (Read-only file system)")
        assert (history.not_stored, history.unstored_rows) == (10, 0)
    finally:
        history.close()
    again = FeatureHistory(path, ["a", "b"], 14)
    try:
        assert again.count(16 * NS) == 5
    finally:
        again.close()


def test_a_history_opened_on_a_read_only_card_reads_what_is_there(card: Card) -> None:
    root = card.mount / "state"
    crashed = FeatureHistory(root / "crashed" / "history.sqlite", ["a", "b"], 14)  # left open: its WAL
    crashed.append(_rows(1, 5))
    with FeatureHistory(root / "closed" / "history.sqlite", ["a", "b"], 14) as closed:
        closed.append(_rows(1, 5))
    card.fail()
    for name in ("crashed", "closed"):
        with FeatureHistory(root / name / "history.sqlite", ["a", "b"], 14) as history:
            assert history.count() == 5, name
            with pytest.raises(ModelError, match="rows not stored"):
                history.append(_rows(6, 1))
    with FeatureHistory(root / "new" / "history.sqlite", ["a", "b"], 14) as new:  # no directory yet
        assert new.count() == 0
        with pytest.raises(ModelError, match="rows not stored"):
            new.append(_rows(1, 1))
    crashed.close()


def test_a_meter_flag_raised_while_the_card_is_read_only_is_stored_once_it_is_back(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record that pairs a meter's flag across restarts. Before: it was not written while the
    card was read-only and never after, so the agent restarted on the mended card started the flag
    a second time."""
    monkeypatch.setattr(json_record, "RETRY_EVERY_S", 0.0)  # try the card after every batch
    state = card.mount / "state"
    group = MeterGroupConfig(name="block-a", device="wm")

    def tamper(on: bool, minute: int) -> tuple[str, list[Reading]]:
        return "wm", [Reading("wm", "flat1.alarm.tamper", (1_800_000_000 + minute * 60) * NS, on)]

    async def run(processor: MeterProcessor, *batches: tuple[str, list[Reading]]) -> list[Event]:
        emitted: list[Event] = []

        async def source() -> AsyncIterator[tuple[str, list[Reading]]]:
            for batch in batches:
                yield batch

        async def emit(event: Event) -> None:
            emitted.append(event)

        await processor.run(source(), emit)
        return emitted

    processor = MeterProcessor([group], state)
    card.fail()
    with structlog.testing.capture_logs() as logs:
        started = asyncio.run(run(processor, tamper(True, 0), tamper(True, 1), tamper(True, 2)))
        assert [e.detail["state"] for e in started] == ["start"]  # judged all the same
        card.replace()
        asyncio.run(run(processor, tamper(True, 3)))

    restarted = MeterProcessor([group], state)  # the agent restarted on the mended card
    assert restarted.handle(tamper(True, 5)[1][0]) == []  # not started a second time
    (cleared,) = restarted.handle(tamper(False, 6)[1][0])
    assert cleared.detail["state"] == "clear"
    said = [entry["event"] for entry in logs if entry["event"].startswith("meter.flags")]
    assert said == ["meter.flags.not_stored", "meter.flags.stored_again"]  # once, not at every try


def test_a_pump_alarm_raised_while_the_card_is_read_only_is_recorded_once_it_is_back(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AlarmRecord` (a pump's, a machine's): kept in memory, written by `retry` once the card
    takes writes, so a restart goes on with the alarm raised instead of raising it again."""
    monkeypatch.setattr(json_record, "RETRY_EVERY_S", 0.0)
    directory = card.mount / "state" / "pump" / "pump1"
    record = AlarmRecord(directory)
    assert record.raised(None) is None
    card.fail()
    why = record.raised(1_800_000_000 * NS)
    assert why is not None
    assert why.startswith("Read-only file system")
    assert record.retry() == why  # still read-only
    assert AlarmRecord(directory).raised_since() is None  # the card's record: of before
    card.replace()
    assert record.retry() is None
    assert record.error is None
    assert AlarmRecord(directory).raised_since() == 1_800_000_000 * NS


async def test_a_night_flow_districts_state_is_stored_once_the_card_is_back_not_only_at_the_next_night(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the state judged while the card was read-only was written at the next night's end
    only; a restart before it (the card mended: a reboot) learnt the district again."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setattr(json_record, "RETRY_EVERY_S", 0.0)
    state = card.mount / "state"
    section, before, after = _north_district()
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    processor = FlowLeakProcessor([section], state)
    card.fail()
    await processor.run(_feed(before), emit)  # twenty nights: learnt and armed, in memory
    district = processor.health().districts["dma-north"]
    assert district.state == "armed"
    assert district.last_error is not None
    assert district.last_error.startswith("state not stored: Read-only file system")
    assert len([e for e in events if e.kind == "night_flow"]) == district.nights

    card.replace()
    midnight = after[0].ts_ns
    await processor.run(_feed([r for r in after if r.ts_ns < midnight + 3600 * NS]), emit)  # no night ends
    assert processor.health().districts["dma-north"].last_error is None
    restarted = FlowLeakProcessor([section], state)
    again = restarted.health().districts["dma-north"]
    assert (again.state, again.nights) == ("armed", district.nights)


async def test_a_hydrophone_is_judged_on_a_read_only_card_said_once_and_stored_once_it_is_back(
    card: Card,
) -> None:
    """Before: `leak.check_not_stored` (an error) and `leak.confirmation.not_stored` at every check
    of every sensor while the card was read-only."""
    state = card.mount / "state"
    processor = AudioLeakProcessor(LEAK_SECTION, _NoDriver(), state)  # type: ignore[arg-type]
    await _run_nights(processor, [(date(2025, 3, d), 1.0) for d in (1, 2, 3, 4)])
    assert processor.health().sensors["hyd.A"].baseline_version == 1
    card.fail()
    with structlog.testing.capture_logs() as logs:
        await _run_nights(processor, [(date(2025, 3, d), 1.0) for d in (5, 6)])
        checks = processor.health().sensors["hyd.A"].checks
        failed = processor.health().sensors["hyd.A"]
        assert failed.last_error is not None
        assert "not stored: Read-only file system" in failed.last_error
        card.replace()
        await _run_nights(processor, [(date(2025, 3, 7), 1.0)])
    back = processor.health().sensors["hyd.A"]
    assert back.checks > checks  # judged all along
    assert back.last_error is None
    said = [
        entry["event"] for entry in logs if entry["event"].startswith(("leak.check_", "leak.confirmation."))
    ]
    # Once for each sensor, not at every check.
    assert sorted(said) == sorted(
        ["leak.check_not_stored", "leak.confirmation.not_stored"] * 2
        + ["leak.check_stored_again", "leak.confirmation.stored_again"] * 2
    )
    assert "2025-03-07" in SensorStore(state, "hyd.A").nights()


def test_a_machine_heard_on_a_card_gone_read_only_is_scored_on_and_its_history_written_again(
    card: Card, tmp_path: Path
) -> None:
    """The machine-sound model's clip history (the pump's `FeatureHistory`) under a real agent:
    a microphone played from a WAV file 40x faster than real time."""
    synth = MachineSoundSynth(MachineScene.random(np.random.default_rng(17), snr_db=8.0), seed=17)
    wav = tmp_path / "pump1.wav"
    write_wav(wav, synth.render_seconds(300), 16_000)  # normal sound, looped
    devices = f"""
[[devices]]
name = "mic-p1"
kind = "audio"
source = "file"
path = "{wav}"
playback_speed = 40
loop = true
channel_names = ["mic"]
"""
    models = """
[[models.machine_sound]]
name = "P1-sound"
device = "mic-p1"
  [models.machine_sound.calibration]
  auto_hours = 0.001
  min_clips = 20
"""
    state = card.mount / "state"
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config(state, status_socket=tmp_path / "status.sock", devices=devices, models=models)
    )

    def machine(status: dict[str, Any]) -> dict[str, Any]:
        processor = next(p for p in status["processors"] if p["name"] == "machine_sound:P1-sound")
        health: dict[str, Any] = processor["health"]
        return health | {"crashes": processor["crashes"]}

    def not_stored(status: dict[str, Any]) -> bool:
        return "rows not stored" in (machine(status).get("last_error") or "")

    agent: AgentProcess | None = start_agent(config)
    assert agent is not None
    try:
        agent.wait_status(lambda s: machine(s).get("state") == "armed", timeout=60)
        card.fail()
        failed = agent.wait_status(not_stored, timeout=30)
        scored = machine(failed)["scored"]
        later = agent.wait_status(lambda s: not_stored(s) and machine(s)["scored"] >= scored + 18, timeout=30)
        assert machine(later)["crashes"] == 0
        assert agent.log().count('"machine_sound.history_not_written"') == 1

        card.replace()
        written = agent.wait_status(lambda s: machine(s).get("last_error") is None, timeout=30)
        assert machine(written)["state"] in ("armed", "alarm")
        assert agent.log().count('"machine_sound.history_written_again"') == 1
        assert agent.stop() == 0
        agent = None
        conn = sqlite3.connect(state / "machine_sound" / "P1-sound" / "history.sqlite")
        try:
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
            (rows,) = conn.execute("SELECT COUNT(*) FROM samples").fetchone()
        finally:
            conn.close()
        assert rows >= 6  # at least the flush after the card came back
    finally:
        if agent is not None:
            agent.kill()


def test_a_models_status_line_says_both_what_its_history_and_its_records_could_not_store() -> None:
    """Before, an alarm raised while the card was read-only replaced the line saying how many
    history rows were lost (make test under load: the pump test waited for it in vain)."""
    storage = StorageErrors()
    storage.history = "/card/pump/pump1/history.sqlite: 60 rows not stored since 2026-12-07T10:00:00Z (EROFS)"
    last = storage.last_error(None)
    storage.records = "Read-only file system (/card/pump/pump1/alarm.json)"
    last = storage.last_error(last)
    assert last == (
        "/card/pump/pump1/history.sqlite: 60 rows not stored since 2026-12-07T10:00:00Z (EROFS); "
        "alarm state not stored: Read-only file system (/card/pump/pump1/alarm.json)"
    )
    storage.history = None  # the card takes writes: the history first, then the record
    last = storage.last_error(last)
    assert last == "alarm state not stored: Read-only file system (/card/pump/pump1/alarm.json)"
    storage.records = None
    assert storage.last_error(last) is None
    # An error of another kind is not the storage's to clear.
    assert storage.last_error("calibration failed: too few samples") == "calibration failed: too few samples"
