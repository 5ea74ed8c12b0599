"""Evaluates the shipped pump detector on simulated scenarios never used in training, as a gateway runs it.

    .venv/bin/python -m water_edge.models.train.pump_eval [--seed 9001] [--per-fault 6] [--jobs 2] [--write]

Each scenario: calibrate on its first `calib_s` seconds of normal duty (24 h, the gateway's
`auto_hours` default: a full daily demand cycle), then up to 4 h follow with the fault starting
15 min to 2 h in and lasting to the end; the score goes through persistence and hysteresis and the
alarm is compared with the ground-truth fault label. Reported per fault type and for held-out vs
trained types: point-wise F1, false alarm rate (share of normal rows after calibration flagged),
missed alarm rate (share of faulty scenarios never alarmed during the fault) and median detection
delay (onset to first alarm). Stress sets: calibration on one hour and on 400 rows of a moving
demand (outside what the gateway is configured for), measurement noise x3. `--write` stores the
figures in the manifest's `metrics` and plots PNGs under docs/img/. Needs numpy, fwsim, LiteRT
(no TensorFlow). About 7 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from water_edge.models.pump.detector import alarm_series, calibrate, score, select
from water_edge.models.pump.labelled import point_scores
from water_edge.models.runtime import Model, load_model
from water_edge.models.train.pump_sim import FAULTS, SIGNALS, Scenario, simulate

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "models" / "pump" / "pump_scorer.json"
PERSISTENCE, CLEAR_AFTER, HYSTERESIS = 5, 30, 0.8
CALIBRATION_S = 24 * 3600
AFTER_S = 4 * 3600  # scored after calibration
_MODEL: Model | None = None


@dataclass
class Outcome:
    fault: str | None
    alarm: npt.NDArray[np.int8]
    labels: npt.NDArray[np.int8]
    scores: npt.NDArray[np.float64]
    threshold: float
    onset: int


def run_case(model: Model, sc: Scenario, calib_s: int, channels: list[str] | None = None) -> Outcome:
    x, labels = simulate(sc)
    names = list(channels or SIGNALS)
    x = x[:, [SIGNALS.index(c) for c in names]]
    window = int(model.manifest.extra.get("window", 32))
    cal = calibrate(x[:calib_s], names, model, window=window, model_version=model.version)
    scored = score(select(x, names, cal), cal, model)
    alarm = alarm_series(scored.score[calib_s:], cal.threshold, PERSISTENCE, CLEAR_AFTER, HYSTERESIS)
    return Outcome(sc.fault, alarm, labels[calib_s:], scored.score, cal.threshold, int(sc.onset_s) - calib_s)


def _run_in_worker(job: tuple[Scenario, int]) -> Outcome:
    global _MODEL  # noqa: PLW0603 - one model per worker process
    if _MODEL is None:
        _MODEL = load_model(MANIFEST)
    return run_case(_MODEL, *job)


class Labelled(Protocol):
    """One scored run: its fault (None: normal), alarm and label per row, and the onset row."""

    @property
    def fault(self) -> str | None: ...
    @property
    def alarm(self) -> npt.NDArray[np.int8]: ...
    @property
    def labels(self) -> npt.NDArray[np.int8]: ...
    @property
    def onset(self) -> int: ...


def summarise(outcomes: Sequence[Labelled]) -> dict[str, float]:
    """Point-wise F1, precision, recall and false alarm rate; missed alarm rate and median delay
    per faulty run (also used by `pump_eval_short`)."""
    point = point_scores(
        np.concatenate([o.alarm for o in outcomes]), np.concatenate([o.labels for o in outcomes])
    )
    faulty = [o for o in outcomes if o.fault]
    delays = []
    missed = 0
    for o in faulty:
        hits = np.flatnonzero(o.alarm[o.onset :] & o.labels[o.onset :])
        if len(hits):
            delays.append(float(hits[0]))
        else:
            missed += 1
    return {
        "f1": round(point.f1, 3),
        "precision": round(point.precision, 3),
        "recall": round(point.recall, 3),
        "false_alarm_rate": round(point.false_alarm_rate, 4),
        "missed_alarm_rate": round(missed / len(faulty), 3) if faulty else 0.0,
        "median_delay_s": round(float(np.median(delays)), 1) if delays else float("nan"),
        "scenarios": len(outcomes),
    }


def evaluate(
    model: Model,
    seed: int,
    per_fault: int,
    *,
    calib_s: int = CALIBRATION_S,
    noise: float = 1.0,
    jobs: int = 1,
) -> tuple[dict[str, Any], list[Outcome]]:
    rng = np.random.default_rng(seed)
    hours = (calib_s + AFTER_S) / 3600
    work: list[tuple[Scenario, int]] = []
    kinds: list[str | None] = [*FAULTS, None]
    for k, fault in enumerate(kinds):
        for j in range(per_fault):
            onset = calib_s + int(rng.integers(900, 2 * 3600))
            sc = Scenario(
                seed=seed + 100 * k + j,
                hours=hours,
                fault=fault,
                onset_s=onset,
                duration_s=hours * 3600 - onset,
                ramp_s=float(rng.uniform(0, 600)),
                noise=noise,
            )
            work.append((sc, calib_s))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            outcomes = list(pool.map(_run_in_worker, work))
    else:
        outcomes = [run_case(model, *job) for job in work]
    held = tuple(model.manifest.extra.get("held_out", ()))
    report: dict[str, Any] = {"per_fault": {}}
    for fault in FAULTS:
        report["per_fault"][fault] = summarise([o for o in outcomes if o.fault in (fault, None)])
    report["held_out"] = summarise([o for o in outcomes if o.fault in held or o.fault is None])
    report["trained"] = summarise([o for o in outcomes if o.fault not in held])
    report["all"] = summarise(outcomes)
    return report, outcomes


def plot(outcomes: list[Outcome], out: Path) -> None:
    """One run per fault: the score in units of its alarm level (log), the fault's rows, the alarm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    shown: dict[str, Outcome] = {}
    for o in outcomes:
        key = o.fault or "normal (no fault)"
        if key not in shown:
            shown[key] = o
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.6 * len(shown) + 0.8), sharex=True)
    lo, hi = 0.05, 100.0
    for ax, (fault, o) in zip(axes, shown.items(), strict=True):
        calib = len(o.scores) - len(o.alarm)
        scores = o.scores[max(0, calib - 3600) :]  # the last hour of calibration, then the scored hours
        calib = min(calib, 3600)
        t = (np.arange(len(scores)) - calib) / 60.0
        level = np.clip(scores / o.threshold, lo, hi)  # clipped so a fault's score stays in view
        ax.plot(t, level, lw=0.6, color="tab:blue", label="score / alarm level (clipped to 0.05..100)")
        ax.axhline(1.0, color="k", ls="--", lw=0.8, label="alarm level (the operating point)")
        ax.fill_between(
            t[calib:], lo, np.where(o.labels > 0, hi, lo), color="tab:red", alpha=0.12, label="fault present"
        )
        ax.fill_between(
            t[calib:], lo, np.where(o.alarm > 0, 0.1, lo), color="tab:orange", alpha=0.8, label="alarm raised"
        )
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.set_yticks([0.1, 1, 10, 100], ["0.1", "1", "10", "100"])
        ax.text(0.01, 0.85, fault, transform=ax.transAxes, fontsize=9, weight="bold")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8)
    fig.supylabel("score in units of the alarm level (log)")
    axes[-1].set_xlabel("minutes after the end of calibration (a day of normal duty; the last hour shown)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(out / "pump_scores.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--per-fault", type=int, default=6)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument(
        "--plot-only", action="store_true", help="one run per fault, docs/img/pump_scores.png only"
    )
    args = ap.parse_args(argv)
    model = load_model(MANIFEST)
    if args.plot_only:
        _, outcomes = evaluate(model, args.seed, 1, jobs=args.jobs)
        plot(outcomes, ROOT / "docs" / "img")
        return 0
    report, outcomes = evaluate(model, args.seed, args.per_fault, jobs=args.jobs)
    stress = max(2, args.per_fault // 2)
    hour, _ = evaluate(model, args.seed + 60_000, stress, calib_s=3600, jobs=args.jobs)
    short, _ = evaluate(model, args.seed + 50_000, stress, calib_s=400, jobs=args.jobs)
    noisy, _ = evaluate(model, args.seed + 70_000, stress, noise=3.0, jobs=args.jobs)
    report["calibration_1_hour"] = hour["all"]
    report["calibration_400_rows"] = short["all"]
    report["noise_x3"] = noisy["all"]
    print(json.dumps(report, indent=1))  # noqa: T201 - the report is this tool's output
    if args.write:
        data = json.loads(MANIFEST.read_text())
        data["metrics"] = {
            "eval_seed": args.seed,
            "calibration_s": CALIBRATION_S,
            "held_out": report["held_out"],
            "trained": report["trained"],
            "all": report["all"],
            "calibration_1_hour": hour["all"],
            "calibration_400_rows": short["all"],
            "noise_x3": noisy["all"],
            "per_fault": report["per_fault"],
        }
        MANIFEST.write_text(json.dumps(data, indent=1) + "\n")
        plot(outcomes, ROOT / "docs" / "img")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
