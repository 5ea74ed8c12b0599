"""Calibration on a day of simulated duty, then scoring: faults are caught soon after onset and
named, normal duty does not alarm, calibrations round-trip and old formats are refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from water_edge.models.manifest import ModelError
from water_edge.models.pump import detector
from water_edge.models.pump.detector import (
    Alarm,
    Calibration,
    alarm_series,
    calibrate,
    channel_scores,
    contributors,
    repeat_runs,
    score,
    score_latest,
    score_series,
    select,
    trailing_mean,
    windows,
)
from water_edge.models.runtime import Model, load_model
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

pytestmark = pytest.mark.slow

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"
DAY = 24 * 3600  # calibration covers a daily demand cycle, as `auto_hours = 24` does on a gateway


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(MANIFEST)


Run = tuple[Calibration, np.ndarray, np.ndarray, np.ndarray]


def run(model: Model, sc: Scenario) -> Run:
    x, labels = simulate(sc)
    cal = calibrate(x[:DAY], list(SIGNALS), model, window=32, model_version=model.version)
    scored = score(select(x[DAY - 64 :], list(SIGNALS), cal), cal, model)
    alarm = alarm_series(scored.score[64:], cal.threshold, 5, 30, 0.8)
    return cal, scored.channel[64:], alarm, labels[DAY:]


def first_hit(alarm: np.ndarray, labels: np.ndarray) -> int:
    """Seconds from the fault's onset to the first alarm during it."""
    fault_rows = np.flatnonzero(labels)
    hits = np.flatnonzero(alarm[fault_rows])
    assert len(hits) > 0, "the fault was never alarmed"
    return int(hits[0])


NORMAL_S = 2 * 3600  # of normal duty after the calibration day, before the held-out fault


@pytest.fixture(scope="module")
def normal_then_fault(model: Model) -> Run:
    """A day of calibration, two hours of normal duty, then the held-out fault (pump 1 imbalanced
    for 15 min). Simulating the station is what these tests cost: the two tests that read it (the
    two hours raise nothing; the fault is caught and named) share one calibration day instead of
    simulating a day each. Read-only: a test that wrote to it would raise."""
    got = run(
        model,
        Scenario(
            seed=22,
            hours=26.25,
            fault="imbalance",
            onset_s=DAY + NORMAL_S,
            duration_s=900,
            ramp_s=60,
            severity=0.4,
        ),
    )
    for array in got[1:]:
        array.flags.writeable = False
    return got


def test_held_out_fault_is_detected_within_five_minutes_and_explained(normal_then_fault: Run) -> None:
    onset = NORMAL_S
    cal, channel, alarm, labels = normal_then_fault
    assert np.flatnonzero(labels)[0] == onset
    assert not alarm[: onset - 60].any(), "alarm long before the fault"
    delay = first_hit(alarm, labels)
    assert delay <= 300, "fault not detected within 5 min of onset"
    at = onset + delay
    signals, sentence = contributors(
        cal, channel[at], np.zeros((1, len(cal.channels))) + 1.0, words={"vibration_x": "vibration axis 1"}
    )
    assert signals[0]["signal"].startswith("vibration")
    assert "vibration" in sentence


def test_drifting_sensor_is_caught_by_its_broken_relation_and_named(model: Model) -> None:
    # Discharge pressure reads 0.3 bar high: within its daily range, but off its relation to
    # speed and flow.
    onset = 600
    cal, channel, alarm, labels = run(
        model,
        Scenario(
            seed=24,
            hours=25.0,
            fault="sensor_drift",
            onset_s=DAY + onset,
            duration_s=3000,
            ramp_s=120,
            severity=0.3,
        ),
    )
    assert not alarm[: onset - 60].any()
    delay = first_hit(alarm, labels)
    assert delay <= 900
    signals, _ = contributors(cal, channel[onset + delay], np.ones((1, len(cal.channels))))
    assert "discharge_pressure" in [s["signal"] for s in signals]
    assert alarm[labels == 1].mean() > 0.8


def test_a_day_of_calibration_then_two_hours_of_normal_duty_raises_no_alarm(normal_then_fault: Run) -> None:
    _, _, alarm, labels = normal_then_fault
    normal = alarm[: np.flatnonzero(labels)[0]]  # scored after the calibration day, up to the fault
    assert len(normal) == NORMAL_S
    assert not normal.any()


def test_calibration_is_json_round_trippable(model: Model) -> None:
    x, _ = simulate(Scenario(seed=23, hours=0.2))
    cal = calibrate(x, list(SIGNALS), model, window=32, model_version=model.version)
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    assert again.threshold == 1.0
    assert again.level_threshold > 0
    assert again.scorer_threshold > 0
    old = {**cal.to_dict(), "format": 1}
    with pytest.raises(ModelError, match="calibrate the pump again"):
        Calibration.from_dict(old)


