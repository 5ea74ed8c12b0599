"""Short calibrations on a circulation test rig, scored point-wise: the regime of a real pump test bed.

    .venv/bin/python -m water_edge.models.train.pump_eval_rig [--set tuning|evaluation|both]
        [--per-fault 12] [--normal 8] [--json FILE]

Every case is one run of firmware-sim's test rig (`fwsim.rig`: one pump in a closed loop, eight
signals at 1 Hz, a different randomised rig per run with its own slow wander, noise, coarse
quantisation, spikes and missing cells), 1000-1250 rows long. The first `CALIB_ROWS` (400) are
normal; an experiment then starts 20-300 rows later: a partial closure of the outlet or inlet
valve, cavitation at a throttled inlet, an added mass on the rotor, or a leak on the discharge
pipe; abrupt (ramp 0-10 s) or gradual (1-5 min); lasting 150-600 rows or to the end of the run.
The label covers the experiment from its start, ramp included, as an operator logs it.

Every run is written as a CSV (random column names, comma or semicolon) and scored by
`edge-agent models score pump --csv FILE --calibrate-rows 400` itself (`agent.cli.main`), at its
default settings. Reported point-wise over the rows after calibration: F1, precision, recall, false
alarm rate (share of normal rows flagged), missed alarm rate (runs whose fault was never flagged),
median detection delay, and recall in the first minute, per fault type and overall.

Seeds: tuning set `TUNING_SEED` holds only `TUNING_FAULTS` and normal runs; the evaluation set
`EVAL_SEED` holds every fault kind; `HELD_OUT` (inlet valve, cavitation) never appear in tuning.
A run's rig is drawn from its own seed (fault runs `seed + 1000 k + j`, normal runs
`seed + 50000 + j`), so two sets can share rigs; `TUNING_POOL` lists every set decisions were made
on, and the evaluation refuses a set that shares a rig with it (`shared_rigs`).
"""

from __future__ import annotations

import argparse
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
from water_edge.models.train.pump_eval_short import Result, parse_output, write_csv
from water_edge.sim.rig import RIG_FAULTS, simulate_run

CALIB_ROWS = 400
TUNING_SEED = 710_000
EVAL_SEED = 795_000  # fresh, judged once (issue 16, sixth pass: shipped defaults + a withdrawn candidate)
# looked at before: continuity only (785_000 judged once after the fifth pass, re-run once in the
# sixth; 760_000's outlet-valve runs share their rigs with the normal runs of the tuning seed
# 710_000, found after it was judged)
PREVIOUS_EVAL_SEEDS = (785_000, 760_000, 740_000, 720_000)
# every set decisions were made on: (seed, runs per fault type, normal runs), all of TUNING_FAULTS
TUNING_POOL: tuple[tuple[int, int, int], ...] = (
    (710_000, 30, 20),
    (730_000, 20, 20),
    (750_000, 20, 20),
    (770_000, 20, 20),
    (800_000, 0, 40),  # normal runs only (issue 16, sixth pass: where normal runs alarm)
)
TUNING_FAULTS: tuple[str, ...] = ("outlet_valve", "imbalance", "discharge_leak")
HELD_OUT: tuple[str, ...] = tuple(f for f in RIG_FAULTS if f not in TUNING_FAULTS)

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class RigCase:
    seed: int
    fault: str | None
    rows: int
    onset: int = 0  # row of the fault onset
    duration: int = 0
    ramp: int = 0


