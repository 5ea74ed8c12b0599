"""The offline CLI with short calibrations on a circulation test rig (firmware-sim's `fwsim.rig`), and
the properties of the steady detector that make it hold on real rig data.

Runs are generated here (seed 4712, neither a tuning nor an evaluation seed of
`models/train/pump_eval_rig.py`): three per experiment and four normal, written as CSV with
random column names and scored by `edge-agent models score pump --csv F --calibrate-rows 400`.
Measured when written: point-wise F1 0.853, false alarm rate 12.6 %, no normal run alarmed
(the detector before this change: F1 0.74 on the tuning runs); with re-basing after an event
(issue 16, third pass) F1 0.855, false alarms 7.7 % (0.854 / 12.5 % without); fourth pass
(every channel past the alarm level is part of the event) 0.854 / 12.5 %; bounds leave a margin."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from water_edge.agent.cli import main
from water_edge.models.pump import steady
from water_edge.models.pump.detector import alarm_series
from water_edge.models.train.pump_eval_rig import (
    evaluation_cases,
    make_cases,
    report,
    run_cases,
    shared_rigs,
)
from water_edge.models.train.pump_eval_short import parse_output, write_csv
from water_edge.sim.rig import RIG_FAULTS, simulate_run


def test_cli_on_rig_runs_meets_the_measured_f1_and_false_alarm_rate() -> None:
    figures = report(run_cases(make_cases(4712, RIG_FAULTS, per_fault=3, normal=4)))["all"]
    assert figures["f1"] >= 0.75, figures
    assert figures["false_alarm_rate"] <= 0.18, figures
    assert figures["normal_runs_alarmed"] <= 0.25, figures


def _run(rng: np.random.Generator, n: int = 1200) -> np.ndarray:
    """Eight channels of steady noise."""
    return rng.normal(0.0, 1.0, (n, 8)) + np.arange(8) * 10.0


def _alarms(x: np.ndarray, calib: int = 400) -> np.ndarray:
    model = steady.fit(x[:calib])
    return alarm_series(model.score(x)[calib:], 1.0, 5, 20, 0.8)


def test_a_spiky_coarse_channel_does_not_hide_a_shift_on_another() -> None:
    rng = np.random.default_rng(1)
    x = _run(rng)
    # channel 0: a transmitter read in coarse steps, now and then a spike
    x[:, 0] = np.round(x[:, 0] / 3.0) * 3.0
    spikes = rng.random(len(x)) < 0.01
    x[spikes, 0] += rng.choice([-30.0, 30.0], int(spikes.sum()))
    x[800:, 5] += 1.5  # 1.5 standard deviations on one of eight channels
    alarm = _alarms(x)  # index 0 is row 400, the first after calibration
    assert not alarm[:380].any()
    assert alarm[400:500].any()  # found within 100 rows
    assert alarm[500:].all()


def test_wander_that_calibration_showed_is_allowed_to_go_on() -> None:
    rng = np.random.default_rng(2)
    x = _run(rng)
    x[:, 3] += np.cumsum(rng.normal(0.0, 0.15, len(x)))  # a random walk (grid voltage)
    x[:, 6] += np.linspace(0.0, 12.0, len(x))  # a warming fluid: 12 sd over the run
    assert _alarms(x).mean() < 0.05


def test_offline_marks_an_anomaly_from_where_its_score_rose_to_where_it_fell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    x = _run(rng)
    x[700:900, 2] += 2.0
    path = write_csv(tmp_path / "run.csv", x, 3)

    def flagged(*extra: str) -> np.ndarray:
        assert main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", "400", *extra]) == 0
        return parse_output(capsys.readouterr().out.splitlines())[1]

    history, live = flagged(), flagged("--causal")

    def first(a: np.ndarray) -> int:
        return int(np.flatnonzero(a)[0])

    def last(a: np.ndarray) -> int:
        return int(np.flatnonzero(a)[-1])

    assert 700 <= first(history) < first(live) <= 730  # the live alarm waits for its persistence
    assert last(history) < last(live)  # and for its clearing rows
    assert last(history) <= 915
    assert not history[:400].any()


def test_backdate_and_trim_never_cross_into_other_alarms() -> None:
    scores = np.array([0.1, 0.6, 0.7, 1.2, 1.3, 0.5, 0.4, 0.3, 0.2, 0.3, 0.9, 1.5], dtype=np.float64)
    # a live alarm raised at row 4 held through its clearing rows (5-8), another raised at row 11
    alarm = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1], dtype=np.int8)
    back = steady.backdate(scores, alarm, 0.5, 60)
    assert back.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1]
    assert steady.backdate(scores, alarm, 0.5, 1).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1]
    trimmed = steady.trim_cleared(scores, back, 0.8)
    assert trimmed.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]  # the last one is still on


def _cli_alarms(tmp_path: Path, x: np.ndarray, seed: int) -> np.ndarray:
    """The anomaly column `edge-agent models score pump` prints for `x` written as a CSV."""
    path = write_csv(tmp_path / "run.csv", x, seed)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", "400"]) == 0
    return parse_output(buf.getvalue().splitlines())[1]


def test_after_a_valve_closure_the_warmer_fluid_is_the_rigs_new_normal(tmp_path: Path) -> None:
    """An outlet valve closes at row 520 for 4 min and reopens; the closed loop's fluid is 1 °C
    warmer for the rest of the run (seed 424218). The closure is flagged; the rows a minute after
    reopening are not, where the detector before re-basing flagged 46 % of them."""
    onset, duration = 520, 240
    x, _, _ = simulate_run(424218, 1100, "outlet_valve", onset_s=onset, ramp_s=5, duration_s=duration)
    end = onset + duration
    assert np.nanmedian(x[-100:, 5]) - np.nanmedian(x[:400, 5]) > 0.5  # the fluid stayed warmer
    alarm = _cli_alarms(tmp_path, x, 424218)
    assert alarm[onset:end].mean() > 0.9
    assert not alarm[end + 60 :].any()


def test_re_basing_waits_for_the_channels_that_raised_the_alarm_to_come_back() -> None:
    """A shift that never ends keeps its alarm; one that ends leaves a displaced second channel
    (an integrator, above the hysteresis level but never above the alarm level) that no longer
    counts once the first is back. A second channel that itself passed the alarm level and stays
    there is part of the event: the alarm stays."""
    rng = np.random.default_rng(3)
    x = _run(rng)
    x[600:, 2] += 4.0  # a shift to the end of the run
    x[620:, 4] += 3.0  # and a channel that follows it
    _, alarm = steady.detect(steady.fit(x[:400]), x, 400)
    assert alarm[620:].all()
    y = _run(rng)
    y[600:800, 2] += 4.0  # the event ends at row 800...
    z = y.copy()
    y[620:, 4] += 1.2  # ...the second channel stays where it went
    model = steady.fit(y[:400])
    follower = model.channel_scores(y)[:, 4]
    assert follower[620:800].max() < 1.0  # never above the alarm level...
    assert np.median(follower[900:]) > 0.8  # ...but above the hysteresis level: it holds an alarm
    _, alarm = steady.detect(model, y, 400)
    assert alarm[620:790].all()
    assert not alarm[900:].any()
    _, before = steady.detect(steady.fit(y[:400], steady.SteadyParams(rebase=False)), y, 400)
    assert before[900:].mean() > 0.5  # without re-basing the displaced channel holds it on and off
    z[620:, 4] += 3.0  # the second channel goes past the alarm level itself and stays there
    _, alarm = steady.detect(steady.fit(z[:400]), z, 400)
    assert alarm[620:].all()


@pytest.mark.parametrize("seed", [5, 6])
def test_a_growing_fault_keeps_an_alarm_a_nuisance_step_raised(seed: int) -> None:
    """A grid-voltage step (channel 0, rows 600-660) raises the alarm while a gradual fault
    (channel 3, from row 590, full after 200 rows, to the end) is still small. When the step is
    over the fault is still growing: the event is not over, nothing is re-based, and the alarm
    stays up to the end of the run (re-basing on the channels that raised the alarm alone dropped
    5 % of these rows)."""
    x = _run(np.random.default_rng(seed))
    x[600:660, 0] += 4.0
    x[590:, 3] += np.minimum(1.0, np.arange(len(x) - 590) / 200) * 4.0
    model = steady.fit(x[:400])
    scores = model.channel_scores(x)
    _, alarm = steady.detect(model, x, 400)
    first = 400 + int(np.argmax(alarm[400:]))
    assert 600 <= first < 640
    assert scores[first, 0] > 1.0 > scores[first, 3]  # raised by the step, not by the fault
    assert scores[700:, 0].max() < 0.8  # the step is over well before the end
    assert alarm[first:].all()


@pytest.mark.parametrize("seed", [424300, 424303])
def test_an_added_mass_on_the_rotor_is_flagged_while_it_is_on(tmp_path: Path, seed: int) -> None:
    """An added mass (1.5x the base vibration once per revolution, on within 5 s at row 550, off
    after 5 min) that lifts the nearer accelerometer's RMS by about a third and the other's by a
    tenth: flagged within 20 s, through the whole experiment, and no longer a minute after the
    mass is off. (Issue 16, fifth pass: the imbalances the CLI misses on the tuning pool lift a
    single accelerometer by less than its own wander over a 20-minute run; docs/pump-anomaly.md.)"""
    onset, duration = 550, 300
    x, _, _ = simulate_run(
        seed, 1100, "imbalance", severity=1.5, onset_s=onset, ramp_s=5, duration_s=duration
    )
    lift = np.nanmedian(x[onset + 10 : onset + duration, :2], axis=0) / np.nanmedian(x[:400, :2], axis=0)
    assert 1.2 < lift.max() < 1.5  # one accelerometer clearly up...
    assert lift.min() < 1.15  # ...the other barely
    alarm = _cli_alarms(tmp_path, x, seed)
    assert not alarm[400:onset].any()
    assert alarm[onset : onset + 20].any()
    assert alarm[onset + 20 : onset + duration].all()
    assert not alarm[onset + duration + 60 :].any()


def test_the_evaluation_set_shares_no_rig_with_the_tuning_pool() -> None:
    """A run's rig is drawn from its seed: an evaluation run whose seed a tuning run also has was
    seen (as a rig) while the detector was tuned. The shipped evaluation set has none, and the
    check finds the overlap that set 760000 had with the tuning seed 710000's normal runs."""
    assert shared_rigs(evaluation_cases()) == []
    overlap = shared_rigs(make_cases(760_000, RIG_FAULTS, per_fault=12, normal=8))
    assert overlap == list(range(760_000, 760_012))
