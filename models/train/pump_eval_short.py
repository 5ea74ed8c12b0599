"""Short, steady-state evaluation of the offline CSV scorer: the regime of a pump test bed.

    .venv/bin/python -m water_edge.models.train.pump_eval_short [--set tuning|evaluation|both]
        [--per-fault 10] [--normal 20] [--json FILE]

Every case is one file of ~20 min at 1 s from the firmware-sim pump station held at a steady
operating point (time of day frozen, so demand and speed only jitter), from a pump whose size lies
outside the range the scorer was trained on (x0.3..0.5 or x2..3), with 6-10 of the 10 signals (always
both vibration axes and motor current) under random column names in random order, realistic
measurement noise (per channel, relative to its level; vibration noisier), PLC quantisation,
occasional missing cells, and in a third of the files a slow temperature warm-up. The first
`CALIB_ROWS` (400) rows are normal; a fault then starts 1-7 min later and lasts 4-12 min (to the end
of the file at most), ramping in over 0-2 min. Sensor faults act on a random signal of the file,
after the measurement noise: `sensor_drift` adds an offset ramping to 3-8 normal spreads,
`sensor_stuck` repeats the value read at the onset (a frozen PLC register).

Each file is written as a CSV (comma, or semicolon with decimal commas) and scored by
`edge-agent models score pump --csv FILE --calibrate-rows 400` itself (`agent.cli.main`), or, for a
parameter sweep, by `models.pump.offline.score_csv` with the parameters given. Reported point-wise
over the rows after calibration: precision, recall, F1, false alarm rate (share of normal rows
flagged), missed alarm rate (faulty files with no alarm during the fault) and median detection delay;
per fault type, for the held-out types and overall.

Seeds: the tuning set (`TUNING_SEED`) holds only `TUNING_FAULTS` and normal files; the evaluation set
(`EVAL_SEED`) holds every fault type. `HELD_OUT` (imbalance, inlet valve, stuck sensor) never appears
in the tuning set, the same split the scorer was trained with.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.models.train import pump_eval
from water_edge.models.train.pump_sim import FAULTS, SEVERITY, SIGNALS, SteadyStation, signal_values
from water_edge.sim.pumpstation import PumpParams

CALIB_ROWS = 400
ROWS = 1200
TUNING_SEED = 610_000
EVAL_SEED = 620_000
TUNING_FAULTS: tuple[str, ...] = ("bearing_wear", "cavitation", "outlet_valve", "sensor_drift")
HELD_OUT: tuple[str, ...] = tuple(f for f in FAULTS if f not in TUNING_FAULTS)
ALWAYS = ("motor_current", "vibration_x", "vibration_y")
PUMP_FAULTS = ("bearing_wear", "cavitation", "imbalance", "outlet_valve", "inlet_valve")
# Measurement noise, as a share of the signal's level (log-uniform between the bounds).
_NOISE_REL: dict[str, tuple[float, float]] = {
    "motor_current": (0.003, 0.02),
    "voltage": (0.001, 0.005),
    "suction_pressure": (0.005, 0.03),
    "discharge_pressure": (0.002, 0.01),
    "flow": (0.003, 0.02),
    "vibration_x": (0.01, 0.06),
    "vibration_y": (0.01, 0.06),
    "winding_temp": (0.001, 0.004),
    "bearing_temp": (0.001, 0.004),
    "speed": (0.0005, 0.002),
}
_QUANTUM = dict(zip(SIGNALS, (0.1, 0.5, 0.01, 0.01, 0.1, 0.01, 0.01, 0.1, 0.1, 1.0), strict=True))

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class ShortCase:
    seed: int
    fault: str | None
    onset: int = ROWS  # row of the fault onset (ROWS: none)
    duration: int = 0
    ramp: int = 0


def make_cases(seed: int, faults: Sequence[str], per_fault: int, normal: int) -> list[ShortCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for k, fault in enumerate(faults):
        for j in range(per_fault):
            onset = CALIB_ROWS + int(rng.integers(60, 420))
            duration = min(ROWS - onset, int(rng.integers(240, 720)))
            cases.append(ShortCase(seed + 1000 * k + j, fault, onset, duration, int(rng.integers(0, 120))))
    cases += [ShortCase(seed + 50_000 + j, None) for j in range(normal)]
    return cases


def simulate_short(case: ShortCase) -> tuple[F64, I8, list[str]]:
    """(rows x chosen signals, 0/1 label per row, the signals' roles) for one case."""
    rng = np.random.default_rng(case.seed)
    size = float(rng.uniform(0.3, 0.5) if rng.random() < 0.5 else rng.uniform(2.0, 3.0))
    params = PumpParams(
        h0_m=float(rng.uniform(57.0, 64.0)),
        q_bep_m3h=float(rng.uniform(90.0, 130.0)),
        vibration_base_mm_s=float(rng.uniform(0.8, 2.0)),
        bearing_rise_k=float(rng.uniform(10.0, 20.0)),
    )
    station = SteadyStation(
        seed=case.seed, tick_s=1.0, start_time_of_day_s=float(rng.uniform(0, 86400)), params=params
    )
    labels = np.zeros(ROWS, dtype=np.int8)
    sev = 0.0
    if case.fault is not None:
        lo, hi = SEVERITY[case.fault]
        sev = float(rng.uniform(lo, hi))
        if case.fault in PUMP_FAULTS:
            station.inject(
                case.fault,
                pump=1,
                severity=sev,
                at_s=float(case.onset),
                ramp_s=float(case.ramp),
                duration_s=float(case.duration),
            )
        labels[case.onset : case.onset + case.duration] = 1
    raw = np.empty((ROWS, len(SIGNALS)))
    for i in range(ROWS):
        raw[i] = signal_values(station.step())
    raw *= np.array([size, 1, 1, 1, size, size**0.5, size**0.5, 1, 1, 1])
    level = np.abs(raw[:CALIB_ROWS].mean(axis=0)) + 1e-3
    rel = np.array([np.exp(rng.uniform(np.log(a), np.log(b))) for a, b in (_NOISE_REL[s] for s in SIGNALS)])
    x = raw + rng.normal(0.0, 1.0, raw.shape) * level * rel
    if rng.random() < 1 / 3:  # a test bed warming up: temperatures creep during the file
        ramp = np.linspace(0.0, 1.0, ROWS)
        for name in ("winding_temp", "bearing_temp"):
            x[:, SIGNALS.index(name)] += float(rng.uniform(0.3, 2.0)) * ramp
    n_keep = int(rng.integers(6, len(SIGNALS) + 1))
    others = [s for s in SIGNALS if s not in ALWAYS]
    chosen = list(ALWAYS) + [str(s) for s in rng.choice(others, n_keep - len(ALWAYS), replace=False)]
    order = [SIGNALS.index(s) for s in rng.permutation(chosen)]
    roles = [SIGNALS[i] for i in order]
    if case.fault in ("sensor_drift", "sensor_stuck"):
        c = SIGNALS.index(roles[int(rng.integers(len(roles)))])
        span = slice(case.onset, case.onset + case.duration)
        if case.fault == "sensor_drift":
            spread = float(np.std(x[:CALIB_ROWS, c]))
            k = np.arange(case.duration, dtype=np.float64)
            x[span, c] += float(rng.uniform(3.0, 8.0)) * spread * np.minimum(1.0, (k + 1) / max(1, case.ramp))
        else:
            x[span, c] = x[case.onset, c]
    quantum = np.array([_QUANTUM[s] for s in SIGNALS])
    x = np.round(x / quantum) * quantum
    x = x[:, order]
    x[rng.random(x.shape) < float(rng.uniform(0.0, 0.02))] = np.nan
    return x, labels, roles


def write_csv(path: Path, x: F64, seed: int) -> Path:
    """The file an engineer would export: random column names, ',' or ';' (decimal commas)."""
    rng = np.random.default_rng(seed + 7)
    semicolon = bool(rng.random() < 0.5)
    sep = ";" if semicolon else ","
    prefix = ["sig", "ch", "tag", "S"]
    names = [f"{rng.choice(prefix)}{int(rng.integers(1, 999))}_{j}" for j in range(x.shape[1])]
    lines = [sep.join(["datetime", *names])]
    for i, row in enumerate(x):
        cells = ["" if np.isnan(v) else f"{v:.4f}" for v in row]
        if semicolon:
            cells = [c.replace(".", ",") for c in cells]
        lines.append(sep.join([f"2024-05-01 08:{i // 60:02d}:{i % 60:02d}" if i < 3600 else str(i), *cells]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(path: Path, calib: int = CALIB_ROWS) -> tuple[F64, I8]:
    """Scores and anomaly flags as `edge-agent models score pump` prints them."""
    from water_edge.agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", str(calib)])
    if code != 0:
        raise RuntimeError(f"CLI exit {code}: {err.getvalue().strip()}")
    return parse_output(out.getvalue().splitlines())


def parse_output(lines: Sequence[str]) -> tuple[F64, I8]:
    body = [line.split(",") for line in lines[1:]]
    return (np.array([float(r[1]) for r in body]), np.array([int(r[2]) for r in body], dtype=np.int8))


Scorer = Callable[[Path], tuple[F64, I8]]


@dataclass
class Result:
    fault: str | None
    labels: I8  # after calibration
    alarm: I8
    scores: F64  # every row
    onset: int  # after calibration


def run_cases(cases: Sequence[ShortCase], scorer: Scorer = run_cli) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            x, labels, _ = simulate_short(case)
            path = write_csv(Path(tmp) / f"case_{case.seed}.csv", x, case.seed)
            scores, alarm = scorer(path)
            if len(alarm) != ROWS:
                raise RuntimeError(f"{len(alarm)} output rows for {ROWS} input rows")
            results.append(
                Result(case.fault, labels[CALIB_ROWS:], alarm[CALIB_ROWS:], scores, case.onset - CALIB_ROWS)
            )
    return results


def summarise(results: Sequence[Result]) -> dict[str, float]:
    out = pump_eval.summarise(results)
    del out["scenarios"]
    normal_files = [r for r in results if not r.fault]
    out["normal_files_alarmed"] = (
        round(float(np.mean([r.alarm.any() for r in normal_files])), 3) if normal_files else float("nan")
    )
    out["files"] = len(results)
    return out


def report(results: Sequence[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {"per_fault": {}}
    kinds = sorted({r.fault for r in results if r.fault})
    for fault in kinds:
        out["per_fault"][fault] = summarise([r for r in results if r.fault in (fault, None)])
    held = [r for r in results if r.fault in HELD_OUT or r.fault is None]
    if any(r.fault for r in held):
        out["held_out"] = summarise(held)
    out["tuned_types"] = summarise([r for r in results if r.fault not in HELD_OUT])
    out["all"] = summarise(results)
    return out


def tuning_cases(per_fault: int = 10, normal: int = 20) -> list[ShortCase]:
    return make_cases(TUNING_SEED, TUNING_FAULTS, per_fault, normal)


def evaluation_cases(per_fault: int = 10, normal: int = 20) -> list[ShortCase]:
    return make_cases(EVAL_SEED, FAULTS, per_fault, normal)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("tuning", "evaluation", "both"), default="both")
    ap.add_argument("--per-fault", type=int, default=10)
    ap.add_argument("--normal", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    if args.set in ("tuning", "both"):
        out["tuning"] = report(run_cases(tuning_cases(args.per_fault, args.normal)))
    if args.set in ("evaluation", "both"):
        out["evaluation"] = report(run_cases(evaluation_cases(args.per_fault, args.normal)))
    text = json.dumps(out, indent=1)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
