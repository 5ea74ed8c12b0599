"""A water circulation test rig: one pump, a tank, inlet and outlet valves, eight signals at 1 Hz.

The rig the short-calibration evaluation stands on (the regime of a pump test bed or a commissioning
run): a single-phase motor drives a small centrifugal pump at a fixed speed; water flows from an
open tank through an inlet valve into the pump, past a pressure transmitter, along the discharge
pipe and its outlet valve through a flow meter back into the tank. Signals, as a rig's logger
writes them once a second: two accelerometers on the pump (RMS, g), motor current (A), supply
voltage (V), discharge pressure (bar), motor body temperature and fluid temperature (thermocouple
in the tank, degC), and volume flow (l/min).

Physics (`PumpRig`, one tick per second, pure and deterministic for a seed):

- pump head `H = H0 - k Q^2` (times a cavitation loss), system `H = (R + K_in + K_out) Q^2` (a
  closed loop has no static lift); a leak on the discharge pipe is a branch to drain between the
  pressure transmitter and the flow meter, so the operating point is solved on the discharge head
  by bisection; the tank level falls with what leaks out;
- valves lose `K0 (1 / (1 - closure)^2 - 1) Q^2`; a throttled inlet lowers the suction head, and
  below the pump's NPSH required it cavitates: head lost, flow and pressure unsteady, broadband
  vibration that comes in bursts;
- shaft power `P0 + a Q` (radial pump); motor current from electrical power and the supply voltage,
  which wanders with the grid, steps when other loads switch and sags with the current drawn;
- motor temperature is first order towards ambient + a rise with current squared (a run starts at a
  random point of the motor's warm-up); all shaft power ends as heat in the water of a closed loop,
  so the fluid temperature creeps up through a run;
- vibration: a base level per accelerometer, more away from the best-efficiency flow, an added
  mass on the rotor adds a once-per-revolution component (in quadrature, differently on the two
  sensors), cavitation adds broadband.

What makes real rig data hard is laid on top per run (`RigSensors`): slow wander of every signal
(Ornstein-Uhlenbeck, seconds to minutes), per-second estimation noise, coarse quantisation (a
pressure transmitter read in steps close to its noise), rare spikes and missing cells. Ranges are
drawn per run, so no two runs (or rigs) look alike. Faults (`RIG_FAULTS`) are the experiments a rig
runs: partial closure of the outlet or inlet valve, cavitation at a throttled inlet, imbalance from
an added mass, a leak on the discharge pipe; abrupt or gradual (`faults.Ramp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from water_edge.sim.faults import Ramp

RigFaultKind = Literal["outlet_valve", "inlet_valve", "cavitation", "imbalance", "discharge_leak"]
RIG_FAULTS: Final[tuple[str, ...]] = get_args(RigFaultKind)
RIG_SIGNALS: Final[tuple[str, ...]] = (
    "accelerometer_1",
    "accelerometer_2",
    "motor_current",
    "pressure",
    "motor_temp",
    "fluid_temp",
    "voltage",
    "flow",
)
RIG_UNITS: Final[dict[str, str]] = {
    "accelerometer_1": "g",
    "accelerometer_2": "g",
    "motor_current": "A",
    "pressure": "bar",
    "motor_temp": "degC",
    "fluid_temp": "degC",
    "voltage": "V",
    "flow": "l/min",
}
# Severity range of each fault kind in a randomised run: valve closure 0..1 (cavitation is the
# inlet valve closed far enough to cavitate), imbalance as the added once-per-revolution vibration
# relative to the base level, a leak as its share of the nominal flow.
RIG_SEVERITY: Final[dict[str, tuple[float, float]]] = {
    "outlet_valve": (0.35, 0.75),
    "inlet_valve": (0.35, 0.7),
    "cavitation": (0.84, 0.93),
    "imbalance": (0.5, 2.0),
    "discharge_leak": (0.06, 0.3),
}

G: Final = 9.81
RHO: Final = 1000.0
BAR_PER_M: Final = RHO * G / 1e5
ATM_HEAD_M: Final = 10.3
VAPOUR_HEAD_M: Final = 0.25
WATER_HEAT_J_PER_KG_K: Final = 4186.0


@dataclass(frozen=True, slots=True)
class RigParams:
    """One rig: pump, pipes, motor and tank. `random(rng)` draws a plausible one."""

    h0_m: float = 22.0  # shut-off head
    q_bep_m3h: float = 2.2  # best-efficiency flow
    q_op_ratio: float = 0.95  # operating flow / best-efficiency flow with both valves open
    valve_k0_share: float = 0.1  # an open valve's loss as a share of the loop's friction
    inlet_loss_m: float = 0.4  # suction-side loss at the operating flow, valves open
    npsh_required_m: float = 2.5  # at the best-efficiency flow (grows with flow squared)
    tank_volume_l: float = 120.0
    tank_level_m: float = 0.8  # water above the pump's inlet
    shaft_kw_shutoff: float = 0.35
    shaft_kw_bep: float = 0.75
    motor_efficiency: float = 0.78
    power_factor: float = 0.85
    magnetising_a: float = 1.2
    supply_v: float = 230.0
    supply_ohm: float = 0.3
    rated_current_a: float = 5.5
    motor_rise_k: float = 45.0  # motor body above ambient at rated current
    motor_tau_s: float = 1500.0
    warm_s: float = 1800.0  # how long the motor had run before the log starts
    heat_loss_w_per_k: float = 12.0  # tank and pipes to the room
    ambient_c: float = 22.0
    vib_base_g: tuple[float, float] = (0.15, 0.2)
    vib_1x_share: tuple[float, float] = (1.0, 0.5)  # how much of an imbalance each sensor sees

    @classmethod
    def random(cls, rng: np.random.Generator) -> RigParams:
        base = float(rng.uniform(0.03, 0.5))
        return cls(
            h0_m=float(rng.uniform(12.0, 40.0)),
            q_bep_m3h=float(rng.uniform(1.2, 5.0)),
            q_op_ratio=float(rng.uniform(0.75, 1.15)),
            valve_k0_share=float(rng.uniform(0.06, 0.15)),
            inlet_loss_m=float(rng.uniform(0.2, 0.8)),
            npsh_required_m=float(rng.uniform(1.5, 3.5)),
            tank_volume_l=float(rng.uniform(60.0, 400.0)),
            tank_level_m=float(rng.uniform(0.4, 1.5)),
            shaft_kw_shutoff=float(rng.uniform(0.15, 0.6)),
            shaft_kw_bep=float(rng.uniform(0.45, 1.5)),
            motor_efficiency=float(rng.uniform(0.65, 0.85)),
            power_factor=float(rng.uniform(0.75, 0.92)),
            magnetising_a=float(rng.uniform(0.5, 2.0)),
            supply_v=float(rng.choice([220.0, 230.0, 240.0])) + float(rng.normal(0.0, 2.0)),
            supply_ohm=float(rng.uniform(0.1, 0.8)),
            rated_current_a=float(rng.uniform(4.0, 12.0)),
            motor_rise_k=float(rng.uniform(25.0, 60.0)),
            motor_tau_s=float(rng.uniform(900.0, 2700.0)),
            warm_s=float(rng.uniform(0.0, 7200.0)),
            heat_loss_w_per_k=float(rng.uniform(4.0, 25.0)),
            ambient_c=float(rng.uniform(16.0, 28.0)),
            vib_base_g=(base, base * float(rng.uniform(0.5, 1.6))),
            vib_1x_share=(float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.15, 0.9))),
        )

    @property
    def k_pump(self) -> float:
        """Head lost per (m3/h)^2: 25 % of the shut-off head at the best-efficiency flow."""
        return 0.25 * self.h0_m / self.q_bep_m3h**2

    @property
    def loop_r(self) -> float:
        """The loop's friction (m per (m3/h)^2), open valves included, that puts the operating
        point at `q_op_ratio` times the best-efficiency flow."""
        q = self.q_op_ratio * self.q_bep_m3h
        return (self.h0_m - self.k_pump * q * q) / (q * q)


@dataclass(slots=True)
class RigState:
    """The rig's true state at one tick (before any sensor)."""

    elapsed_s: float = 0.0
    pump_flow_m3h: float = 0.0
    meter_flow_m3h: float = 0.0  # what passes the flow meter (pump flow minus a leak)
    leak_m3h: float = 0.0
    discharge_bar: float = 0.0
    suction_head_m: float = 0.0
    cavitation: float = 0.0  # 0..1
    shaft_kw: float = 0.0
    current_a: float = 0.0
    voltage_v: float = 0.0
    motor_temp_c: float = 0.0
    fluid_temp_c: float = 0.0
    tank_level_m: float = 0.0
    vib_g: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True, slots=True)
