"""Turns simulated pump scenarios into the scorer's training windows (numpy only, no TensorFlow).

For each scenario a random subset of the signals is kept (sites map what they have), the pump is
calibrated on its first day of normal duty exactly as a gateway would (`auto_hours = 24`), and
every later row becomes one (channels, window, 2) input with the scenario's fault label.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from water_edge.models.pump.detector import calibrate, residuals, windows, zscores
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

WINDOW = 32
MAX_CHANNELS = len(SIGNALS)
CALIBRATION_S = 24 * 3600


class ZeroScorer:
    """Stands in for the scorer when only normalisation and relations are needed."""

    def invoke(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return np.zeros((np.asarray(x).shape[0], 1), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Case:
    scenario: Scenario
    calib_rows: int
    channels: tuple[int, ...]


def random_cases(
    seed: int, count: int, faults: Iterable[str], after_hours: float = 2.0, normal_share: float = 0.25
) -> list[Case]:
    rng = np.random.default_rng(seed)
    faults = list(faults)
    hours = CALIBRATION_S / 3600 + after_hours
    cases = []
    for i in range(count):
        fault = None if rng.random() < normal_share else faults[i % len(faults)]
        onset = CALIBRATION_S + int(rng.integers(300, 1800))
        n_keep = int(rng.integers(3, MAX_CHANNELS + 1))
        channels = tuple(sorted(rng.choice(MAX_CHANNELS, n_keep, replace=False).tolist()))
        cases.append(
            Case(
                Scenario(
                    seed=seed * 1000 + i,
                    hours=hours,
                    fault=fault,
                    onset_s=onset,
                    duration_s=hours * 3600 - onset,
                    ramp_s=float(rng.uniform(0, 600)),
                    noise=float(rng.uniform(0.5, 2.0)),
                    missing=float(rng.uniform(0, 0.03)),
                ),
                CALIBRATION_S,
                channels,
            )
        )
    return cases


def case_windows(case: Case, stride: int = 5) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    """(rows, MAX_CHANNELS, WINDOW, 2) inputs after calibration, absent channels all zeros, and labels."""
    x, labels = simulate(case.scenario)
    x = x[:, list(case.channels)]
    names = [SIGNALS[c] for c in case.channels]
    cal = calibrate(x[: case.calib_rows], names, ZeroScorer(), window=WINDOW, model_version="train")
    keep = [names.index(c) for c in cal.channels]
    z = zscores(x[:, keep], cal)
    r = residuals(
        z, np.asarray(cal.coef), np.asarray(cal.residual_scale), np.asarray(cal.z_low), np.asarray(cal.z_high)
    )
    w = windows(z, r, WINDOW)[case.calib_rows :: stride]
    out = np.zeros((len(w), MAX_CHANNELS, WINDOW, 2), dtype=np.float32)
    out[:, : w.shape[1]] = w
    return out, labels[case.calib_rows :: stride]


def _case_windows(case: Case) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    return case_windows(case)


def build(
    cases: list[Case], jobs: int = 2
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    """Inputs, channel masks (1 = real channel) and labels for all cases (`jobs` processes)."""
    xs, masks, ys = [], [], []
    with ProcessPoolExecutor(jobs) as pool:
        for w, y in pool.map(_case_windows, cases):
            n_real = int(np.any(w != 0, axis=(0, 2, 3)).sum())
            mask = np.zeros((len(w), MAX_CHANNELS), dtype=np.float32)
            mask[:, :n_real] = 1.0
            xs.append(w)
            masks.append(mask)
            ys.append(y)
    return np.concatenate(xs), np.concatenate(masks), np.concatenate(ys)
