"""`PumpProcessor` end to end on Readings built from the simulator, the calibration store and history,
and `edge-agent models calibrate pump`.

Data are generated here with fixed seeds; the processor auto-calibrates after a short `auto_hours`,
so the pumps here run at one duty point (`steady`): half an hour then covers their operating range
(a station that follows daily demand needs a day, see test_pump_detector.py).
Assertions are about behaviour (an alarm after the onset naming vibration, none on normal data of
the same length, a clear after the fault is gone), not wall-clock timing.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.support.testing import damage_sqlite_under_its_owner
from water_edge.agent.cli import main
from water_edge.core.health import Health, health_json
from water_edge.core.reading import Event, Reading
from water_edge.models.pump.config import PumpModelConfig
from water_edge.models.pump.detector import Calibration
from water_edge.models.pump.processor import PumpProcessor
from water_edge.models.pump.store import NS, CalibrationStore, FeatureHistory
from water_edge.models.runtime import Model, load_model
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

pytestmark = pytest.mark.slow

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"
T0 = 1_700_000_000 * NS
CALIB_S = 1800  # auto_hours = 0.5


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(MANIFEST)


ONSET, END = CALIB_S + 600, CALIB_S + 1500  # the imbalance of `imbalance_rows`


@pytest.fixture(scope="module")
def imbalance_rows() -> np.ndarray:
    """2.5 h of one duty point, pump 1 imbalanced from `ONSET` to `END`: the fault and the restart
    tests read the same rows (read-only: a test that wrote to them would raise)."""
    x, _ = simulate(
        Scenario(seed=31, hours=2.5, fault="imbalance", onset_s=ONSET, duration_s=END - ONSET,
                 ramp_s=30, severity=0.4, start_hour=10.0, steady=True)
    )  # fmt: skip
    x.flags.writeable = False
    return x


def config(**kw: object) -> PumpModelConfig:
    signals = {role: f"plc1/p1_{role}" for role in SIGNALS}
    return PumpModelConfig.model_validate(
        {"name": "P1", "signals": signals, "calibration": {"auto_hours": CALIB_S / 3600}, **kw}
    )


def feed(x: np.ndarray) -> list[tuple[str, list[Reading]]]:
    """One poll per second: a batch of readings for every tag, as a `ReadingFeed` delivers it."""
    tags = [f"p1_{role}" for role in SIGNALS]
    return [
        (
            "plc1",
            [
                Reading("plc1", tag, T0 + i * NS, None if v != v else v)
                for tag, v in zip(tags, row, strict=True)
            ],
        )
        for i, row in enumerate(x.tolist())  # Python floats: NaN is the one that is not equal to itself
    ]


async def source(items: list[tuple[str, list[Reading]]]) -> AsyncIterator[tuple[str, list[Reading]]]:
    for item in items:
        yield item


def run(proc: PumpProcessor, x: np.ndarray, at_event: Callable[[Event], None] | None = None) -> list[Event]:
    """The events of `x` fed through `proc`; `at_event` sees each as it is emitted."""
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)
        if at_event is not None:
            at_event(e)

    asyncio.run(proc.run(source(feed(x)), emit))
    return events


def _config_file(tmp_path: Path) -> Path:
    cfg_path = tmp_path / "agent.toml"
    signals = "\n".join(f'{r} = "plc1/p1_{r}"' for r in SIGNALS)
    cfg_path.write_text(
        f'[gateway]\nstate_dir = "{tmp_path}"\n\n[[models.pump]]\nname = "P1"\n'
        f"[models.pump.signals]\n{signals}\n"
    )
    return cfg_path


def test_fault_alarms_after_onset_names_vibration_and_clears(
    tmp_path: Path, model: Model, imbalance_rows: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    onset, end, x = ONSET, END, imbalance_rows
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    events = run(proc, x)
    rises = [e for e in events if e.kind == "pump_anomaly"]
    clears = [e for e in events if e.kind == "pump_anomaly_cleared"]
    assert rises, "no alarm for the fault"
    first = rises[0]
    t_first = (first.ts_ns - T0) / NS
    assert onset <= t_first <= onset + 600, f"alarm at {t_first} s, onset {onset} s"
    assert first.source == "P1"
    assert first.detail["pump"] == "P1"
    assert first.detail["signals"][0]["signal"].startswith("vibration")
    assert "vibration" in first.detail["explanation"]
    # The bearing runs hot while imbalanced and cools back over ~40 min after the fault is gone; the
    # alarm holds until its temperature is back on its normal relation, then clears.
    assert clears, "the alarm did not clear after the fault"
    assert (clears[-1].ts_ns - T0) / NS > end
    assert all(onset <= (e.ts_ns - T0) / NS for e in rises)
    health = proc.health().pumps["P1"]
    assert health.calibration is not None
    assert health.calibration["version"] == 1
    assert health.state == "armed"
    assert health.calibration["rows"] >= CALIB_S - 5
    # What `status` shows: the calibration in service and its day, to check after an update.
    day = health.calibration["calibrated_at"][:10]
    assert proc.health().status_lines()[0] == f"P1 armed (calibration v1 of {day})"

    # Before trusting the alarm an engineer scores the kept samples again: the replay raises and
    # clears where the live run did (the history keeps float32 values: a sample or two of slack).
    cfg_path = _config_file(tmp_path)
    capsys.readouterr()  # the processor's own log lines
    code = main(["models", "score", "pump", "--pump", "P1", "-c", str(cfg_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    table = list(csv.reader(io.StringIO(out.out)))
    assert table[0] == ["timestamp", "score", "anomaly", "event"]
    assert len(x) - 5 <= len(table) - 1 <= len(x)  # every sample the processor took and kept
    at = {
        e: [datetime.fromisoformat(r[0]).timestamp() - T0 / NS for r in table[1:] if r[3] == e]
        for e in ("raised", "cleared")
    }
    assert at["raised"][0] == pytest.approx((first.ts_ns - T0) / NS, abs=2)
    assert at["cleared"][-1] == pytest.approx((clears[-1].ts_ns - T0) / NS, abs=2)
    assert len(at["raised"]) == len(rises)
    assert "scored again against calibration v1" in out.err


def test_normal_run_of_the_same_length_does_not_alarm(tmp_path: Path, model: Model) -> None:
    x, _ = simulate(Scenario(seed=31, hours=1.5, fault=None, start_hour=10.0, steady=True))
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    events = run(proc, x)
    assert not [e for e in events if e.kind == "pump_anomaly"]
    assert proc.health().pumps["P1"].scored > 3500


def test_learning_state_stopped_pump_and_history(tmp_path: Path, model: Model) -> None:
    x, _ = simulate(Scenario(seed=32, hours=0.25, start_hour=2.0))
    x[100:200, SIGNALS.index("speed")] = 0.0  # stopped for 100 s: not sampled into the history
    cfg = config(calibration={"auto_hours": 1.0})
    proc = PumpProcessor([cfg], tmp_path, model=model, model_version=model.version)
    events = run(proc, x)
    assert events == []
    h = proc.health().pumps["P1"]
    assert h.state == "learning"
    assert h.calibration is None
    assert h.learning_progress is not None
    assert 0.2 < h.learning_progress < 0.3
    assert h.stopped_samples >= 99
    hist = FeatureHistory.for_pump(tmp_path, "P1", list(cfg.signals), cfg.history_days)
    ts, values = hist.read()
    assert len(ts) == h.samples - h.stopped_samples
    health = proc.health()
    assert isinstance(health, Health)
    assert health.status_lines() == [f"P1 learning {100 * h.learning_progress:.0f} %"]
    document = health_json(health)
    assert list(document) == ["model_version", "pumps"]
    assert list(document["pumps"]["P1"]) == [
        "state",
        "calibration",
        "learning_progress",
        "calibrating",
        "samples",
        "stopped_samples",
        "scored",
        "events",
        "last_score",
        "last_error",
        "clock_steps_back",
        "calibrations_failed",
    ]
    assert values.shape[1] == len(SIGNALS)
    assert np.all(np.diff(ts) > 0)
    hist.close()


def test_calibration_versions_and_history_bound(tmp_path: Path, model: Model) -> None:
    x, _ = simulate(Scenario(seed=33, hours=0.3))
    store = CalibrationStore(tmp_path, "P1")
    assert store.load() is None
    from water_edge.models.pump.detector import calibrate

    for want in (1, 2, 3):
        cal = store.save(calibrate(x, list(SIGNALS), model, window=32, model_version=model.version))
        assert cal.version == want
    loaded = store.load()
    assert isinstance(loaded, Calibration)
    assert loaded.version == 3
    assert store.versions() == [1, 2, 3]

    hist = FeatureHistory(tmp_path / "h.sqlite", ["a", "b"], history_days=1.0)
    day = 86_400 * NS
    hist.append([(T0 + i * day // 4, np.array([i, -i], dtype=float)) for i in range(12)])
    ts, v = hist.read()
    assert (ts[-1] - ts[0]) <= day  # older than a day before the newest: pruned
    assert len(ts) == 5
    assert v[-1].tolist() == [11.0, -11.0]
    hist.close()
    with pytest.raises(Exception, match="holds signals"):
        FeatureHistory(tmp_path / "h.sqlite", ["a", "c"], 1.0, reset_on_change=False)


def test_calibrate_cli_writes_a_new_version_from_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Model
) -> None:
    x, _ = simulate(Scenario(seed=34, hours=0.4, start_hour=2.0))
    proc = PumpProcessor(
        [config(calibration={"auto_hours": 0.25})], tmp_path, model=model, model_version=model.version
    )
    run(proc, x)
    calibration = health_json(proc.health())["pumps"]["P1"]["calibration"]
    assert calibration["version"] == 1
    assert list(calibration) == [
        "version",
        "calibrated_at",
        "rows",
        "threshold",
        "from",
        "to",
        "model_version",
    ]
    cfg_path = _config_file(tmp_path)
    start = "2023-11-14T22:13:20"  # T0 in UTC
    end = str((T0 + 1200 * NS) / NS)
    code = main(
        ["models", "calibrate", "pump", "--pump", "P1", "--from", start, "--to", end, "-c", str(cfg_path)]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "needs a day of normal duty" in out.err  # 20 min of history: the user is warned
    got = json.loads(out.out.strip().splitlines()[-1])
    assert got["version"] == 2
    assert 1150 <= got["rows"] <= 1201
    assert CalibrationStore(tmp_path, "P1").load().version == 2  # type: ignore[union-attr]
    # A range of three days over a history of 24 minutes: the warning reports the rows' span.
    code = main(
        [
            "models",
            "calibrate",
            "pump",
            "--pump",
            "P1",
            "--from",
            start,
            "--to",
            str(T0 / NS + 3 * 86_400),
            "-c",
            str(cfg_path),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "covers 23 min:" in out.err  # the rows' span in whole minutes (it said "0.4 h")

    for argv, message in [
        (["--pump", "P9", "--from", start, "--to", end], "no pump 'P9'"),
        (["--pump", "P1", "--from", end, "--to", start], "after --from"),
        (["--pump", "P1", "--from", "yesterday", "--to", end], "not a time"),
        (["--pump", "P1", "--from", start, "--to", str(T0 / NS + 60)], "need at least"),
    ]:
        code = main(["models", "calibrate", "pump", *argv, "-c", str(cfg_path)])
        out = capsys.readouterr()
        assert code == 2
        assert out.out == ""
        assert len(out.err.strip().splitlines()) == 1
        assert message in out.err, out.err


def test_a_history_the_card_corrupted_is_kept_aside_and_the_pump_keeps_being_watched(
    tmp_path: Path, model: Model, capsys: pytest.CaptureFixture[str]
) -> None:
    # A power cut on a worn SD card leaves the history file unreadable. Before, the processor
    # raised at every restart and no pump of the gateway was watched again.
    history = tmp_path / "pump" / "P1" / "history.sqlite"
    history.parent.mkdir(parents=True)
    history.write_bytes(b"\x00\x13garbage\xff" * 400)
    cfg_path = _config_file(tmp_path)

    span = ["--from", "2023-11-14", "--to", "2023-11-15"]
    code = main(["models", "calibrate", "pump", "--pump", "P1", *span, "-c", str(cfg_path)])
    out = capsys.readouterr()
    assert code == 2
    assert len(out.err.strip().splitlines()) == 1
    assert "not a readable history database" in out.err
    assert history.read_bytes().startswith(b"\x00\x13garbage")  # a command reads; it moves nothing

    x, _ = simulate(Scenario(seed=32, hours=0.1, start_hour=2.0, steady=True))
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    events = run(proc, x)
    assert [e.kind for e in events] == ["history_quarantined"]
    event = events[0]
    assert event.severity == "warning"
    assert event.source == "P1"
    kept = Path(event.detail["moved_to"])
    assert kept.parent == history.parent
    assert kept.name.startswith("history.sqlite.quarantined-")
    assert kept.read_bytes().startswith(b"\x00\x13garbage")  # kept for a person, never deleted
    assert event.detail["reason"] == "file is not a database"

    status = proc.health().pumps["P1"]
    assert status.state == "learning"  # a fresh history: learning again, from these samples
    assert status.last_error is not None
    assert str(kept) in status.last_error
    learnt = f"{100 * (status.learning_progress or 0):.0f} %"
    # what `status` prints
    assert proc.health().status_lines() == [f"P1 learning {learnt}", f"P1: {status.last_error}"]
    fresh = FeatureHistory.for_pump(tmp_path, "P1", list(config().signals), 14.0)
    assert fresh.quarantined is None
    assert fresh.count() == status.samples - status.stopped_samples > 300
    fresh.close()


def run_interrupted(
    proc: PumpProcessor, x: np.ndarray, at: int, happen: Callable[[], object]
) -> tuple[list[Event], int]:
    """Run the processor over `x`, `happen` happening before row `at`: the events, and how many
    samples had been scored by then."""
    scored_before: list[int] = []

    async def damaged_source() -> AsyncIterator[tuple[str, list[Reading]]]:
        for i, item in enumerate(feed(x)):
            if i == at:
                scored_before.append(proc.health().pumps["P1"].scored)
                happen()
            yield item

    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    asyncio.run(proc.run(damaged_source(), emit))
    return events, scored_before[0]


def test_a_history_damaged_while_running_is_kept_aside_and_the_pump_stays_watched(
    tmp_path: Path, model: Model
) -> None:
    # Before, the first write after the damage raised, the processor restarted with backoff and
    # raised again at every restart: the pump went unwatched until the agent itself restarted.
    x, _ = simulate(Scenario(seed=33, hours=0.75, start_hour=2.0, steady=True))
    damage_at = CALIB_S + 300
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    history = tmp_path / "pump" / "P1" / "history.sqlite"
    events, scored_before = run_interrupted(
        proc, x, damage_at, lambda: damage_sqlite_under_its_owner(history, seed=33)
    )

    assert [e.kind for e in events] == ["history_quarantined"]
    event = events[0]
    assert event.detail["found"] == "while running"
    assert "malformed" in event.detail["reason"] or "not a database" in event.detail["reason"]
    kept = Path(event.detail["moved_to"])
    assert kept.exists()
    assert kept.name.startswith("history.sqlite.quarantined-")

    status = proc.health().pumps["P1"]
    assert status.state == "armed"  # the calibration was not in the history: still watching
    assert status.scored > scored_before + 300  # scored on after the damage
    assert status.last_error is not None
    assert str(kept) in status.last_error
    fresh = FeatureHistory.for_pump(tmp_path, "P1", list(config().signals), 14.0)
    assert fresh.quarantined is None  # the new history is sound ...
    assert fresh.count() >= len(x) - damage_at - 60  # ... and holds the rows since the damage
    fresh.close()


def test_a_history_damaged_while_learning_starts_the_stretch_again(tmp_path: Path, model: Model) -> None:
    x, _ = simulate(Scenario(seed=34, hours=0.75, start_hour=2.0, steady=True))
    damage_at = 900
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    history = tmp_path / "pump" / "P1" / "history.sqlite"
    events, _ = run_interrupted(proc, x, damage_at, lambda: damage_sqlite_under_its_owner(history, seed=34))

    assert [e.kind for e in events] == ["history_quarantined"]
    status = proc.health().pumps["P1"]
    # The first 900 rows went with the damaged file: learning counts again from the damage, and
    # 1800 samples have not passed since, so it has not calibrated on a stretch it cannot read.
    assert status.state == "learning"
    assert status.last_error is not None
    assert "damaged while running" in status.last_error


def test_a_full_card_leaves_a_gap_in_the_history_not_the_pump_unwatched(tmp_path: Path, model: Model) -> None:
    # Before, "database or disk is full" at a history write crashed the processor, which was
    # restarted with backoff again and again: half the time nobody watched the pump.
    x, _ = simulate(Scenario(seed=35, hours=0.75, start_hour=2.0, steady=True))
    full_at = CALIB_S + 300
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)

    def card_full() -> None:  # SQLite's own "disk is full" path: no page may be added
        db = proc.pumps["P1"].history._db
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")

    events, scored_before = run_interrupted(proc, x, full_at, card_full)
    assert events == []  # no crash, no quarantine: the file is fine, the card is full
    status = proc.health().pumps["P1"]
    assert status.state == "armed"
    assert status.scored > scored_before + 300  # scored on
    assert status.last_error is not None
    assert "rows not stored" in status.last_error
    assert "full" in status.last_error


def test_a_calibration_the_card_cannot_store_leaves_the_pump_learning_and_says_why(
    tmp_path: Path, model: Model
) -> None:
    # Before, the OSError of writing calibration.json escaped the learning step: the processor
    # crashed, was restarted and crashed again at each attempt. Here a directory stands where the
    # file goes (the same OSError path as a full card). Then the failure was only in the
    # gateway's log and status: the centre saw a pump that never alarmed, not one never watched.
    (tmp_path / "pump" / "P1" / "calibration.json").mkdir(parents=True)
    x, _ = simulate(Scenario(seed=36, hours=0.6, start_hour=2.0, steady=True))
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    calibrating_at_event: list[bool] = []
    (event,) = run(proc, x, lambda e: calibrating_at_event.append(proc.health().pumps["P1"].calibrating))
    assert calibrating_at_event == [False]  # a status read on the event says it is learning again
    assert (event.kind, event.source, event.severity) == ("pump_calibration_failed", "P1", "warning")
    assert "calibration.json" in event.detail["reason"]
    assert event.detail["samples"] == CALIB_S == event.detail["retry_after_samples"]
    assert event.detail["failures"] == 1
    assert event.detail["from"] < event.detail["to"]
    status = proc.health().pumps["P1"]
    assert status.state == "learning"  # not armed on a calibration it could not keep ...
    assert status.learning_progress is not None
    assert status.learning_progress < 0.5  # ... tried at 1800 samples, learning again since
    assert status.calibrations_failed == 1
    assert status.last_error is not None
    assert "calibration.json" in status.last_error
    assert "Is a directory" in status.last_error
    assert "P1: 1 automatic calibration(s) failed, learning again" in proc.health().status_lines()


def test_a_calibration_that_succeeds_after_a_failed_one_leaves_no_stale_error_in_status(
    tmp_path: Path, model: Model
) -> None:
    # Before, `status` kept the failed calibration's error beside the calibration in service.
    blocked = tmp_path / "pump" / "P1" / "calibration.json"
    blocked.mkdir(parents=True)  # the first calibration cannot be stored
    x, _ = simulate(Scenario(seed=36, hours=1.1, start_hour=2.0, steady=True))
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    # the card has room again once the failure is out: the next stretch's calibration is stored
    events = run(proc, x, lambda e: blocked.rmdir() if e.kind == "pump_calibration_failed" else None)
    assert [e.kind for e in events] == ["pump_calibration_failed"]
    status = proc.health().pumps["P1"]
    assert status.state == "armed"
    assert status.calibrations_failed == 1
    assert status.last_error is None
    assert not [line for line in proc.health().status_lines() if "calibration.json" in line]


def test_an_anomaly_raised_when_the_agent_stopped_is_cleared_after_the_restart_not_raised_again(
    tmp_path: Path, model: Model, imbalance_rows: np.ndarray
) -> None:
    # Before, a restart forgot the raised alarm: the fault going on raised a second pump_anomaly,
    # and the clear went with the forgetting (the centre paired them wrongly).
    onset, end = ONSET, END
    # Up to an hour after the fault is gone: the bearing cools back over ~40 min, and the alarm
    # clears within it (as in the uninterrupted run of the same rows above).
    batches = feed(imbalance_rows[: end + 3600])
    restart_at = onset + 700  # well inside the fault, after the alarm
    before: list[Event] = []
    after: list[Event] = []

    async def run_part(part: list[tuple[str, list[Reading]]], into: list[Event]) -> None:
        async def emit(e: Event) -> None:
            into.append(e)

        proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
        await proc.run(source(part), emit)

    asyncio.run(run_part(batches[:restart_at], before))
    assert [e.kind for e in before] == ["pump_anomaly"]
    record = tmp_path / "pump" / "P1" / "alarm.json"
    left_raised = record.read_text() if record.exists() else None

    asyncio.run(run_part(batches[restart_at:], after))
    kinds = [e.kind for e in after]
    assert kinds[0] == "pump_anomaly_cleared"  # the same alarm, cleared once the fault is over
    assert (after[0].ts_ns - T0) / NS > end
    assert left_raised is not None
    assert json.loads(left_raised) == {"since_ns": before[0].ts_ns}
    assert json.loads(record.read_text()) in ({}, {"since_ns": after[-1].ts_ns})


def test_one_sensor_glitch_while_learning_does_not_blind_the_calibration_to_that_signal(
    tmp_path: Path, model: Model
) -> None:
    # Before, a single reading of 1000x in the calibration stretch set that channel's scale from a
    # standard deviation it dominated (113 instead of 0.007 bar): the drift of that sensor after
    # calibration was never raised, for as long as the calibration stayed in service.
    onset = CALIB_S + 600
    x, _ = simulate(
        Scenario(seed=31, hours=1.5, fault="sensor_drift", onset_s=onset, duration_s=1800, ramp_s=30,
                 severity=0.4, start_hour=10.0, steady=True)
    )  # fmt: skip
    x[600, SIGNALS.index("discharge_pressure")] *= 1000.0  # one glitch, 10 minutes into learning
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    # The rows up to a minute past the latest the alarm may come: what the processor emits up to a
    # sample depends on the rows before it only, so the rows after could not change what is asserted.
    rises = [e for e in run(proc, x[: onset + 180]) if e.kind == "pump_anomaly"]
    assert rises, "the drifting sensor was not raised"
    assert onset <= (rises[0].ts_ns - T0) / NS <= onset + 120
    cal = CalibrationStore(tmp_path, "P1").load()
    assert cal is not None
    assert cal.scale[cal.channels.index("discharge_pressure")] < 0.1


def test_a_clock_stepped_back_while_learning_restarts_sampling_and_the_learning_stretch(
    tmp_path: Path, model: Model
) -> None:
    # The gateway's clock ran 2 h ahead and NTP corrected it 15 minutes into learning. Before,
    # sampling waited for reading time to catch up with the next sample due: two hours without a
    # sample (the rest of this run), the pump left learning, without a word.
    x, _ = simulate(Scenario(seed=34, hours=1.0, fault=None, start_hour=10.0, steady=True))
    ahead, step_at = 7200 * NS, 900
    batches = [
        (stream, [dataclasses.replace(r, ts_ns=r.ts_ns + ahead) for r in rs]) if i < step_at else (stream, rs)
        for i, (stream, rs) in enumerate(feed(x))
    ]
    proc = PumpProcessor([config()], tmp_path, model=model, model_version=model.version)
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    with capture_logs() as logs:
        asyncio.run(proc.run(source(batches), emit))
    assert not [e for e in events if e.kind == "pump_anomaly"]
    h = proc.health().pumps["P1"]
    assert h.state == "armed"
    assert h.calibration is not None
    # Learnt from the step on only: rows stamped by the clock running ahead are not mixed in.
    assert h.calibration["from"] is not None
    assert datetime.fromisoformat(h.calibration["from"]).timestamp() >= (T0 + step_at * NS) / NS
    assert h.samples >= len(x) - 5  # before: 898, none after the step
    history = FeatureHistory.existing(tmp_path, "P1", list(SIGNALS), 14)
    ts, _ = history.read()
    history.close()
    assert ts.max() < T0 + len(x) * NS  # the rows stamped ahead were deleted, not mixed in
    assert h.clock_steps_back == 1
    assert "P1: clock stepped back 1 time(s): sampling went on from the readings' time" in (
        proc.health().status_lines()
    )
    steps = [e for e in logs if e["event"] == "pump.clock_stepped_back"]
    assert len(steps) == 1
    assert steps[0]["log_level"] == "warning"
    assert steps[0]["step_s"] == pytest.approx(7200, abs=2)
