"""Evaluation report for the shipped leak detector and the localiser (`make eval`).

    python -m water_edge.models.train.leak_eval [--seed 7] [--clips 3000] [--update-manifest]
                                                [--plots docs/img]

Detection is measured on the *eval* split of the training dataset's seed (a random stream disjoint
from the train split, never seen in training): ROC AUC, precision and recall at the shipped
threshold, per material and SNR band, per 2 s window and per clip. Localisation is measured on fresh
simulated two-sensor scenes with the true wave speed. The five real PVC recordings
(Aghashahi, Sela & Banks, Data in Brief 48 (2023) 109148, CC BY 4.0) are scored as a held-out check.
Needs no TensorFlow: the model runs through `models.runtime` exactly as on a gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.core.wavio import read_wav
from water_edge.models.leak import pipes
from water_edge.models.leak.detector import DEFAULT_MANIFEST, LeakScorer
from water_edge.models.leak.localise import locate
from water_edge.models.runtime import load_model
from water_edge.models.train.leak_data import Table, render_table
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

REPO = Path(__file__).resolve().parents[2]
REAL_DIR = REPO.parent / "shared" / "data" / "leak-pvc-hydrophone"
REAL_FILES = ("no-leak", "orifice-leak", "gasket-leak", "circumferential-crack", "longitudinal-crack")
SNR_BANDS = ((-25.0, -15.0), (-15.0, -5.0), (-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))

FloatArray = npt.NDArray[np.float64]


def roc_auc(p: FloatArray, y: npt.NDArray[np.int64]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def precision_recall(p: FloatArray, y: npt.NDArray[np.int64], threshold: float) -> tuple[float, float]:
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    return tp / max(float(pred.sum()), 1.0), tp / max(float((y == 1).sum()), 1.0)


def _summary(p: FloatArray, y: npt.NDArray[np.int64], thr: float) -> dict[str, Any]:
    prec, rec = precision_recall(p, y, thr)
    return {
        "auc": round(roc_auc(p, y), 4),
        "precision": round(prec, 4),
        "recall": round(rec, 4),
        "n": len(y),
        "n_leak": int(y.sum()),
    }


def detection_report(scorer: LeakScorer, table: Table) -> dict[str, Any]:
    """AUC / precision / recall overall, for SNR >= 0 dB, per material and per SNR band."""
    p = scorer.probabilities(table.x)
    y, thr = table.y, scorer.threshold
    snr = np.array([float(m["snr_db"]) for m in table.meta])
    mat = np.array([m["material"] for m in table.meta])
    noleak = y == 0
    out: dict[str, Any] = {
        "threshold": thr,
        "windows": _summary(p, y, thr),
        "windows_snr_ge_0": _summary(p[noleak | (snr >= 0)], y[noleak | (snr >= 0)], thr),
    }
    out["per_material_snr_ge_0"] = {
        m: _summary(p[(mat == m) & (noleak | (snr >= 0))], y[(mat == m) & (noleak | (snr >= 0))], thr)
        for m in sorted(set(mat))
    }
    out["per_snr_band"] = {
        f"{lo:+.0f}..{hi:+.0f} dB": _summary(p[noleak | ((snr >= lo) & (snr < hi))],
                                              y[noleak | ((snr >= lo) & (snr < hi))], thr)
        for lo, hi in SNR_BANDS
    }  # fmt: skip
    # Per clip: mean probability over the clip's windows (first channel), as the CLI scores a file.
    clips: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    snrs: dict[str, float] = {}
    for pi, m in zip(p, table.meta, strict=True):
        if m["channel"] == 0:
            clips.setdefault(m["file"], []).append(float(pi))
            labels[m["file"]], snrs[m["file"]] = int(m["label"]), float(m["snr_db"])
    cp = np.array([np.mean(v) for v in clips.values()])
    cy = np.array([labels[k] for k in clips], dtype=np.int64)
    cs = np.array([snrs[k] for k in clips])
    sel = (cy == 0) | (cs >= 0)
    out["clips"] = _summary(cp, cy, thr)
    out["clips_snr_ge_0"] = _summary(cp[sel], cy[sel], thr)
    out["_scores"] = (p, y)
    out["_snr"] = snr
    out["_noleak"] = noleak
    return out


def localisation_report(seed: int, n: int = 40, seconds: float = 8.0) -> dict[str, Any]:
    """Position error (% of spacing) on simulated metal and plastic pipes, true wave speed, SNR 0..10 dB."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    result: dict[str, Any] = {}
    for group, mats in (("metal", ("ductile_iron", "steel", "cast_iron")), ("plastic", ("pvc", "pe"))):
        errs = []
        for _ in range(n):
            mat = str(rng.choice(mats))
            metal = pipes.material(mat).metal
            spacing = float(rng.uniform(80, 300) if metal else rng.uniform(30, 150))
            scene = PipeScene(
                mat,
                float(rng.choice([100.0, 150.0, 200.0, 300.0])),
                spacing,
                float(rng.uniform(0.1, 0.9) * spacing),
                float(rng.uniform(0.3, 3.0)),
                float(rng.uniform(0.0, 10.0)),
                BACKGROUNDS,
                seed=int(rng.integers(2**31)),
            )
            x = HydrophoneSynth(scene).render_seconds(seconds)
            loc = locate(x[:, 0], x[:, 1], scene.sample_rate, spacing, wave_speed_m_s=scene.wave_speed)
            assert scene.leak_position_m is not None
            errs.append(100 * abs(loc.position_m - scene.leak_position_m) / spacing)
        e = np.array(errs)
        result[group] = {
            "median_error_pct_of_spacing": round(float(np.median(e)), 3),
            "p90_error_pct": round(float(np.percentile(e, 90)), 3),
            "max_error_pct": round(float(e.max()), 3),
            "n": n,
        }
    return result


