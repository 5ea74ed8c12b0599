"""A booster pump station's physics on a fixed tick: pure, deterministic for a seed and start time.

Three identical centrifugal pumps in parallel lift water from a suction main into an elevated
tank that supplies a town. Per pump, the affinity laws give the head curve

    H(Q, n) = H0 * (n / n0)**2 - K * Q**2                  (Q per pump, m3/h; H in m)

and the network a system curve H_sys = H_geo + level + R * Q_total**2. The station controller
stages pumps on and off by the flow it needs (demand, corrected towards the level set-point) and
sets one common speed so the pump and system curves meet at that flow. From the operating point
follow pressures (bar), hydraulic power rho*g*Q*H, motor current through pump and motor
efficiency, vibration (grows with speed and with distance from the best-efficiency point, plus
noise) and winding temperature (first order, time constant `THERMAL_TAU_S`).

Later issues add faults (bearing wear, cavitation, a stuck valve): `PumpState.fault` and the
per-pump parameters are where they will hook in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

RHO_G: Final = 1000.0 * 9.81  # N/m3
M_TO_BAR: Final = RHO_G / 1e5  # 1 m of water column in bar (0.0981)
SUPPLY_V: Final = 400.0
POWER_FACTOR: Final = 0.86
MOTOR_EFFICIENCY: Final = 0.93
MAGNETISING_A: Final = 4.0
THERMAL_TAU_S: Final = 900.0
TANK_AREA_M2: Final = 150.0
LEVEL_SETPOINT_M: Final = 4.0
LEVEL_GAIN: Final = 40.0  # extra m3/h asked per metre below the set-point
H_GEO_M: Final = 35.0  # tank floor above the pump station
R_SYSTEM: Final = 11.0 / 240.0**2  # network friction, m per (m3/h)^2
SUCTION_STATIC_BAR: Final = 0.8
R_SUCTION: Final = 0.25 / 240.0**2  # suction main friction, bar per (m3/h)^2
MEAN_DEMAND_M3H: Final = 120.0
SPEED_RAMP_RPM_S: Final = 400.0
MIN_SPEED_RATIO: Final = 0.6


@dataclass(frozen=True, slots=True)
class PumpParams:
    """One pump and its motor; identical by default, separate so faults can change one."""

    h0_m: float = 60.0  # shut-off head at rated speed
    k: float = 15.0 / 120.0**2  # head lost per (m3/h)^2 of flow
    n0_rpm: float = 2950.0
    q_bep_m3h: float = 110.0  # best-efficiency flow at rated speed
    eta_max: float = 0.78
    rated_current_a: float = 45.0
    rated_rise_k: float = 60.0  # winding temperature rise at rated current
    vibration_base_mm_s: float = 1.2


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


def demand_factor(time_of_day_s: float) -> float:
    """Daily demand pattern, mean ~1: night minimum ~0.35 near 03:00, peaks at 07:30 and 19:00."""
    h = (time_of_day_s / 3600.0) % 24.0
    morning = 0.75 * math.exp(-(((h - 7.5) / 1.8) ** 2))
    evening = 0.55 * math.exp(-(((h - 19.0) / 2.2) ** 2))
    night = -0.35 * math.exp(-(((h - 3.0) / 2.5) ** 2))
    return max(0.3, 0.82 + morning + evening + night)


class PumpStation:
    """Advance with `step()`; read `state`. Same seed and start give the same sequence."""

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
        self._n_running = 0
        self._settle()

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

    def step(self, n: int = 1) -> StationState:
        for _ in range(n):
            self._tick()
        return self.state

    def _tick(self) -> None:
        s, dt = self.state, self.tick_s
        s.ticks += 1
        s.elapsed_s += dt
        s.time_of_day_s = (s.time_of_day_s + dt) % 86400.0
        s.demand_m3h = MEAN_DEMAND_M3H * demand_factor(s.time_of_day_s) * (1.0 + self._rng.gauss(0.0, 0.01))
        wanted = max(0.0, s.demand_m3h + LEVEL_GAIN * (LEVEL_SETPOINT_M - s.tank_level_m))
        self._stage(wanted)
        self._update_outputs(self._speed_for(wanted), dt)
        s.tank_level_m += (s.outflow_m3h - s.demand_m3h) / 3600.0 * dt / TANK_AREA_M2
        s.tank_level_m = min(6.0, max(0.5, s.tank_level_m))
        s.totaliser_m3 += s.outflow_m3h * dt / 3600.0

    def _max_flow(self, n_running: int, ratio: float = 1.0) -> float:
        """Total flow where n pumps at speed ratio meet the system curve."""
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
        n_max = len(self.params)
        n = self._n_running
        if n < n_max and wanted > 0.95 * self._max_flow(n):
            n += 1
        elif n > 1 and wanted < 0.80 * self._max_flow(n - 1):
            n -= 1
        n = max(n, 1)  # a booster station keeps one pump on
        for i, pump in enumerate(self.state.pumps):
            on = i < n and not pump.fault
            if on and not pump.running:
                pump.starts += 1
            pump.running = on
        self._n_running = n

    def _speed_for(self, wanted: float) -> float:
        """Common speed (rpm) at which the running pumps deliver `wanted` (affinity laws)."""
        p = self.params[0]
        n = max(1, self._n_running)
        head = self._static_head() + R_SYSTEM * wanted**2 + p.k * (wanted / n) ** 2
        ratio = min(1.0, max(MIN_SPEED_RATIO, math.sqrt(head / p.h0_m)))
        return ratio * p.n0_rpm

    def _update_outputs(self, target_speed: float | None, dt: float) -> None:
        s = self.state
        running = [i for i, pump in enumerate(s.pumps) if pump.running]
        for i in running:
            pump = s.pumps[i]
            target = target_speed if target_speed is not None else pump.speed_rpm
            step = SPEED_RAMP_RPM_S * dt
            pump.speed_rpm += max(-step, min(step, target - pump.speed_rpm))
        for pump in s.pumps:
            if not pump.running:
                pump.speed_rpm = max(0.0, pump.speed_rpm - 3 * SPEED_RAMP_RPM_S * dt)
        # Operating point: running pumps share one speed (they are ramped together).
        p = self.params[0]
        n_run = len(running)
        ratio = s.pumps[running[0]].speed_rpm / p.n0_rpm if running else 0.0
        total = self._max_flow(n_run, ratio)
        s.outflow_m3h = total
        head = self._static_head() + R_SYSTEM * total**2
        suction = SUCTION_STATIC_BAR - R_SUCTION * total**2
        s.header_bar = suction + head * M_TO_BAR
        power_w = 0.0
        for i, pump in enumerate(s.pumps):
            pp = self.params[i]
            pump.suction_bar = suction
            pump.discharge_bar = s.header_bar if n_run else suction
            if pump.running and ratio > 0:
                q = total / n_run
                pump.flow_m3h = q
                pump.current_a, p_el = self._motor(pp, q, head, ratio)
                power_w += p_el
                off_bep = abs(q / (pp.q_bep_m3h * ratio) - 1.0)
                vib = pp.vibration_base_mm_s * ratio**2 + 1.5 * off_bep
                pump.run_s += dt
            else:
                pump.flow_m3h = 0.0
                pump.current_a = 0.0
                vib = 0.0
            pump.vibration_x_mm_s = abs(vib + self._rng.gauss(0.0, 0.04))
            pump.vibration_y_mm_s = abs(0.85 * vib + self._rng.gauss(0.0, 0.04))
            ambient_rise = pp.rated_rise_k * (pump.current_a / pp.rated_current_a) ** 2
            target_c = s.ambient_c + ambient_rise
            pump.winding_temp_c += (target_c - pump.winding_temp_c) * min(1.0, dt / THERMAL_TAU_S)
        s.energy_wh += power_w * dt / 3600.0

    @staticmethod
    def _motor(pp: PumpParams, q: float, head: float, ratio: float) -> tuple[float, float]:
        """Motor current (A) and electrical power (W) for one pump at flow q and head."""
        hydraulic_w = RHO_G * (q / 3600.0) * head
        q_bep = pp.q_bep_m3h * ratio
        eta = max(0.2, pp.eta_max * (1.0 - (q / q_bep - 1.0) ** 2))
        electrical_w = hydraulic_w / eta / MOTOR_EFFICIENCY
        current = MAGNETISING_A + electrical_w / (math.sqrt(3) * SUPPLY_V * POWER_FACTOR)
        return current, electrical_w
