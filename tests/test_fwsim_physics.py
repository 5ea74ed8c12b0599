"""firmware-sim physics and faults: the pump station behaves as a pump station does, and every
injectable fault moves the signals a technician would look at, in the direction they expect."""

from __future__ import annotations

import math

import pytest

from water_edge.sim.faults import Ramp
from water_edge.sim.pumpstation import M_TO_BAR, PumpParams, PumpStation, StationState
from water_edge.sim.registers import POINTS, WRITABLE_BASE, Plant, apply_write

MINUTES_10 = 600


def settled(kind: str | None = None, **kw: object) -> StationState:
    """Pump 1 (always running) after 10 min at 1 s ticks, 08:00, with one fault from t=0."""
    station = PumpStation(3, tick_s=1.0, start_time_of_day_s=8 * 3600)
    if kind is not None:
        station.inject(kind, at_s=0.0, **kw)  # type: ignore[arg-type]
    return station.step(MINUTES_10)


@pytest.fixture(scope="module")
def healthy() -> StationState:
    return settled()


def test_operating_point_lies_on_pump_and_system_curves(healthy: StationState) -> None:
    pp = PumpParams()
    running = [p for p in healthy.pumps if p.running]
    assert len(running) >= 1
    for p in running:
        ratio = p.speed_rpm / pp.n0_rpm
        assert p.head_m == pytest.approx(pp.head(p.flow_m3h, ratio), rel=1e-6)
        assert p.discharge_bar - p.suction_bar == pytest.approx(p.head_m * M_TO_BAR, rel=1e-3)
    # the summed flow is what the outlet meter sees, and the network curve carries it
    assert sum(p.flow_m3h for p in running) == pytest.approx(healthy.outflow_m3h, rel=1e-6)
    static = 35.0 + healthy.tank_level_m
    system_head = static + 11.0 / 240.0**2 * healthy.outflow_m3h**2
    assert running[0].head_m == pytest.approx(system_head, rel=1e-3)


def test_efficiency_peaks_near_best_efficiency_flow_and_affinity_laws_hold() -> None:
    pp = PumpParams()
    flows = [q / 2 for q in range(10, 400)]
    best = max(flows, key=lambda q: pp.efficiency(q, 1.0))
    assert 95 <= best <= 125
    assert pp.efficiency(110, 1.0) == pytest.approx(0.78, abs=0.01)
    # affinity: at 80 % speed, 80 % flow gives 64 % head and ~51 % power
    assert pp.head(0.8 * 100, 0.8) == pytest.approx(0.64 * pp.head(100, 1.0), rel=1e-9)
    assert pp.shaft_kw(0.8 * 100, 0.8) == pytest.approx(0.512 * pp.shaft_kw(100, 1.0), rel=1e-9)


def test_current_rises_with_load_and_temperatures_are_plausible(healthy: StationState) -> None:
    pp = PumpParams()
    assert pp.shaft_kw(120, 1.0) > pp.shaft_kw(60, 1.0) > pp.shaft_kw(0, 1.0) > 0
    p = healthy.pumps[0]
    assert 10 < p.current_a < pp.rated_current_a
    assert healthy.ambient_c < p.bearing_temp_c < p.winding_temp_c < 120
    assert 380 < healthy.supply_v < 420


def test_daily_demand_has_a_night_minimum() -> None:
    night = PumpStation(0, start_time_of_day_s=3 * 3600).state.demand_m3h
    morning = PumpStation(0, start_time_of_day_s=7.5 * 3600).state.demand_m3h
    assert morning > 2.5 * night


def test_closed_outlet_valve_shows_high_head_low_flow(healthy: StationState) -> None:
    s = settled("outlet_valve", pump=1, severity=1.0)
    p, ref = s.pumps[0], healthy.pumps[0]
    assert p.flow_m3h < 2.0
    assert p.discharge_bar > ref.discharge_bar + 0.5  # near shut-off head behind the valve
    assert p.current_a < ref.current_a  # less flow, less power on a radial pump curve
    assert s.pumps[1].flow_m3h > healthy.pumps[1].flow_m3h  # the other pump takes over


def test_bearing_wear_raises_vibration_bearing_temperature_and_a_little_current(
    healthy: StationState,
) -> None:
    s = settled("bearing_wear", pump=1, severity=1.0)
    p, ref = s.pumps[0], healthy.pumps[0]
    assert p.vibration_x_mm_s > 2.5 * ref.vibration_x_mm_s
    assert p.vibration_y_mm_s > 2.5 * ref.vibration_y_mm_s
    assert p.bearing_temp_c > ref.bearing_temp_c + 5
    assert ref.current_a < p.current_a < 1.1 * ref.current_a
    assert p.flow_m3h == pytest.approx(ref.flow_m3h, rel=0.01)


def test_imbalance_raises_one_axis(healthy: StationState) -> None:
    p, ref = settled("imbalance", pump=1, severity=1.0).pumps[0], healthy.pumps[0]
    assert p.vibration_x_mm_s > ref.vibration_x_mm_s + 2.0
    assert p.vibration_x_mm_s - ref.vibration_x_mm_s > 3 * (p.vibration_y_mm_s - ref.vibration_y_mm_s)


def test_cavitation_lowers_suction_and_head_and_makes_flow_noisy(healthy: StationState) -> None:
    station = PumpStation(3, tick_s=1.0, start_time_of_day_s=8 * 3600)
    station.inject("cavitation", pump=1, severity=1.0, at_s=0.0)
    station.step(MINUTES_10)
    flows = [station.step().pumps[0].flow_m3h for _ in range(60)]
    p, ref = station.state.pumps[0], healthy.pumps[0]
    assert p.suction_bar < ref.suction_bar - 0.3
    assert p.head_m < ref.head_m
    assert p.vibration_x_mm_s > 2 * ref.vibration_x_mm_s
    mean = sum(flows) / len(flows)
    spread = math.sqrt(sum((f - mean) ** 2 for f in flows) / len(flows))
    assert spread > 0.01 * mean