def test_alarm_needs_persistence_and_clears_with_hysteresis() -> None:
    alarm = Alarm(persistence=3, clear_after=2, hysteresis=0.5)
    seq = [2, 2, 0, 2, 2, 2, 0.8, 0.8, 0.4, 0.4]
    changes = [alarm.update(s, 1.0) for s in seq]
    assert changes == [None, None, None, None, None, True, None, None, None, False]
    assert not alarm.active  # cleared, not only said to be
    # After a clear the count starts again; below the hysteresis at once, it clears after exactly
    # `clear_after` samples; the threshold scales both (here 2: rise above 2, clear below 1).
    seq = [5, 5, 5, 0, 0, 5, 5, 5, 3]
    assert [alarm.update(s, 2.0) for s in seq] == [None, None, True, None, False, None, None, True, None]
    assert alarm.active  # 3 is above 2 x 0.5
    assert alarm.update(float("nan"), 2.0) is None
    assert alarm.active
    series = alarm_series(np.array([5, 5, 5, 1.5, 0.5, 0.5, 0.5]), 2.0, 3, 2, 0.5)
    assert series.tolist() == [0, 0, 1, 1, 1, 0, 0]


class OverflowingScorer:
    """A model whose output overflows (as TFLite's softplus did past a logit of ~88)."""

    def invoke(self, x: npt.ArrayLike) -> np.ndarray:
        return np.full((np.asarray(x).shape[0], 1), np.inf, dtype=np.float32)


def test_an_overflowing_scorer_reads_as_very_abnormal_not_as_a_gap() -> None:
    z = np.zeros((40, 2))
    out = channel_scores(OverflowingScorer(), windows(z, z, 32))
    assert np.isfinite(out).all()
    alarm = alarm_series(out.max(axis=1), 1.0, 5, 30, 0.8)
    assert alarm[4] == 1  # raised after 5 samples, as any score above threshold


def test_scoring_a_long_history_in_pieces_gives_the_figures_of_one_piece(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `score` takes long files a piece at a time, each with the rows its trailing windows reach
    # back to; a piece that did not reach back would restart the windows at every boundary.
    x, _ = simulate(Scenario(seed=8, hours=1.0, fault="cavitation", onset_s=2000, duration_s=900))
    cal = calibrate(x[:1800], list(SIGNALS), model, window=32, model_version=model.version)
    rows = select(x, list(SIGNALS), cal)
    whole = score(rows, cal, model)
    monkeypatch.setattr(detector, "SCORE_CHUNK_ROWS", 500)  # 8 pieces, boundaries inside the fault
    pieces = score(rows, cal, model)
    np.testing.assert_allclose(pieces.channel, whole.channel, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pieces.score, whole.score, rtol=1e-9, atol=1e-9)
    # The same to rounding: BLAS sums a piece's rows in another order (1e-14 at the boundaries); a
    # piece that restarted its windows would be off by far more.
    np.testing.assert_allclose(pieces.residual, whole.residual, rtol=1e-12, atol=1e-12)
    # The offline command without --explain keeps only the scores and runs: the same figures.
    series, runs = score_series(rows, cal, model)
    np.testing.assert_array_equal(series, pieces.score)
    np.testing.assert_array_equal(runs, whole.run)


def test_the_gateways_last_row_score_is_scores_last_row(model: Model) -> None:
    # The gateway scores only the newest sample of its window (one scorer input per channel, not
    # one per row): its figures must be the whole window's last row, through a fault, missing
    # cells, a frozen register and a window not yet full.
    x, _ = simulate(Scenario(seed=9, hours=0.6, fault="cavitation", onset_s=1500, duration_s=400))
    cal = calibrate(x[:1200], list(SIGNALS), model, window=32, model_version=model.version)
    rows = select(x[1200:], list(SIGNALS), cal).copy()
    rows[np.random.default_rng(1).random(rows.shape) < 0.03] = np.nan
    rows[100:200, 2] = rows[99, 2]
    runs, _ = repeat_runs(rows)
    for end in [*range(5, 40, 7), *range(40, len(rows), 13)]:
        piece = slice(max(0, end - 32), end)
        whole, latest = (
            score(rows[piece], cal, model, runs[piece]),
            score_latest(rows[piece], cal, model, runs[piece]),
        )
        np.testing.assert_allclose(latest.channel, whole.channel[-1:], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(latest.score, whole.score[-1:], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(latest.residual, whole.residual)
        np.testing.assert_array_equal(latest.run, whole.run[-1:])
    assert score(rows, cal, model, runs).score.max() > 1  # the fault is in the rows compared


def test_select_takes_the_calibrated_columns_in_calibration_order(model: Model) -> None:
    x, _ = simulate(Scenario(seed=9, hours=0.5, fault=None))
    names = list(SIGNALS)
    cal = calibrate(x[:1200], names, model, window=32, model_version=model.version)
    assert cal.channels == [n for n in names if n in cal.channels], "calibration keeps the file's order"
    picked = [names.index(c) for c in cal.channels]
    np.testing.assert_array_equal(select(x, names, cal), x[:, picked])
    shuffled = names[::-1]  # the same signals, columns in another order: picked by name
    np.testing.assert_array_equal(select(x[:, ::-1], shuffled, cal), x[:, picked])


@pytest.mark.parametrize("w", [1, 3, 8, 40, 45])
def test_a_trailing_mean_is_the_mean_of_the_last_w_rows_and_of_all_rows_before_w(w: int) -> None:
    x = np.random.default_rng(w).normal(0.0, 3.0, (40, 3)) + 1e6  # large values: cumulative sums lose digits
    naive = np.array([x[max(0, i - w + 1) : i + 1].mean(axis=0) for i in range(len(x))])
    np.testing.assert_allclose(trailing_mean(x, w), naive, rtol=0, atol=1e-9 * 1e6)
