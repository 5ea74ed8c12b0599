"""Labelled pump data from firmware-sim's station physics and its injected faults, made realistic.

One scenario = pump 1 of a `fwsim.pumpstation.PumpStation` sampled every second, with a randomised
pump (curve, vibration level, an unseen "size" that scales current, flow and vibration), one fault
from `fwsim.faults` injected with `PumpStation.inject` (bearing wear, cavitation, imbalance, inlet
or outlet valve closure, sensor drift or stuck), and the imperfections of a real site laid on top:
measurement noise, PLC quantisation, missing values. Needs only numpy and fwsim (no TensorFlow):
training, evaluation, tests and the benchmark share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.models.pump.config import ROLES
from water_edge.sim.pumpstation import PumpParams, PumpStation, StationState

SIGNALS: tuple[str, ...] = ROLES  # every role a pump can be configured with, in its order
FAULTS: tuple[str, ...] = (
    "bearing_wear",
    "cavitation",
    "imbalance",
    "outlet_valve",
    "inlet_valve",
    "sensor_drift",
    "sensor_stuck",
)
# Severity range drawn per scenario (fwsim units: wear/imbalance 0..1, valve closure 0..1,
# drift in the tag's units).
SEVERITY: dict[str, tuple[float, float]] = {
    "bearing_wear": (0.15, 0.5),
    "cavitation": (0.4, 1.0),
    "imbalance": (0.1, 0.4),
    "outlet_valve": (0.35, 0.7),
    "inlet_valve": (0.4, 0.75),
    "sensor_drift": (0.15, 0.4),
    "sensor_stuck": (1.0, 1.0),
}
SENSOR_TAG: dict[str, str] = {"sensor_drift": "discharge_pressure", "sensor_stuck": "flow"}
# Resolution a PLC typically scales these to (register tenths / hundredths).
_QUANTUM = np.array([0.1, 0.5, 0.01, 0.01, 0.1, 0.01, 0.01, 0.1, 0.1, 1.0])


class SteadyStation(PumpStation):
    """The station with its clock stopped: demand (and so staging and speed) stays at one point,
    like a pump on a fixed duty or a test bed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._frozen_s = self.state.time_of_day_s

    def _tick(self) -> None:
        self.state.time_of_day_s = self._frozen_s - self.tick_s
        super()._tick()


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    hours: float = 3.0
    fault: str | None = None
    onset_s: float = 7200.0
    duration_s: float = 3600.0
    ramp_s: float = 300.0
    severity: float | None = None  # drawn from SEVERITY if None
    start_hour: float | None = None  # time of day at start; random if None
    missing: float = 0.01  # fraction of cells lost
    noise: float = 1.0  # multiplies the per-channel measurement noise
    steady: bool = False  # demand frozen at the start time (one duty point) instead of the daily cycle


def simulate(sc: Scenario) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """(rows of the 10 `SIGNALS`, 0/1 fault label per row) at one row per second."""
    rng = np.random.default_rng(sc.seed)
    size = float(rng.uniform(0.5, 2.0))
    params = PumpParams(
        h0_m=float(rng.uniform(57.0, 64.0)),
        q_bep_m3h=float(rng.uniform(90.0, 130.0)),
        vibration_base_mm_s=float(rng.uniform(0.8, 2.0)),
        bearing_rise_k=float(rng.uniform(10.0, 20.0)),
    )
    start = sc.start_hour if sc.start_hour is not None else float(rng.uniform(0, 24))
    kind = SteadyStation if sc.steady else PumpStation
    station = kind(seed=sc.seed, tick_s=1.0, start_time_of_day_s=start * 3600.0, params=params)
    n = int(sc.hours * 3600)
    labels = np.zeros(n, dtype=np.int8)
    if sc.fault is not None:
        if sc.fault not in FAULTS:
            raise ValueError(f"unknown fault {sc.fault!r}; known: {', '.join(FAULTS)}")
        lo_s, hi_s = SEVERITY[sc.fault]
        sev = sc.severity if sc.severity is not None else float(rng.uniform(lo_s, hi_s))
        tag = SENSOR_TAG.get(sc.fault)
        station.inject(
            sc.fault,
            pump=None if tag else 1,
            severity=sev,
            at_s=sc.onset_s,
            ramp_s=sc.ramp_s,
            duration_s=sc.duration_s,
            tag=f"pump1.{tag}" if tag else None,
        )
        labels[int(sc.onset_s) : min(n, int(sc.onset_s + sc.duration_s))] = 1
    sensors = station.state.sensors
    raw = np.empty((n, len(SIGNALS)))
    for i in range(n):
        s = station.step()
        sensors.now_s = s.elapsed_s
        values = signal_values(s)
        raw[i] = [float(sensors.apply(f"pump1.{name}", v)) for name, v in zip(SIGNALS, values, strict=True)]
    raw *= np.array([size, 1, 1, 1, size, size**0.5, size**0.5, 1, 1, 1])
    spread = np.maximum(np.nanstd(raw[: min(n, 3600)], axis=0), 0.02 * np.abs(np.nanmean(raw, axis=0)) + 1e-3)
    noisy = raw + rng.normal(0, 1, raw.shape) * spread * rng.uniform(0.02, 0.1, len(SIGNALS)) * sc.noise
    noisy = np.round(noisy / _QUANTUM) * _QUANTUM
    if sc.fault == "sensor_stuck" and sc.onset_s < n:
        # A frozen register holds the reading it last took, noise and all: the transmitter's noise
        # and the PLC's quantisation come before it (as pump_eval_short has it), not on top.
        col, at = SIGNALS.index(SENSOR_TAG["sensor_stuck"]), int(sc.onset_s)
        noisy[at : min(n, int(sc.onset_s + sc.duration_s)), col] = noisy[at, col]
    noisy[rng.random(noisy.shape) < sc.missing] = np.nan
    return noisy, labels


def signal_values(state: StationState) -> tuple[float, ...]:
    """The first pump's `SIGNALS` in one station step."""
    p = state.pumps[0]
    return (
        p.current_a,
        state.supply_v,
        p.suction_bar,
        p.discharge_bar,
        p.flow_m3h,
        p.vibration_x_mm_s,
        p.vibration_y_mm_s,
        p.winding_temp_c,
        p.bearing_temp_c,
        p.speed_rpm,
    )