def test_partly_closed_inlet_valve_starves_the_pump(healthy: StationState) -> None:
    p, ref = settled("inlet_valve", pump=1, severity=0.8).pumps[0], healthy.pumps[0]
    assert p.suction_bar < ref.suction_bar - 0.3
    assert p.flow_m3h < ref.flow_m3h


def test_downstream_leak_draws_flow_and_lowers_network_pressure(healthy: StationState) -> None:
    s = settled("leak", severity=40.0)
    assert 30 < s.leak_m3h < 50
    assert s.network_bar < healthy.network_bar - 0.1
    assert s.outflow_m3h > healthy.outflow_m3h


def test_supply_sag_lowers_voltage_and_raises_current(healthy: StationState) -> None:
    s = settled("supply_sag", severity=0.1)
    assert s.supply_v < 0.92 * healthy.supply_v
    assert s.pumps[0].current_a > healthy.pumps[0].current_a


def test_fault_ramps_from_onset_to_target() -> None:
    ramp = Ramp(onset_s=60, target=3.0, ramp_s=600, duration_s=1000)
    assert [ramp.at(t) for t in (0, 59.9, 60, 360, 660, 1000, 1060)] == [0, 0, 0, 1.5, 3.0, 3.0, 0]
    station = PumpStation(1, tick_s=1.0)
    station.inject("bearing_wear", pump=2, severity=1.0, at_s=100, ramp_s=100)
    station.step(150)
    assert station.severity("bearing_wear", 2) == pytest.approx(0.5)
    assert station.severity("bearing_wear", 1) == 0


@pytest.mark.parametrize(
    ("kind", "kw", "match"),
    [
        ("bearing_wear", {}, "needs a pump"),
        ("leak", {"pump": 1}, "station fault"),
        ("outlet_valve", {"pump": 1, "severity": 1.5}, "0..1"),
        ("melted", {"pump": 1}, "unknown fault"),
        ("sensor_drift", {}, "with a tag"),
        ("bearing_wear", {"pump": 4}, "pump must be"),
    ],
)
def test_bad_fault_descriptions_are_refused(kind: str, kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PumpStation(0).inject(kind, **kw)  # type: ignore[arg-type]


def test_sensor_faults_change_the_plc_image_not_the_physics() -> None:
    station = PumpStation(4, tick_s=1.0)
    plant = Plant()
    point = {p.name: p for p in POINTS}
    station.inject("sensor_drift", tag="pump1.winding_temp", severity=10.0, at_s=0, ramp_s=100)
    station.inject("sensor_stuck", tag="pump1.flow", at_s=10)
    station.inject("sensor_dropout", tag="pump1.motor_current", at_s=10)
    station.step(50)
    stuck = point["pump1.flow"].value(station.state)
    station.step(50)
    s = station.state
    assert point["pump1.winding_temp"].value(s) == pytest.approx(s.pumps[0].winding_temp_c + 10.0)
    assert point["pump1.winding_temp_x10"].value(s) == pytest.approx(s.pumps[0].winding_temp_c + 10.0)
    assert point["pump1.flow"].value(s) == stuck != s.pumps[0].flow_m3h
    assert math.isnan(float(point["pump1.motor_current"].value(s)))
    assert s.pumps[0].current_a > 0  # the motor still draws current
    plant.update(s)
    unit = plant.units[1]
    assert unit.read("holding", 106, 2) == [0x7FC0, 0]  # NaN float32
    assert unit.read("holding", 117, 1) == [0x7FFF]  # the int16 copy reads 32767, a PLC's fault code


def test_same_seed_and_faults_give_the_same_run() -> None:
    def run() -> StationState:
        station = PumpStation(9, tick_s=1.0)
        station.inject("cavitation", pump=2, severity=0.7, at_s=30, ramp_s=60)
        return station.step(200)

    assert run() == run()


def test_operator_writes_change_the_model() -> None:
    station = PumpStation(2, tick_s=1.0, start_time_of_day_s=8 * 3600)
    plant = Plant()
    plant.on_write = lambda name, raw: apply_write(station, name, raw)
    assert plant.write(1, "holding", WRITABLE_BASE, [300]) is None
    assert station.state.setpoints.level_m == 3.0
    assert plant.write(1, "holding", WRITABLE_BASE, [9999]) == 3  # out of range
    assert plant.write(1, "holding", 100, [1]) == 2  # a measurement is not writable
    assert plant.write(1, "holding", WRITABLE_BASE + 1, [100, 5]) == 2  # runs off the area
    assert plant.write(1, "coil", 10, [0]) is None
    station.step(30)
    assert not station.state.pumps[0].running
    assert any(p.running for p in station.state.pumps[1:])
    plant.update(station.state)
    assert plant.units[1].read("holding", WRITABLE_BASE, 2) == [300, 100]
    assert plant.units[1].read("coil", 10, 3) == [0, 1, 1]


def test_register_map_points_never_overlap() -> None:
    owner: dict[tuple[int, str, int], str] = {}
    for point in POINTS:
        for address in range(point.address, point.address + point.width):
            key = (point.unit_id, point.table, address)
            assert key not in owner, f"{point.name} overlaps {owner[key]}"
            owner[key] = point.name