class RigFault:
    kind: str
    ramp: Ramp

    def __post_init__(self) -> None:
        if self.kind not in RIG_FAULTS:
            raise ValueError(f"unknown rig fault {self.kind!r} (known: {', '.join(RIG_FAULTS)})")
        limit = {"outlet_valve": 0.98, "inlet_valve": 0.98, "cavitation": 0.98, "discharge_leak": 0.8}
        top = limit.get(self.kind, 10.0)
        if not 0.0 <= self.ramp.target <= top:
            raise ValueError(f"rig fault {self.kind!r}: severity must be 0..{top}")


def _valve_k(k0: float, closure: float) -> float:
    opening = max(0.02, 1.0 - closure)
    return k0 * (1.0 / opening**2 - 1.0)


@dataclass
class PumpRig:
    """Advance with `step()`; `inject` adds an experiment. Same seed and faults, same run."""

    params: RigParams = field(default_factory=RigParams)
    seed: int = 0
    faults: list[RigFault] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.params
        self._rng = np.random.default_rng(self.seed)
        q = p.q_op_ratio * p.q_bep_m3h
        self._r_in = p.inlet_loss_m / (q * q)
        self._r_loop = max(1e-6, p.loop_r - self._r_in)
        self._k0 = p.valve_k0_share * p.loop_r
        self._leak_c = 0.0  # m3/h per sqrt(m of head), set per tick from the leak severity
        self._nominal_head = p.h0_m - p.k_pump * q * q
        self._nominal_q = q
        self._grid_v = p.supply_v
        self._burst = 0.0
        self.state = RigState(tank_level_m=p.tank_level_m, fluid_temp_c=p.ambient_c + 1.0)
        self._solve(0.0)
        rise = self._motor_target() - p.ambient_c
        self.state.motor_temp_c = p.ambient_c + rise * (1.0 - math.exp(-p.warm_s / p.motor_tau_s))
        # the water has been warming as long as the motor has run
        self.state.fluid_temp_c = p.ambient_c + 0.5 + self._fluid_rate() * min(p.warm_s, 3600.0) * 0.8

    def inject(
        self, kind: str, *, severity: float, at_s: float, ramp_s: float = 0.0, duration_s: float | None = None
    ) -> RigFault:
        fault = RigFault(kind, Ramp(at_s, severity, ramp_s, duration_s))
        self.faults.append(fault)
        return fault

    def severity(self, kind: str, t: float | None = None) -> float:
        at = self.state.elapsed_s if t is None else t
        return sum(f.ramp.at(at) for f in self.faults if f.kind == kind)

    # -- physics ----------------------------------------------------------------------------------

    def _motor_target(self) -> float:
        p = self.params
        return p.ambient_c + p.motor_rise_k * (self.state.current_a / p.rated_current_a) ** 2

    def _fluid_rate(self) -> float:
        p = self.params
        heat_w = self.state.shaft_kw * 1000.0 - p.heat_loss_w_per_k * (self.state.fluid_temp_c - p.ambient_c)
        return heat_w / (p.tank_volume_l * WATER_HEAT_J_PER_KG_K)

    def _solve(self, t: float) -> None:
        p, s = self.params, self.state
        inlet = max(self.severity("inlet_valve", t), self.severity("cavitation", t))
        k_in = self._r_in + _valve_k(self._k0, min(0.98, inlet))
        k_out = self._r_loop + _valve_k(self._k0, min(0.98, self.severity("outlet_valve", t)))
        leak = min(0.8, self.severity("discharge_leak", t))
        # the leak's orifice: that share of the nominal flow at the nominal discharge head
        self._leak_c = leak * self._nominal_q / math.sqrt(max(1e-6, self._nominal_head))
        # cavitation lags the suction head by a few seconds (vapour builds and collapses)
        head_loss = 1.0 - 0.25 * s.cavitation

        def pump_flow(h_d: float) -> float:
            """Pump flow that the pump delivers against discharge head h_d (m)."""
            avail = p.h0_m * head_loss - h_d
            return math.sqrt(max(0.0, avail) / (p.k_pump + k_in))

        def demand(h_d: float) -> float:
            return math.sqrt(max(0.0, h_d) / k_out) + self._leak_c * math.sqrt(max(0.0, h_d))

        lo, hi = 0.0, p.h0_m
        for _ in range(48):
            mid = 0.5 * (lo + hi)
            if pump_flow(mid) > demand(mid):
                lo = mid
            else:
                hi = mid
        h_d = 0.5 * (lo + hi)
        q = pump_flow(h_d)
        if self._burst > 0:  # cavitation makes the delivered flow unsteady
            q *= 1.0 + 0.06 * s.cavitation * float(self._rng.normal())
        s.pump_flow_m3h = q
        s.leak_m3h = self._leak_c * math.sqrt(max(0.0, h_d))
        s.meter_flow_m3h = max(0.0, q - s.leak_m3h)
        s.suction_head_m = s.tank_level_m - k_in * q * q
        s.discharge_bar = (s.suction_head_m + (p.h0_m * head_loss - p.k_pump * q * q)) * BAR_PER_M
        npsh_a = ATM_HEAD_M + s.suction_head_m - VAPOUR_HEAD_M
        npsh_r = p.npsh_required_m * (q / p.q_bep_m3h) ** 2
        induced = min(1.0, max(0.0, (npsh_r + 0.5 - npsh_a) / 1.5))
        s.cavitation += (induced - s.cavitation) * 0.25
        s.shaft_kw = (p.shaft_kw_shutoff + (p.shaft_kw_bep - p.shaft_kw_shutoff) * q / p.q_bep_m3h) * (
            1.0 - 0.15 * s.cavitation
        ) + 0.02 * p.shaft_kw_bep * min(2.0, self.severity("imbalance", t))

    def _electrics(self) -> None:
        p, s = self.params, self.state
        # the grid: slow wander around nominal and now and then a step as other loads switch
        self._grid_v += (p.supply_v - self._grid_v) / 600.0 + float(self._rng.normal(0.0, 0.08))
        if self._rng.random() < 1.0 / 900.0:
            self._grid_v += float(self._rng.choice([-1.0, 1.0]) * self._rng.uniform(0.5, 3.0))
        electrical_w = s.shaft_kw * 1000.0 / p.motor_efficiency
        amps = p.magnetising_a
        for _ in range(3):  # the current sags the voltage it is drawn at
            volts = self._grid_v - p.supply_ohm * amps
            amps = math.hypot(p.magnetising_a, electrical_w / (volts * p.power_factor))
        s.voltage_v = self._grid_v - p.supply_ohm * amps
        s.current_a = amps

    def _vibration(self, t: float) -> None:
        p, s = self.params, self.state
        off = abs(s.pump_flow_m3h / p.q_bep_m3h - 1.0)
        imb = self.severity("imbalance", t)
        # bursts: cavitation comes and goes over seconds
        self._burst = max(0.0, self._burst * 0.7 + s.cavitation * float(self._rng.exponential(1.0)))
        out = []
        for i in range(2):
            base = p.vib_base_g[i] * (1.0 + 0.8 * off * off)
            once = p.vib_base_g[i] * imb * p.vib_1x_share[i]
            broad = p.vib_base_g[i] * 0.8 * s.cavitation * (0.5 + self._burst)
            out.append(math.sqrt(base * base + once * once + broad * broad))
        s.vib_g = (out[0], out[1])

    def step(self) -> RigState:
        s, p = self.state, self.params
        s.elapsed_s += 1.0
        t = s.elapsed_s
        self._solve(t)
        self._electrics()
        self._vibration(t)
        s.motor_temp_c += (self._motor_target() - s.motor_temp_c) / p.motor_tau_s
        s.fluid_temp_c += self._fluid_rate()
        area_m2 = p.tank_volume_l / 1000.0 / p.tank_level_m
        s.tank_level_m = max(0.05, s.tank_level_m - s.leak_m3h / 3600.0 / area_m2)
        return s

    def true_row(self) -> tuple[float, ...]:
        """The eight signals, true values, in `RIG_SIGNALS` order (flow in l/min)."""
        s = self.state
        return (
            s.vib_g[0],
            s.vib_g[1],
            s.current_a,
            s.discharge_bar,
            s.motor_temp_c,
            s.fluid_temp_c,
            s.voltage_v,
            s.meter_flow_m3h * 1000.0 / 60.0,
        )