def real_report(scorer: LeakScorer, folder: Path = REAL_DIR) -> dict[str, Any]:
    """Scores of the five real recordings and whether every leak scores above the no-leak one."""
    scores = {}
    for name in REAL_FILES:
        x, rate = read_wav(folder / f"{name}.wav")
        scores[name] = scorer.score(x, rate).leak_probability
    others = [v for k, v in scores.items() if k != "no-leak"]
    return {
        "scores": {k: float(f"{v:.6g}") for k, v in scores.items()},
        "every_leak_above_no_leak": bool(min(others) > scores["no-leak"]),
    }


def spectrograms(out: Path, seed: int) -> Path:
    """Spectrograms of simulated sensor A audio, two materials, without and with a leak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import signal

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True, sharey=True)
    mesh = None
    for col, mat in enumerate(("ductile_iron", "pvc")):
        for row, pos in enumerate((None, 40.0)):
            scene = PipeScene(mat, 150.0, 100.0, pos, 1.0, 0.0, BACKGROUNDS, seed=seed)
            x = HydrophoneSynth(scene).render_seconds(6)[:, 0]
            f, t, s = signal.spectrogram(x, 16000, nperseg=2048, noverlap=1536)
            keep = f <= 2500
            mesh = axes[row, col].pcolormesh(
                t, f[keep], 10 * np.log10(s[keep] + 1e-14), shading="auto", vmin=-130, vmax=-50
            )
            axes[row, col].set_title(
                f"{pipes.material(mat).label} DN150, {'leak 40 m from A, 0 dB SNR' if pos else 'no leak'}",
                fontsize=10,
            )
            if col == 0:
                axes[row, col].set_ylabel("frequency (Hz)")
            if row == 1:
                axes[row, col].set_xlabel("time (s)")
    assert mesh is not None
    fig.colorbar(mesh, ax=axes, label="power spectral density (dB re 1 full scale²/Hz)", shrink=0.9)
    fig.suptitle("Simulated hydrophone A (edge-sim), 2048-point FFT, 0-2.5 kHz")
    fig.savefig(out / "leak_spectrograms.png", dpi=100)
    plt.close(fig)
    return out / "leak_spectrograms.png"


def plots(out: Path, report: dict[str, Any], seed: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    det = report["detection"]
    p, y = det["_scores"]
    thr = float(det["threshold"])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    headline = det["_noleak"] | (det["_snr"] >= 0)
    curves = (
        (np.ones_like(y, dtype=bool), "all SNR (-10..+20 dB)", det["windows"]["auc"], "tab:blue"),
        (headline, "SNR >= 0 dB (headline)", det["windows_snr_ge_0"]["auc"], "tab:green"),
    )
    for sel, label, auc, colour in curves:
        ps, ys = p[sel], y[sel]
        order = np.argsort(-ps)
        tpr = np.concatenate([[0], np.cumsum(ys[order] == 1) / max(int((ys == 1).sum()), 1)])
        fpr = np.concatenate([[0], np.cumsum(ys[order] == 0) / max(int((ys == 0).sum()), 1)])
        ax.plot(fpr, tpr, color=colour, label=f"{label}, AUC {auc:.3f}")
        # The operating point: the shipped threshold on this curve.
        op_tpr = float(np.mean(ps[ys == 1] >= thr))
        op_fpr = float(np.mean(ps[ys == 0] >= thr))
        ax.plot(op_fpr, op_tpr, "o", color=colour, ms=7, mec="k")
        ax.annotate(
            f"threshold {thr:g}: TPR {op_tpr:.2f}, FPR {op_fpr:.2f}",
            (op_fpr, op_tpr),
            textcoords="offset points",
            xytext=(10, -16),
            fontsize=8,
        )
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance")
    ax.set(
        xlabel="false positive rate (no-leak windows called leak)",
        ylabel="true positive rate (leak windows found)",
        title="Leak classifier ROC, held-out 2 s windows",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "leak_roc.png", dpi=110)
    written.append(out / "leak_roc.png")
    plt.close(fig)

    written.append(spectrograms(out, seed))

    scene = PipeScene("pvc", 150.0, 100.0, 30.0, 1.0, 0.0, BACKGROUNDS, seed=seed)
    x = HydrophoneSynth(scene).render_seconds(10)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for w in ("phat", "scot"):
        loc = locate(x[:, 0], x[:, 1], 16000, 100.0, material="pvc", weighting=w)
        assert loc.correlation is not None
        assert loc.lags_s is not None
        ax.plot(
            loc.lags_s * 1000,
            loc.correlation / np.max(np.abs(loc.correlation)),
            lw=0.8,
            label=f"GCC-{w.upper()}: x = {loc.position_m:.1f} m",
        )
    true_tau = (scene.delays_s()[0] - scene.delays_s()[1]) * 1000
    ax.axvline(true_tau, color="k", ls=":", label=f"true delay {true_tau:.1f} ms (x = 30 m)")
    ax.set(
        xlabel="lag t_A - t_B (ms)",
        ylabel="normalised correlation",
        title="PVC DN150, sensors 100 m apart, leak 30 m from A, SNR 0 dB",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "leak_correlation.png", dpi=110)
    written.append(out / "leak_correlation.png")
    plt.close(fig)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m water_edge.models.train.leak_eval", description=__doc__)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--seed", type=int, default=None, help="dataset seed (default: the manifest's)")
    ap.add_argument("--clips", type=int, default=None, help="dataset size (default: the manifest's)")
    ap.add_argument("--localise-n", type=int, default=40)
    ap.add_argument("--plots", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--update-manifest", action="store_true", help="write the measured metrics into it")
    args = ap.parse_args(argv)
    scorer = LeakScorer(load_model(args.manifest))
    extra = scorer.model.manifest.extra
    seed = args.seed if args.seed is not None else int(extra.get("dataset_seed", 7))
    clips = args.clips if args.clips is not None else int(extra.get("dataset_clips", 3000))
    table = render_table(seed, clips, "eval")
    report: dict[str, Any] = {
        "dataset": {"seed": seed, "clips": clips, "split": "eval", "windows": len(table.y)}
    }
    report["detection"] = detection_report(scorer, table)
    report["localisation"] = localisation_report(seed, args.localise_n)
    if REAL_DIR.is_dir():
        report["real_recordings"] = real_report(scorer)
    if not args.no_plots:
        report["plots"] = [str(p.relative_to(REPO)) for p in plots(args.plots, report, seed)]
    printable = dict(report.items())
    printable["detection"] = {k: v for k, v in report["detection"].items() if not k.startswith("_")}
    sys.stdout.write(json.dumps(printable, indent=1) + "\n")
    if args.update_manifest:
        m = json.loads(args.manifest.read_text(encoding="utf-8"))
        m["metrics"] = {
            "eval_dataset": printable["dataset"],
            "detection": printable["detection"],
            "localisation": report["localisation"],
            "real_recordings": report.get("real_recordings"),
        }
        args.manifest.write_text(json.dumps(m, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
