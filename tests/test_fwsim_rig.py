"""firmware-sim's circulation test rig: each experiment moves the signals a rig engineer would look
at, in the direction the physics says, and a run is the same for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from water_edge.sim.rig import RIG_FAULTS, RIG_SIGNALS, PumpRig, RigParams, simulate_run

COL = {name: i for i, name in enumerate(RIG_SIGNALS)}


def shift(kind: str | None, severity: float = 0.0) -> dict[str, float]:
    """Relative change of each true signal: 5 min into the fault vs just before it (same rig)."""
    rig = PumpRig(RigParams(), seed=3)
    if kind is not None:
        rig.inject(kind, severity=severity, at_s=300.0)
    rows = []
    for _ in range(600):
        rig.step()
        rows.append(rig.true_row())
    x = np.array(rows)
    before, after = x[250:300].mean(axis=0), x[550:600].mean(axis=0)
    return {name: float(after[i] / before[i] - 1.0) for name, i in COL.items()}


def test_a_closing_outlet_valve_raises_pressure_and_lowers_flow_and_current() -> None:
    d = shift("outlet_valve", 0.6)
    assert d["pressure"] > 0.02
    assert d["flow"] < -0.03
    assert d["motor_current"] < 0


def test_a_throttled_inlet_lowers_pressure_flow_and_current() -> None:
    d = shift("inlet_valve", 0.6)
    assert d["pressure"] < -0.01
    assert d["flow"] < -0.03
    assert d["motor_current"] < 0


def test_cavitation_at_a_throttled_inlet_shakes_the_pump_and_loses_flow() -> None:
    d = shift("cavitation", 0.9)
    assert d["accelerometer_1"] > 0.3
    assert d["flow"] < -0.1
    rig = PumpRig(RigParams(), seed=3)
    rig.inject("cavitation", severity=0.9, at_s=0.0)
    for _ in range(60):
        rig.step()
    assert rig.state.cavitation > 0.5


def test_an_added_mass_shakes_the_pump_and_leaves_the_hydraulics_alone() -> None:
    d = shift("imbalance", 1.0)
    assert d["accelerometer_1"] > 0.1
    assert abs(d["flow"]) < 0.005
    assert abs(d["pressure"]) < 0.005


def test_a_discharge_leak_takes_flow_from_the_meter_and_pressure_while_the_pump_works_harder() -> None:
    d = shift("discharge_leak", 0.2)
    # a fifth of the nominal flow leaks, but the pump, seeing less resistance, delivers more
    assert d["flow"] < -0.02
    assert d["pressure"] < -0.01
    assert d["motor_current"] > 0


def test_a_healthy_run_warms_its_water_and_holds_its_hydraulics() -> None:
    d = shift(None)
    assert d["fluid_temp"] > 0  # all shaft power ends as heat in a closed loop
    assert abs(d["flow"]) < 0.002


def test_runs_are_reproducible_labelled_and_imperfect_like_a_logger() -> None:
    a, labels, _ = simulate_run(5, 900, "outlet_valve", onset_s=500, ramp_s=60, duration_s=200)
    b, _, _ = simulate_run(5, 900, "outlet_valve", onset_s=500, ramp_s=60, duration_s=200)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.nan_to_num(a), np.nan_to_num(b))
    assert a.shape == (900, len(RIG_SIGNALS))
    assert labels[:499].sum() == 0
    assert labels[499:699].all()
    assert labels[699:].sum() == 0
    assert set(RIG_FAULTS) == {"outlet_valve", "inlet_valve", "cavitation", "imbalance", "discharge_leak"}


def test_unknown_experiments_and_impossible_severities_are_refused() -> None:
    rig = PumpRig()
    with pytest.raises(ValueError, match="unknown rig fault"):
        rig.inject("meteor", severity=1.0, at_s=0.0)
    with pytest.raises(ValueError, match="severity must be"):
        rig.inject("outlet_valve", severity=1.5, at_s=0.0)
