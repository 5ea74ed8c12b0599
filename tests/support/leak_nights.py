"""Quiet nights of a plastic main as check statistics, for the leak judgement's tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.judge import JudgeParams

NB = features.N_BANDS


def quiet_check(night: str, index: int, p10: np.ndarray, lower: float | np.ndarray = 0.5) -> CheckStats:
    """A check whose 1 s levels spread `lower` dB (per band, or all alike) above the 10th percentile
    per step: steady at 0.5 dB, wandering like rain at several dB."""
    return CheckStats(night, index, 0, 1800, p10, p10 + lower, p10 + 2 * lower, None, np.full(NB, 6.0))


def plastic_baseline() -> tuple[Baseline, np.ndarray]:
    """Seven quiet nights of a PVC main, two checks each: night demand moves its flow noise
    (28-164 Hz, strongest at 50-90 Hz) by -2..+2 dB from night to night, traffic rumble its lowest
    bands. Returns the baseline and the flow-noise pattern."""
    rng = np.random.default_rng(5)
    level = -60.0 + np.linspace(10, -10, NB)
    flow = np.zeros(NB)
    flow[3:10] = [0.4, 0.8, 1.0, 1.0, 0.8, 0.6, 0.3]
    traffic = np.zeros(NB)
    traffic[0:3] = [1.0, 0.7, 0.3]
    checks = [
        quiet_check(f"2025-01-0{n + 1}", c, level + f * flow + t * traffic + rng.normal(0, 0.3, NB))
        for n in range(7)
        for c, (f, t) in enumerate([(rng.uniform(-2, 2), rng.normal(0, 1.5))] * 2)
    ]
    return Baseline.learn(checks, sensor="hyd.P", material="pvc"), flow


def level_threshold(base: Baseline, params: JudgeParams) -> np.ndarray:
    """Each band's level threshold in dB, as the judgement sets it."""
    out: np.ndarray = np.maximum(params.min_rise_db, params.k_sigma * base.level_sigma)
    return out


def rained_out_check(
    base: Baseline, night: str, index: int, bands: list[int], times: float, params: JudgeParams
) -> CheckStats:
    """Rain from 68 Hz up (20 dB louder, gusting: a disturbed check); `bands` below it risen steady
    by `times` their level threshold (a leak's hiss, or the rain's skirt)."""
    p10 = base.level.copy()
    lower = np.full(NB, 0.5)
    p10[6:] += 20.0
    lower[6:] = 6.0
    p10[bands] += times * level_threshold(base, params)[bands]
    return dataclasses.replace(quiet_check(night, index, p10, lower), clf_logit=12.0)
