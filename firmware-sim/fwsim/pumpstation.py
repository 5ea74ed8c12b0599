"""A booster pump station's physics on a fixed tick: pure, deterministic for a seed and start time.

Three centrifugal pumps in parallel lift water from a suction main into an elevated tank that
supplies a town. Per pump, the affinity laws give the head curve

    H(Q, n) = H0 * (n / n0)**2 * c - (K + Kv) * Q**2        (Q per pump, m3/h; H in m)

(`c` < 1 only while the pump cavitates, `Kv` the loss of its partly closed inlet/outlet valves)
and the network a system curve H_sys = H_geo + level + R * Q_total**2. The operating point is
where the pumps' summed flow at one header head meets the system curve (bisection on the head).
The shaft power follows the usual linear power curve P = P0 (n/n0)**3 + a Q (n/n0)**2, so the
efficiency rho g Q H / P is a result, not an input; motor current follows from electrical power
and the supply voltage. The station controller stages pumps by the flow it needs (demand plus a
correction towards the tank-level set-point) and sets one speed from the nominal curves: it
does not know about faults, so a fault shows in the measurements the way it would on site.

Faults (`fwsim.faults`) are injected with `PumpStation.inject(...)`; their effects are listed in
docs/firmware-sim.md. Sensor faults act on the PLC image (`state.sensors`), not on the physics.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

from water_edge.sim.faults import (
    PUMP_FAULTS,
    SENSOR_MODES,
    STATION_FAULTS,
    Fault,
    Ramp,
    SensorFault,
    SensorFaults,
)

RHO_G: Final = 1000.0 * 9.81  # N/m3
M_TO_BAR: Final = RHO_G / 1e5  # 1 m of water column in bar (0.0981)
SUPPLY_V: Final = 400.0
SUPPLY_IMPEDANCE_OHM: Final = 0.04  # voltage drop per ampere drawn by the station
POWER_FACTOR: Final = 0.86
MOTOR_EFFICIENCY: Final = 0.93
MAGNETISING_A: Final = 4.0
THERMAL_TAU_S: Final = 900.0  # winding
BEARING_TAU_S: Final = 1200.0
TANK_AREA_M2: Final = 150.0
LEVEL_SETPOINT_M: Final = 4.0
LEVEL_GAIN: Final = 40.0  # extra m3/h asked per metre below the set-point
H_GEO_M: Final = 35.0  # tank floor above the pump station
R_SYSTEM: Final = 11.0 / 240.0**2  # network friction, m per (m3/h)^2
SUCTION_STATIC_BAR: Final = 0.8
R_SUCTION: Final = 0.25 / 240.0**2  # suction main friction, bar per (m3/h)^2
DISTRICT_ELEVATION_M: Final = 10.0  # the network pressure point, above the station
R_NETWORK: Final = 8.0 / 240.0**2  # tank to the pressure point, m per (m3/h)^2
NOMINAL_NETWORK_BAR: Final = 2.5  # leak flows are given at this pressure
VALVE_K0: Final = 2.0 / 110.0**2  # a pump valve's loss coefficient scale, m per (m3/h)^2
CAVITATION_SUCTION_BAR: Final = 0.0  # below this suction (gauge) pressure a pump cavitates
MEAN_DEMAND_M3H: Final = 120.0
SPEED_RAMP_RPM_S: Final = 400.0
MIN_SPEED_RATIO: Final = 0.6


@dataclass(frozen=True, slots=True)
class PumpParams:
    """One pump and its motor; identical by default, separate so one can differ."""

    h0_m: float = 60.0  # shut-off head at rated speed
    k: float = 15.0 / 120.0**2  # head lost per (m3/h)^2 of flow
    n0_rpm: float = 2950.0
    q_bep_m3h: float = 110.0  # best-efficiency flow at rated speed (eta 0.78 there)
    p0_kw: float = 8.2  # shaft power at shut-off, rated speed
    power_slope_kw: float = 0.0909  # shaft power added per m3/h at rated speed
    rated_current_a: float = 45.0
    rated_rise_k: float = 60.0  # winding temperature rise at rated current
    bearing_rise_k: float = 15.0  # bearing temperature rise at rated speed, healthy
    vibration_base_mm_s: float = 1.2

    def head(self, q: float, ratio: float) -> float:
        return self.h0_m * ratio**2 - self.k * q**2

    def shaft_kw(self, q: float, ratio: float) -> float:
        return self.p0_kw * ratio**3 + self.power_slope_kw * q * ratio**2

    def efficiency(self, q: float, ratio: float) -> float:
        """Hydraulic efficiency at flow q and speed ratio (0 at shut-off)."""
        if ratio <= 0:
            return 0.0
        hydraulic_kw = RHO_G * (q / 3600.0) * max(0.0, self.head(q, ratio)) / 1000.0
        return hydraulic_kw / self.shaft_kw(q, ratio)


@dataclass(slots=True)
class PumpState:
    """What a PLC measures on one pump (SI-ish units the register map documents)."""

    running: bool = False
    fault: bool = False
    speed_rpm: float = 0.0
    flow_m3h: float = 0.0
    suction_bar: float = SUCTION_STATIC_BAR
    discharge_bar: float = SUCTION_STATIC_BAR
    current_a: float = 0.0
    vibration_x_mm_s: float = 0.0
    vibration_y_mm_s: float = 0.0
    winding_temp_c: float = 18.0
    run_s: float = 0.0
    starts: int = 0
    bearing_temp_c: float = 18.0
    head_m: float = 0.0  # differential head the pump itself makes
    efficiency: float = 0.0  # hydraulic, 0..1
    power_kw: float = 0.0  # electrical
    enabled: bool = True  # operator's enable (writable coil); a disabled pump stays off


@dataclass(slots=True)
class Setpoints:
    """What an operator may change over Modbus (the writable area of the register map)."""

    level_m: float = LEVEL_SETPOINT_M
    max_speed_ratio: float = 1.0


@dataclass(slots=True)
class StationState:
    """The whole station at one tick."""

    ticks: int = 0
    elapsed_s: float = 0.0
    time_of_day_s: float = 0.0
    demand_m3h: float = 0.0
    outflow_m3h: float = 0.0  # pumped into the network, what the outlet flow meter sees
    header_bar: float = SUCTION_STATIC_BAR
    tank_level_m: float = LEVEL_SETPOINT_M
    totaliser_m3: float = 0.0
    energy_wh: float = 0.0
    ambient_c: float = 18.0
    water_temp_c: float = 11.5
    pumps: list[PumpState] = field(default_factory=list)
    supply_v: float = SUPPLY_V
    network_bar: float = NOMINAL_NETWORK_BAR  # at the district pressure point
    leak_m3h: float = 0.0  # ground truth, not in the PLC map
    setpoints: Setpoints = field(default_factory=Setpoints)
    sensors: SensorFaults = field(default_factory=SensorFaults, compare=False, repr=False)


def demand_factor(time_of_day_s: float) -> float:
    """Daily demand pattern, mean ~1: night minimum ~0.35 near 03:00, peaks at 07:30 and 19:00."""
    h = (time_of_day_s / 3600.0) % 24.0
    morning = 0.75 * math.exp(-(((h - 7.5) / 1.8) ** 2))
    evening = 0.55 * math.exp(-(((h - 19.0) / 2.2) ** 2))
    night = -0.35 * math.exp(-(((h - 3.0) / 2.5) ** 2))
    return max(0.3, 0.82 + morning + evening + night)


def valve_k(closure: float) -> float:
    """Extra loss coefficient of a valve closed by `closure` (0 open .. 1 shut)."""
    opening = max(1e-3, 1.0 - closure)
    return VALVE_K0 * (1.0 / opening**2 - 1.0)


class PumpStation:
    """Advance with `step()`; read `state`. Same seed, start and faults give the same sequence."""

    def __init__(
        self,
        seed: int = 0,
        *,
        n_pumps: int = 3,
        tick_s: float = 0.1,
        start_time_of_day_s: float = 6 * 3600.0,
        params: PumpParams | None = None,
    ) -> None:
        if not 2 <= n_pumps <= 3:
            raise ValueError("the station has 2 or 3 pumps")
        self.tick_s = tick_s
        self.params = [params or PumpParams() for _ in range(n_pumps)]
        self._rng = random.Random(seed)  # noqa: S311 - simulation noise, not secrets
        self.state = StationState(
            time_of_day_s=start_time_of_day_s % 86400.0,
            pumps=[PumpState() for _ in range(n_pumps)],
        )
        self.faults: list[Fault] = []
        self._induced_cavitation = [0.0] * n_pumps  # from low suction pressure, last tick
        self._n_running = 0
        self._settle()

    # -- faults ---------------------------------------------------------------------------------

    def inject(
        self,
        kind: str,
        *,
        pump: int | None = None,
        severity: float = 1.0,
        at_s: float | None = None,
        ramp_s: float = 0.0,
        duration_s: float | None = None,
        tag: str | None = None,
    ) -> Fault | SensorFault:
        """Add a fault from `at_s` (model seconds since start; default now), ramping linearly to
        `severity` over `ramp_s`, lasting `duration_s` (default: for ever).

        kind: a pump fault (`bearing_wear`, `cavitation`, `imbalance`, `inlet_valve`,
        `outlet_valve`; needs `pump`, 1-based), a station fault (`leak`: severity in m3/h,
        `supply_sag`: share of the voltage lost) or `sensor_drift|stuck|dropout` (needs `tag`, a
        register-map point name; drift severity is the offset in the tag's units).
        """
        ramp = Ramp(self.state.elapsed_s if at_s is None else at_s, severity, ramp_s, duration_s)
        if kind.startswith("sensor_"):
            mode = kind.removeprefix("sensor_")
            if mode not in SENSOR_MODES or tag is None:
                raise ValueError(f"{kind!r}: sensor faults are sensor_drift|stuck|dropout with a tag")
            sensor = SensorFault(tag, mode, ramp)  # type: ignore[arg-type]
            self.state.sensors.add(sensor)
            return sensor
        if pump is not None and not 1 <= pump <= len(self.params):
            raise ValueError(f"pump must be 1..{len(self.params)}, got {pump}")
        fault = Fault(kind, ramp, pump if kind in PUMP_FAULTS else None)
        if kind in STATION_FAULTS and pump is not None:
            raise ValueError(f"fault {kind!r} is a station fault; it takes no pump")
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()
        self.state.sensors.faults.clear()

    def severity(self, kind: str, pump: int | None = None) -> float:
        """The summed severity of `kind` (on `pump`) now."""
        t = self.state.elapsed_s
        return sum(f.ramp.at(t) for f in self.faults if f.kind == kind and f.pump == pump)

    # -- operator writes ------------------------------------------------------------------------

    def set_pump_enabled(self, pump: int, enabled: bool) -> None:
        self.state.pumps[pump - 1].enabled = enabled

    # -- model ----------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Start in steady operation (pumps at speed, windings warm), as a PLC found running."""
        s = self.state
        s.demand_m3h = MEAN_DEMAND_M3H * demand_factor(s.time_of_day_s)
        for _ in self.params:  # staging adds one pump per call
            self._stage(s.demand_m3h)
        speed = self._speed_for(s.demand_m3h)
        for pump in s.pumps:
            pump.speed_rpm = speed if pump.running else 0.0
            pump.starts = int(pump.running)
        self._update_outputs(target_speed=speed, dt=0.0)
        for i, pump in enumerate(s.pumps):
            pp = self.params[i]
            pump.winding_temp_c = s.ambient_c + pp.rated_rise_k * (pump.current_a / pp.rated_current_a) ** 2
            pump.bearing_temp_c = s.ambient_c + pp.bearing_rise_k * (pump.speed_rpm / pp.n0_rpm) ** 2

    def step(self, n: int = 1) -> StationState:
        for _ in range(n):
            self._tick()
        return self.state

    def _tick(self) -> None:
        s, dt = self.state, self.tick_s
        s.ticks += 1
        s.elapsed_s = s.ticks * dt
        s.sensors.now_s = s.elapsed_s
        s.time_of_day_s = (s.time_of_day_s + dt) % 86400.0
        s.demand_m3h = MEAN_DEMAND_M3H * demand_factor(s.time_of_day_s) * (1.0 + self._rng.gauss(0.0, 0.01))
        leak = self.severity("leak")
        s.leak_m3h = leak * math.sqrt(max(0.0, s.network_bar) / NOMINAL_NETWORK_BAR) if leak else 0.0
        wanted = max(0.0, s.demand_m3h + LEVEL_GAIN * (s.setpoints.level_m - s.tank_level_m))
        self._stage(wanted)
        self._update_outputs(self._speed_for(wanted), dt)
        s.tank_level_m += (s.outflow_m3h - s.demand_m3h - s.leak_m3h) / 3600.0 * dt / TANK_AREA_M2
        s.tank_level_m = min(6.0, max(0.5, s.tank_level_m))
        s.totaliser_m3 += s.outflow_m3h * dt / 3600.0
        drawn = s.demand_m3h + s.leak_m3h
        s.network_bar = (H_GEO_M + s.tank_level_m - DISTRICT_ELEVATION_M - R_NETWORK * drawn**2) * M_TO_BAR

    def _max_flow(self, n_running: int, ratio: float = 1.0) -> float:
        """Total flow where n nominal pumps at speed ratio meet the system curve."""
        if n_running == 0:
            return 0.0
        p = self.params[0]
        head_room = p.h0_m * ratio**2 - self._static_head()
        if head_room <= 0:
            return 0.0
        return math.sqrt(head_room / (p.k / n_running**2 + R_SYSTEM))

    def _static_head(self) -> float:
        return H_GEO_M + self.state.tank_level_m

    def _stage(self, wanted: float) -> None:
        """Pumps on/off with 10 % hysteresis so the station does not chatter."""
        available = [i for i, p in enumerate(self.state.pumps) if not p.fault and p.enabled]
        n_max = len(available)
        n = self._n_running
        if n < n_max and wanted > 0.95 * self._max_flow(n):
            n += 1
        elif n > 1 and wanted < 0.80 * self._max_flow(n - 1):
            n -= 1
        n = min(n_max, max(n, 1))  # a booster station keeps one pump on if it can
        on = set(available[:n])
        for i, pump in enumerate(self.state.pumps):
            if i in on and not pump.running:
                pump.starts += 1
            pump.running = i in on
        self._n_running = n

    def _speed_for(self, wanted: float) -> float:
        """Common speed (rpm) at which nominal running pumps deliver `wanted` (affinity laws)."""
        p = self.params[0]
        n = max(1, self._n_running)
        head = self._static_head() + R_SYSTEM * wanted**2 + p.k * (wanted / n) ** 2
        top = min(1.0, self.state.setpoints.max_speed_ratio)
        ratio = min(top, max(MIN_SPEED_RATIO, math.sqrt(head / p.h0_m)))
        return ratio * p.n0_rpm

    def _operating_point(
        self, ratios: list[float], kv: list[float], c: list[float]
    ) -> tuple[float, list[float]]:
        """Header head (m) and per-pump flows where the pumps meet the system curve."""
        static = self._static_head()
        # (shut-off head, loss coefficient) of each pump
        pumps = [
            (pp.h0_m * r * r * ci, pp.k + kvi)
            for pp, r, ci, kvi in zip(self.params, ratios, c, kv, strict=True)
        ]
        sqrt = math.sqrt

        def pump_flows(head: float, which: list[tuple[float, float]]) -> list[float]:
            return [sqrt((so - head) / loss) if so > head else 0.0 for so, loss in which]

        top = max((so for so, _ in pumps), default=0.0)
        if top <= static:
            return static, [0.0] * len(ratios)
        # The search runs 40 times a tick, a simulated day ~3.5 million times: the pumps that
        # cannot lift above the static head are left out of it (their 0.0 adds nothing to a sum).
        lifting = [(so, loss) for so, loss in pumps if so > static]
        lo, hi = static, top
        for _ in range(40):  # 40 halvings: far below a float32 register's resolution
            mid = 0.5 * (lo + hi)
            if sum(pump_flows(mid, lifting)) > sqrt((mid - static) / R_SYSTEM):
                lo = mid
            else:
                hi = mid
        head = 0.5 * (lo + hi)
        return head, pump_flows(head, pumps)

    def _update_outputs(self, target_speed: float | None, dt: float) -> None:  # noqa: PLR0915 - one physics pass, read top to bottom
        s = self.state
        t = s.elapsed_s
        for pump in s.pumps:
            if pump.running:
                target = target_speed if target_speed is not None else pump.speed_rpm
                step = SPEED_RAMP_RPM_S * dt
                pump.speed_rpm += max(-step, min(step, target - pump.speed_rpm))
            else:
                pump.speed_rpm = max(0.0, pump.speed_rpm - 3 * SPEED_RAMP_RPM_S * dt)
        n = len(s.pumps)
        sev: dict[str, list[float]] = {k: [0.0] * n for k in PUMP_FAULTS}
        for f in self.faults:
            if f.pump is not None:
                sev[f.kind][f.pump - 1] += f.ramp.at(t)
        cav = [min(1.5, a + b) for a, b in zip(sev["cavitation"], self._induced_cavitation, strict=True)]
        ratios = [
            p.speed_rpm / pp.n0_rpm if p.running else 0.0 for p, pp in zip(s.pumps, self.params, strict=True)
        ]
        k_in = [valve_k(min(1.0, x)) for x in sev["inlet_valve"]]
        k_out = [valve_k(min(1.0, x)) for x in sev["outlet_valve"]]
        head_factor = [1.0 - 0.1 * min(1.0, c) for c in cav]  # ~10 % head lost at full cavitation
        head, flows = self._operating_point(
            ratios, [a + b for a, b in zip(k_in, k_out, strict=True)], head_factor
        )
        total = sum(flows)
        s.outflow_m3h = total
        suction_hdr = SUCTION_STATIC_BAR - R_SUCTION * total**2
        s.header_bar = suction_hdr + head * M_TO_BAR
        volts = s.supply_v
        power_w = 0.0
        amps = 0.0
        for i, pump in enumerate(s.pumps):
            pp, r, q = self.params[i], ratios[i], flows[i]
            wear, imb, ci = sev["bearing_wear"][i], sev["imbalance"][i], cav[i]
            noise = self._rng.gauss(0.0, 1.0)
            if r > 0:
                # cavitation: vapour pockets make flow and head unsteady
                q_meas = q * (1.0 + 0.05 * min(1.0, ci) * noise) if ci else q
                pump_head = pp.h0_m * r * r * head_factor[i] - pp.k * q * q
                pump.suction_bar = (
                    suction_hdr - k_in[i] * q * q * M_TO_BAR - 0.45 * min(1.0, sev["cavitation"][i])
                )
                pump.discharge_bar = pump.suction_bar + pump_head * M_TO_BAR * (1.0 + 0.02 * ci * noise)
                pump.flow_m3h = max(0.0, q_meas)
                pump.head_m = pump_head
                shaft_kw = pp.shaft_kw(q, r) * head_factor[i] + 0.04 * wear * pp.p0_kw * r  # friction
                pump.efficiency = RHO_G * (q / 3600.0) * pump_head / 1000.0 / shaft_kw
                p_el = shaft_kw * 1000.0 / MOTOR_EFFICIENCY
                pump.power_kw = p_el / 1000.0
                pump.current_a = MAGNETISING_A + p_el / (math.sqrt(3) * volts * POWER_FACTOR)
                power_w += p_el
                amps += pump.current_a
                off_bep = abs(q / (pp.q_bep_m3h * r) - 1.0)
                vib = (pp.vibration_base_mm_s * r * r + 1.5 * off_bep) * (1.0 + 2.0 * wear)
                broadband = 3.0 * min(1.0, ci) * r * r
                vib_x = vib + broadband * (1.0 + 0.3 * abs(noise)) + 4.0 * imb * r * r
                vib_y = 0.85 * vib + broadband * (1.0 + 0.3 * abs(noise)) + 0.6 * imb * r * r
                pump.run_s += dt
                # first order (5 s): vapour builds and collapses over seconds, and without the lag
                # head loss -> less flow -> more suction -> no cavitation would oscillate per tick
                induced = min(1.0, max(0.0, (CAVITATION_SUCTION_BAR - pump.suction_bar) / 0.4))
                self._induced_cavitation[i] += (induced - self._induced_cavitation[i]) * min(1.0, dt / 5.0)
            else:
                pump.suction_bar = suction_hdr
                pump.discharge_bar = suction_hdr if total == 0 else s.header_bar  # check valve holds
                pump.flow_m3h = pump.current_a = pump.power_kw = pump.efficiency = pump.head_m = 0.0
                vib_x = vib_y = 0.0
                self._induced_cavitation[i] = 0.0
            jitter = 0.04 * (1.0 + wear)
            pump.vibration_x_mm_s = abs(vib_x + self._rng.gauss(0.0, jitter))
            pump.vibration_y_mm_s = abs(vib_y + self._rng.gauss(0.0, jitter))
            rise = pp.rated_rise_k * (pump.current_a / pp.rated_current_a) ** 2
            pump.winding_temp_c += (s.ambient_c + rise - pump.winding_temp_c) * min(1.0, dt / THERMAL_TAU_S)
            bearing_target = s.ambient_c + (pp.bearing_rise_k + 30.0 * wear + 5.0 * imb) * r * r
            pump.bearing_temp_c += (bearing_target - pump.bearing_temp_c) * min(1.0, dt / BEARING_TAU_S)
        s.energy_wh += power_w * dt / 3600.0
        h = s.time_of_day_s / 3600.0
        sag = min(0.3, self.severity("supply_sag"))
        nominal = SUPPLY_V * (1.0 + 0.012 * math.sin(2 * math.pi * (h - 4.0) / 24.0)) * (1.0 - sag)
        s.supply_v = nominal - SUPPLY_IMPEDANCE_OHM * amps + self._rng.gauss(0.0, 0.5)
