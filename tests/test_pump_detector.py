"""Calibration and scoring on simulated pumps: faults are caught soon after onset, normal rarely alarms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.pump.detector import Alarm, Calibration, alarm_series, calibrate, contributors, score, select
from models.runtime import Model, load_model
from models.train.pump_sim import SIGNALS, Scenario, simulate

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"
CALIB = 1800


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(MANIFEST)


def run(model: Model, sc: Scenario) -> tuple[Calibration, np.ndarray, np.ndarray, np.ndarray]:
    x, labels = simulate(sc)
    cal = calibrate(x[:CALIB], list(SIGNALS), model, window=32, model_version=model.version)
    scored = score(select(x, list(SIGNALS), cal), cal, model)
    alarm = alarm_series(scored.score[CALIB:], cal.threshold, 5, 30, 0.8)
    return cal, scored.channel, alarm, labels[CALIB:]


def test_held_out_fault_is_detected_within_five_minutes_and_explained(model: Model) -> None:
    onset = CALIB + 900
    cal, channel, alarm, labels = run(model, Scenario(
        seed=21, hours=1.0, fault="imbalance", onset_s=onset, duration_s=900, ramp_s=60, severity=0.4))
    first = np.flatnonzero(alarm)
    assert len(first) > 0
    assert first[0] >= onset - CALIB - 60, "alarm long before the fault"
    fault_rows = np.flatnonzero(labels)
    hits = np.flatnonzero(alarm[fault_rows])
    assert len(hits) > 0
    assert hits[0] <= 300, "fault not detected within 5 min of onset"
    at = CALIB + fault_rows[hits[0]]
    signals, sentence = contributors(cal, channel[at], np.zeros((1, len(cal.channels))) + 1.0,
                                     words={"vibration_x": "vibration axis 1"})
    assert signals[0]["signal"].startswith("vibration")
    assert "vibration" in sentence


def test_normal_operation_rarely_alarms(model: Model) -> None:
    _, _, alarm, _ = run(model, Scenario(seed=22, hours=1.0, fault=None, start_hour=2.0))
    assert alarm.mean() < 0.1


def test_calibration_is_json_round_trippable(model: Model) -> None:
    x, _ = simulate(Scenario(seed=23, hours=0.2))
    cal = calibrate(x, list(SIGNALS), model, window=32, model_version=model.version)
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    assert again.threshold > 0


def test_alarm_needs_persistence_and_clears_with_hysteresis() -> None:
    alarm = Alarm(persistence=3, clear_after=2, hysteresis=0.5)
    seq = [2, 2, 0, 2, 2, 2, 0.8, 0.8, 0.4, 0.4]
    changes = [alarm.update(s, 1.0) for s in seq]
    assert changes == [None, None, None, None, None, True, None, None, None, False]