def make_cases(seed: int, faults: Sequence[str], per_fault: int, normal: int) -> list[RigCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for k, fault in enumerate(faults):
        for j in range(per_fault):
            rows = int(rng.integers(1000, 1251))
            onset = CALIB_ROWS + int(rng.integers(20, 301))
            to_end = rng.random() < 1 / 3
            duration = rows - onset if to_end else min(rows - onset, int(rng.integers(150, 601)))
            ramp = int(rng.integers(0, 11)) if rng.random() < 0.5 else int(rng.integers(60, 301))
            cases.append(RigCase(seed + 1000 * k + j, fault, rows, onset, duration, ramp))
    for j in range(normal):
        cases.append(RigCase(seed + 50_000 + j, None, int(rng.integers(1000, 1251))))
    return cases


def simulate_case(case: RigCase) -> tuple[F64, I8]:
    x, labels, _ = simulate_run(
        case.seed,
        case.rows,
        case.fault,
        onset_s=float(case.onset),
        ramp_s=float(case.ramp),
        duration_s=float(case.duration) if case.fault else None,
    )
    return x, labels


def run_cli(path: Path) -> tuple[F64, I8]:
    import contextlib
    import io

    from water_edge.agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", str(CALIB_ROWS)])
    if code != 0:
        raise RuntimeError(f"CLI exit {code}: {err.getvalue().strip()}")
    return parse_output(out.getvalue().splitlines())


Scorer = Callable[[Path], tuple[F64, I8]]


def run_cases(cases: Sequence[RigCase], scorer: Scorer = run_cli) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            x, labels = simulate_case(case)
            path = write_csv(Path(tmp) / f"rig_{case.seed}.csv", x, case.seed)
            scores, alarm = scorer(path)
            if len(alarm) != case.rows:
                raise RuntimeError(f"{len(alarm)} output rows for {case.rows} input rows")
            onset = case.onset - CALIB_ROWS if case.fault else len(labels) - CALIB_ROWS
            results.append(Result(case.fault, labels[CALIB_ROWS:], alarm[CALIB_ROWS:], scores, onset))
    return results


def summarise(results: Sequence[Result]) -> dict[str, float]:
    out = pump_eval.summarise(results)
    del out["scenarios"]
    faulty = [r for r in results if r.fault]
    first = [r.alarm[r.onset : r.onset + 60].mean() for r in faulty]
    out["recall_first_minute"] = round(float(np.mean(first)), 3) if first else float("nan")
    normal_runs = [r for r in results if not r.fault]
    out["normal_runs_alarmed"] = (
        round(float(np.mean([r.alarm.any() for r in normal_runs])), 3) if normal_runs else float("nan")
    )
    out["anomalous_share"] = round(float(np.mean(np.concatenate([r.labels for r in results]))), 3)
    out["runs"] = len(results)
    return out


def report(results: Sequence[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {"per_fault": {}}
    for fault in sorted({r.fault for r in results if r.fault}):
        out["per_fault"][fault] = summarise([r for r in results if r.fault in (fault, None)])
    held = [r for r in results if r.fault in HELD_OUT or r.fault is None]
    if any(r.fault for r in held):
        out["held_out"] = summarise(held)
    out["faulty_runs_only"] = summarise([r for r in results if r.fault])
    out["all"] = summarise(results)
    return out


def plot(cases: Sequence[RigCase], results: Sequence[Result], out: Path) -> None:
    """One run per experiment: the CLI's score over the run, the logged experiment, the rows flagged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown: dict[str, tuple[RigCase, Result]] = {}
    for case, result in zip(cases, results, strict=True):
        key = case.fault or "normal"
        if key not in shown:
            shown[key] = (case, result)
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.7 * len(shown)), sharex=True)
    for ax, (key, (case, r)) in zip(axes, shown.items(), strict=True):
        t = (np.arange(len(r.scores)) - CALIB_ROWS) / 60.0
        after = t[CALIB_ROWS:]
        top = max(3.0, float(np.nanmax(r.scores)) * 1.1)
        ax.fill_between(
            after, 0, r.labels * top, color="tab:red", alpha=0.12, step="post", label="experiment"
        )
        ax.fill_between(after, 0, r.alarm * 1.0, color="tab:orange", alpha=0.5, step="post", label="flagged")
        ax.plot(t, r.scores, lw=0.7, color="tab:blue", label="score")
        ax.axhline(1.0, color="k", ls="--", lw=0.8, label="alarm level (1)")
        ax.axvline(0.0, color="0.4", lw=0.8)
        ax.set_ylim(0, top)
        ax.set_yscale("symlog", linthresh=1.0)
        ramp = "" if not case.fault else (" abrupt" if case.ramp <= 10 else f" over {case.ramp} s")
        ax.set_ylabel(f"{key}{ramp}", fontsize=7)
    axes[0].legend(fontsize=7, ncol=4, loc="upper left")
    axes[-1].set_xlabel("minutes after the 400 calibration rows (1 row = 1 s)")
    fig.suptitle(
        "models score pump --csv F --calibrate-rows 400 on rig runs (score in units of the alarm level)",
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def tuning_cases(per_fault: int = 12, normal: int = 8) -> list[RigCase]:
    return make_cases(TUNING_SEED, TUNING_FAULTS, per_fault, normal)


def evaluation_cases(per_fault: int = 12, normal: int = 8) -> list[RigCase]:
    return make_cases(EVAL_SEED, RIG_FAULTS, per_fault, normal)


def shared_rigs(cases: Sequence[RigCase]) -> list[int]:
    """Seeds of `cases` whose rig a run of the tuning pool also has (a run's rig is its seed's)."""
    tuned = {
        case.seed
        for seed, per_fault, normal in TUNING_POOL
        for case in make_cases(seed, TUNING_FAULTS, per_fault, normal)
    }
    return sorted(case.seed for case in cases if case.seed in tuned)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("tuning", "evaluation", "both"), default="both")
    ap.add_argument("--per-fault", type=int, default=12)
    ap.add_argument("--normal", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    ap.add_argument("--plot", type=Path, default=None, help="plot one evaluation run per experiment here")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    if args.set in ("tuning", "both"):
        out["tuning"] = report(run_cases(tuning_cases(args.per_fault, args.normal)))
    if args.set in ("evaluation", "both"):
        cases = evaluation_cases(args.per_fault, args.normal)
        shared = shared_rigs(cases)
        if shared:
            sys.stderr.write(
                f"evaluation seed {EVAL_SEED}: runs {shared[0]}..{shared[-1]} ({len(shared)}) share "
                "their rigs with the tuning pool (TUNING_POOL); choose another EVAL_SEED\n"
            )
            return 2
        results = run_cases(cases)
        out["evaluation"] = report(results)
        if args.plot:
            plot(cases, results, args.plot)
    text = json.dumps(out, indent=1)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
