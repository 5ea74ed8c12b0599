"""Machine-sound detection measured on real pumps: MIMII pump clip features, calibration on K normal clips.

    .venv/bin/python -m water_edge.models.train.machine_sound_eval [--data DIR] [--splits 5] [--write]

For each of the four pumps (`00`, `02`, `04`, `06`) and each factory-noise mix (+6, 0, -6 dB):
calibrate `models.machine_sound.detector` on K normal clips drawn at random (its default settings,
`prior = "none"`), score the remaining normal clips and every abnormal clip, and
report the AUC (the chance that a faulty clip scores above a normal one), for K = 25, 50, 100, 200,
400, averaged over `--splits` random draws. Beside it: the same detector with `prior = "pump"`, the
prior derived from the *other three* pumps' normal clips (leave one pump out, as a new pump would
have it); the
plain Mahalanobis distance on the log-mel bands the detector was before issue 16's third pass
(`eigen_power` 1, `shape_weight` 0, shrinkage 0.003); the reference the issue names (a plain shrunk
Mahalanobis distance on the 136 columns as given, shrinkage 0.1); the per-clip false alarm and
detection rates at the alarm level (score > 1); the AUC when the calibration clips are the first K
in file order instead of a random draw; and the AUC of the median score of 3 clips of one condition
(the gateway raises an event on 3 of 4 clips).

The data (`../shared/data/mimii-pump-features`, CC BY-SA 4.0, see its README) is read where it
lies, never copied. `--write` stores the figures in docs/machine-sound-eval.json and plots
docs/img/machine_sound_auc.png. About 3 min on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.models.machine_sound.detector import auc, calibrate, to_bands
from water_edge.models.machine_sound.features import N_FEATURES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "mimii-pump-features"
PUMPS = ("00", "02", "04", "06")
SNRS = {"snr6": "+6 dB", "snr0": "0 dB", "snr_6": "-6 dB"}
KS = (25, 50, 100, 200, 400)
TARGETS = {"snr6": 0.99, "snr0": 0.96, "snr_6": 0.88}
IDENTITY_SHARE = 0.01  # of the pump prior (models/train/machine_sound_prior.py)
F64 = npt.NDArray[np.float64]


def normal_correlation(data: Path, pump: str) -> F64:
    """One pump's normal clips' column correlation (band space), averaged over the noise mixes."""
    corr = [
        np.corrcoef(to_bands(np.load(data / f"{snr}_id_{pump}_normal.npy")), rowvar=False) for snr in SNRS
    ]
    return np.asarray(np.mean(corr, axis=0), dtype=np.float64)


def normal_target(data: Path, pumps: tuple[str, ...]) -> F64:
    """The pump prior from `pumps`: their mean normal correlation, 1 % identity. Normal clips only."""
    corr = np.mean([normal_correlation(data, p) for p in pumps], axis=0)
    return np.asarray((1 - IDENTITY_SHARE) * corr + IDENTITY_SHARE * np.eye(N_FEATURES), dtype=np.float64)


def reference_scores(cal: F64, test: F64, shrinkage: float = 0.1) -> F64:
    """The issue's baseline: standardised columns as given, covariance shrunk 0.1, Mahalanobis d^2."""
    mu, sd = cal.mean(axis=0), cal.std(axis=0) + 1e-12
    c, t = (cal - mu) / sd, (test - mu) / sd
    cov = (1 - shrinkage) * np.cov(c, rowvar=False) + shrinkage * np.eye(c.shape[1])
    return np.asarray(np.einsum("ij,jk,ik->i", t, np.linalg.inv(cov), t), dtype=np.float64)


def _median3(scores: F64, rng: np.random.Generator, n: int = 2000) -> F64:
    """Medians of `n` random triples of the scores (clips of one condition)."""
    if len(scores) < 3:
        return scores
    idx = np.array([rng.choice(len(scores), 3, replace=False) for _ in range(n)])
    return np.asarray(np.median(scores[idx], axis=1), dtype=np.float64)


def load(data: Path, snr: str, pump: str) -> tuple[F64, F64]:
    normal = np.load(data / f"{snr}_id_{pump}_normal.npy").astype(np.float64)
    abnormal = np.load(data / f"{snr}_id_{pump}_abnormal.npy").astype(np.float64)
    return normal, abnormal