# -- what a rig's logger writes ---------------------------------------------------------------------

# Per signal: (white noise, slow wander, wander time constant s) as shares of the level, each drawn
# log-uniformly per run between its bounds (from a laboratory transmitter to hobby-grade sensors on
# a home-built rig); temperatures in kelvin instead of shares.
_NOISE: Final[dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]]] = {
    "accelerometer_1": ((0.02, 0.12), (0.01, 0.08), (20.0, 300.0)),
    "accelerometer_2": ((0.02, 0.12), (0.01, 0.08), (20.0, 300.0)),
    "motor_current": ((0.005, 0.08), (0.002, 0.03), (10.0, 200.0)),
    "pressure": ((0.003, 0.05), (0.002, 0.02), (30.0, 600.0)),
    "motor_temp": ((0.02, 0.3), (0.01, 0.2), (60.0, 600.0)),
    "fluid_temp": ((0.01, 0.3), (0.01, 0.15), (60.0, 600.0)),
    "voltage": ((0.0005, 0.01), (0.0, 0.0), (1.0, 1.0)),  # the grid's own wander is physics
    "flow": ((0.003, 0.04), (0.002, 0.02), (20.0, 400.0)),
}
_ABSOLUTE = ("motor_temp", "fluid_temp")


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    if lo <= 0.0:
        return float(rng.uniform(lo, hi))
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass
class RigSensors:
    """Measurement imperfections of one run, drawn from `rng`; `read(true_rows)` applies them."""

    rng: np.random.Generator

    def read(self, true: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        rng = self.rng
        n, m = true.shape
        level = np.asarray(np.abs(np.median(true[: min(n, 300)], axis=0)) + 1e-6, dtype=np.float64)
        out = true.copy()
        for j, name in enumerate(RIG_SIGNALS):
            (w_lo, w_hi), (d_lo, d_hi), (t_lo, t_hi) = _NOISE[name]
            unit = 1.0 if name in _ABSOLUTE else level[j]
            white = _loguniform(rng, w_lo, w_hi) * unit
            wander = _loguniform(rng, d_lo, d_hi) * unit if d_hi > 0 else 0.0
            tau = _loguniform(rng, t_lo, t_hi)
            if wander > 0:
                a = math.exp(-1.0 / tau)
                e = np.asarray(rng.normal(0.0, wander * math.sqrt(1.0 - a * a), n), dtype=np.float64)
                e[0] = float(rng.normal(0.0, wander))
                out[:, j] += lfilter([1.0], [1.0, -a], e)  # Ornstein-Uhlenbeck, started stationary
            out[:, j] += rng.normal(0.0, white, n)
            # resolution: from well below the noise to coarser than it (a transmitter read in steps)
            step = white * _loguniform(rng, 0.05, 6.0) if rng.random() < 0.6 else white * 0.05
            digits = 10 ** math.floor(math.log10(max(step, 1e-9)))
            step = max(digits, round(step / digits) * digits)
            out[:, j] = np.round(out[:, j] / step) * step
            spikes = np.asarray(rng.random(n) < _loguniform(rng, 1e-4, 1e-2))
            k = int(spikes.sum())
            out[spikes, j] += rng.choice([-1.0, 1.0], k) * white * rng.uniform(4.0, 12.0, k)
        missing = rng.random((n, m)) < float(rng.uniform(0.0, 0.01))
        out[missing] = np.nan
        return out


def simulate_run(
    seed: int,
    rows: int,
    fault: str | None = None,
    *,
    severity: float | None = None,
    onset_s: float = 0.0,
    ramp_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8], RigParams]:
    """One randomised rig run: (rows x 8 logged signals, 0/1 label per row, the rig's params).

    The label is 1 from the fault's onset while it lasts (the experiment as the operator logs it,
    ramp included)."""
    rng = np.random.default_rng(seed)
    params = RigParams.random(rng)
    rig = PumpRig(params, seed=int(rng.integers(2**31)))
    labels = np.zeros(rows, dtype=np.int8)
    if fault is not None:
        lo, hi = RIG_SEVERITY[fault]
        sev = float(rng.uniform(lo, hi)) if severity is None else severity
        f = rig.inject(fault, severity=sev, at_s=onset_s, ramp_s=ramp_s, duration_s=duration_s)
        for i in range(rows):
            labels[i] = 1 if f.ramp.active(float(i + 1)) else 0
    true = np.empty((rows, len(RIG_SIGNALS)))
    for i in range(rows):
        rig.step()
        true[i] = rig.true_row()
    return RigSensors(rng).read(true), labels, params
