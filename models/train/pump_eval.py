"""Evaluates the shipped pump scorer on simulated scenarios never used in training, as a gateway runs it.

    .venv/bin/python -m models.train.pump_eval [--seed 9001] [--per-fault 6] [--write]

Each scenario: calibrate on its first `calib_s` seconds (normal), score the rest through
persistence and hysteresis, compare the alarm with the ground-truth fault label. Reported per
fault type and for held-out vs trained types: point-wise F1, false alarm rate (share of normal rows
after calibration flagged), missed alarm rate (share of faulty scenarios never alarmed during the
fault) and median detection delay (onset to first alarm). `--write` stores the figures in the
manifest's `metrics` and plots PNGs under docs/img/. Needs numpy, fwsim, LiteRT (no TensorFlow).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.pump.detector import alarm_series, calibrate, score, select
from models.runtime import Model, load_model
from models.train.pump_sim import FAULTS, SIGNALS, Scenario, simulate

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "models" / "pump" / "pump_scorer.json"
PERSISTENCE, CLEAR_AFTER, HYSTERESIS = 5, 30, 0.8


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
    return Outcome(sc.fault, alarm, labels[calib_s:], scored.score, cal.threshold,
                   int(sc.onset_s) - calib_s)


def summarise(outcomes: list[Outcome]) -> dict[str, float]:
    alarm = np.concatenate([o.alarm for o in outcomes])
    labels = np.concatenate([o.labels for o in outcomes])
    tp = int(((alarm == 1) & (labels == 1)).sum())
    fp = int(((alarm == 1) & (labels == 0)).sum())
    fn = int(((alarm == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    faulty = [o for o in outcomes if o.fault]
    delays = []
    missed = 0
    for o in faulty:
        hits = np.flatnonzero(o.alarm[o.onset:] & o.labels[o.onset:])
        if len(hits):
            delays.append(float(hits[0]))
        else:
            missed += 1
    normal_rows = labels == 0
    return {
        "f1": round(f1, 3), "precision": round(precision, 3), "recall": round(recall, 3),
        "false_alarm_rate": round(float(alarm[normal_rows].mean()) if normal_rows.any() else 0.0, 4),
        "missed_alarm_rate": round(missed / len(faulty), 3) if faulty else 0.0,
        "median_delay_s": round(float(np.median(delays)), 1) if delays else float("nan"),
        "scenarios": len(outcomes),
    }


def evaluate(model: Model, seed: int, per_fault: int, calib_s: int = 3600,
             noise: float = 1.0) -> tuple[dict[str, Any], list[Outcome]]:
    rng = np.random.default_rng(seed)
    outcomes: list[Outcome] = []
    kinds: list[str | None] = [*FAULTS, None]
    for k, fault in enumerate(kinds):
        for j in range(per_fault):
            onset = calib_s + int(rng.integers(900, 2700))
            sc = Scenario(seed=seed + 100 * k + j, hours=3.0, fault=fault, onset_s=onset,
                          duration_s=3 * 3600 - onset, ramp_s=float(rng.uniform(0, 600)), noise=noise)
            outcomes.append(run_case(model, sc, calib_s))
    held = tuple(model.manifest.extra.get("held_out", ()))
    report: dict[str, Any] = {"per_fault": {}}
    for fault in FAULTS:
        report["per_fault"][fault] = summarise([o for o in outcomes if o.fault in (fault, None)])
    report["held_out"] = summarise([o for o in outcomes if o.fault in held or o.fault is None])
    report["trained"] = summarise([o for o in outcomes if o.fault not in held])
    report["all"] = summarise(outcomes)
    return report, outcomes


def plot(outcomes: list[Outcome], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    shown = {}
    for o in outcomes:
        if o.fault and o.fault not in shown:
            shown[o.fault] = o
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.0 * len(shown)), sharex=True)
    for ax, (fault, o) in zip(axes, shown.items(), strict=True):
        calib = len(o.scores) - len(o.alarm)
        t = (np.arange(len(o.scores)) - calib) / 60.0
        ax.plot(t, o.scores, lw=0.6, label="score")
        ax.axhline(o.threshold, color="k", ls="--", lw=0.8, label="threshold")
        ax.fill_between(t[calib:], 0, o.labels * o.scores.max(), color="tab:red", alpha=0.12, label="fault")
        ax.fill_between(t[calib:], 0, o.alarm * o.threshold, color="tab:orange", alpha=0.5, label="alarm")
        ax.set_yscale("symlog", linthresh=max(o.threshold, 1e-3))
        ax.set_ylabel(fault, fontsize=8)
    axes[0].legend(fontsize=7, ncol=4, loc="upper left")
    axes[-1].set_xlabel("minutes after calibration")
    fig.tight_layout()
    fig.savefig(out / "pump_scores.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--per-fault", type=int, default=6)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    model = load_model(MANIFEST)
    report, outcomes = evaluate(model, args.seed, args.per_fault)
    short, _ = evaluate(model, args.seed + 50_000, max(2, args.per_fault // 2), calib_s=400)
    noisy, _ = evaluate(model, args.seed + 70_000, max(2, args.per_fault // 2), noise=3.0)
    report["calibration_400_rows"] = short["all"]
    report["noise_x3"] = noisy["all"]
    print(json.dumps(report, indent=1))  # noqa: T201 - the report is this tool's output
    if args.write:
        data = json.loads(MANIFEST.read_text())
        data["metrics"] = {
            "eval_seed": args.seed, "held_out": report["held_out"], "trained": report["trained"],
            "all": report["all"], "calibration_400_rows": short["all"], "noise_x3": noisy["all"],
            "per_fault": report["per_fault"],
        }
        MANIFEST.write_text(json.dumps(data, indent=1) + "\n")
        plot(outcomes, ROOT / "docs" / "img")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