def evaluate(data: Path, splits: int) -> dict[str, Any]:
    out: dict[str, Any] = {"k": list(KS), "splits": splits, "per_pump": {}, "mean": {}}
    for snr in SNRS:
        mean: dict[str, list[float]] = {}
        for pump in PUMPS:
            normal, abnormal = load(data, snr, pump)
            # The prior as a new pump would have it: from the other three pumps' normal clips.
            prior = normal_target(data, tuple(p for p in PUMPS if p != pump))

            def with_prior(cal: F64, prior: F64 = prior) -> Any:
                return calibrate(cal, prior=prior)

            row: dict[str, Any] = {}
            for k in KS:
                ours, ref, prev, pumpprior, first, med3, fa, tpr = [], [], [], [], [], [], [], []
                for split in range(splits):
                    rng = np.random.default_rng(1000 * split + k)
                    order = rng.permutation(len(normal))
                    cal, rest = normal[order[:k]], normal[order[k:]]
                    model = calibrate(cal)  # the default: prior = "none"
                    sn, sa = model.score(rest), model.score(abnormal)
                    ours.append(auc(sn, sa))
                    ref.append(auc(reference_scores(cal, rest), reference_scores(cal, abnormal)))
                    before = calibrate(cal, eigen_power=1.0, shape_weight=0.0, shrinkage=0.003)
                    prev.append(auc(before.score(rest), before.score(abnormal)))
                    leaning = with_prior(cal)
                    pumpprior.append(auc(leaning.score(rest), leaning.score(abnormal)))
                    fa.append(float((sn > 1).mean()))
                    tpr.append(float((sa > 1).mean()))
                    med3.append(auc(_median3(sn, rng), _median3(sa, rng)))
                    if split == 0:
                        in_order = calibrate(normal[:k])
                        first.append(auc(in_order.score(normal[k:]), in_order.score(abnormal)))
                row[str(k)] = {
                    "auc": round(float(np.mean(ours)), 4),
                    "auc_sd": round(float(np.std(ours)), 4),
                    "reference_auc": round(float(np.mean(ref)), 4),
                    "previous_auc": round(float(np.mean(prev)), 4),
                    "auc_with_pump_prior": round(float(np.mean(pumpprior)), 4),
                    "auc_first_k_in_file_order": round(float(np.mean(first)), 4),
                    "auc_median_of_3_clips": round(float(np.mean(med3)), 4),
                    "false_alarm_rate_per_clip": round(float(np.mean(fa)), 4),
                    "detection_rate_per_clip": round(float(np.mean(tpr)), 4),
                }
                for key, value in row[str(k)].items():
                    mean.setdefault(f"{k}:{key}", []).append(value)
            out["per_pump"].setdefault(snr, {})[pump] = row
        out["mean"][snr] = {
            str(k): {
                key.split(":", 1)[1]: round(float(np.mean(v)), 4)
                for key, v in mean.items()
                if key.startswith(f"{k}:") and not key.endswith("auc_sd")
            }
            for k in KS
        }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, (snr, label) in zip(axes, SNRS.items(), strict=True):
        for pump in PUMPS:
            auc_k = [report["per_pump"][snr][pump][str(k)]["auc"] for k in KS]
            ax.plot(KS, auc_k, color="0.7", lw=0.8, marker=".", label="one pump" if pump == "00" else None)
        mean = [report["mean"][snr][str(k)]["auc"] for k in KS]
        ref = [report["mean"][snr][str(k)]["reference_auc"] for k in KS]
        prev = [report["mean"][snr][str(k)]["previous_auc"] for k in KS]
        leaning = [report["mean"][snr][str(k)]["auc_with_pump_prior"] for k in KS]
        ax.plot(KS, mean, color="tab:blue", lw=2, marker="o", label="this detector, mean of 4 pumps")
        ax.plot(
            KS, leaning, color="tab:purple", lw=1.2, ls=":", marker="v", label='same, prior = "pump" (LOPO)'
        )
        ax.plot(
            KS, prev, color="tab:green", lw=1.2, ls="-.", marker="^", label="Mahalanobis on bands (2nd pass)"
        )
        ax.plot(KS, ref, color="tab:orange", lw=1.5, ls="--", marker="s", label="plain shrunk Mahalanobis")
        ax.axhline(TARGETS[snr], color="k", lw=0.8, ls=":", label="target at K = 100")
        ax.axvline(100, color="tab:red", lw=0.8, alpha=0.5, label="operating point K = 100")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(KS, [str(k) for k in KS])
        ax.text(27, TARGETS[snr] + 0.004, f"target {TARGETS[snr]}", fontsize=7)
        ax.set_title(f"MIMII pumps, {label} factory noise", fontsize=9)
        ax.set_xlabel("normal clips used for calibration, K")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUC (faulty vs normal clips)")
    axes[0].set_ylim(0.6, 1.005)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    if not (args.data / "snr0_id_00_normal.npy").exists():
        sys.stderr.write(f"machine_sound_eval: no MIMII features at {args.data}\n")
        return 2
    report = evaluate(args.data, args.splits)
    sys.stdout.write(json.dumps(report["mean"], indent=1) + "\n")
    if args.write:
        (ROOT / "docs" / "machine-sound-eval.json").write_text(json.dumps(report, indent=1) + "\n")
        plot(report, ROOT / "docs" / "img" / "machine_sound_auc.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
