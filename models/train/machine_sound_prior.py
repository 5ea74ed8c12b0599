"""Build the machine-sound `pump` prior: how the 136 clip features of pumps co-vary in normal running.

    .venv/bin/python -m water_edge.models.train.machine_sound_prior [--data DIR] [--splits 5] [--check]

The prior is a shrinkage target for the detector's covariance (`models.machine_sound.detector`,
`[models.machine_sound.calibration] prior = "pump"`): the correlation of the feature columns (the
128 mean log-mel bands and the 8 waveform statistics) over the *normal* clips of the four MIMII
pumps, averaged over pumps and over the three factory-noise mixes, mixed with 1 % of the identity
so that it is well conditioned. No faulty clip goes into it. A machine calibrated on 100 clips
estimates 136 x 136 correlations from 100 clips; shrinking them towards what pumps in general show
(neighbouring bands moving together, the level of background noise lifting every band) rather than
towards "no correlation" is what the prior brings.

Written: `models/machine_sound/pump_prior.npy` (float32, 136 x 136: derived weights, not data) and
its manifest `pump_prior.json` (version, input spec, sha256, the data it was derived from, and the
metrics). The metrics are measured *leave one pump out*: for each pump, the prior derived from the
other three, the detector at its shipped settings calibrated on K = 100 random normal clips of the
held-out pump, AUC of its other normal clips against all its faulty clips, mean of `--splits` draws.
`--check` recomputes the matrix and fails if it differs from the committed one (CI-free: the data
is not in the repository). MIMII features: ../shared/data/mimii-pump-features (CC BY-SA 4.0), read
where they lie.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.core.digests import sha256_file
from water_edge.models.machine_sound.detector import auc, calibrate
from water_edge.models.machine_sound.features import N_FEATURES
from water_edge.models.machine_sound.prior import PRIOR_DIR, PRIOR_VERSION
from water_edge.models.train.machine_sound_eval import DATA, IDENTITY_SHARE, PUMPS, SNRS, normal_target

F64 = npt.NDArray[np.float64]
K = 100


def leave_one_pump_out(data: Path, splits: int) -> dict[str, Any]:
    """Per held-out pump and noise mix: AUC with the prior from the other three, and without."""
    out: dict[str, Any] = {"k": K, "splits": splits, "per_pump": {}, "mean": {}}
    for pump in PUMPS:
        target = normal_target(data, tuple(p for p in PUMPS if p != pump))
        for snr in SNRS:
            normal = np.load(data / f"{snr}_id_{pump}_normal.npy").astype(np.float64)
            abnormal = np.load(data / f"{snr}_id_{pump}_abnormal.npy").astype(np.float64)
            with_prior, without = [], []
            for split in range(splits):
                order = np.random.default_rng(1000 * split + K).permutation(len(normal))
                cal, rest = normal[order[:K]], normal[order[K:]]
                model = calibrate(cal, prior=target)
                with_prior.append(auc(model.score(rest), model.score(abnormal)))
                plain = calibrate(cal)
                without.append(auc(plain.score(rest), plain.score(abnormal)))
            out["per_pump"].setdefault(snr, {})[pump] = {
                "auc": round(float(np.mean(with_prior)), 4),
                "auc_without_prior": round(float(np.mean(without)), 4),
            }
    for snr in SNRS:
        rows = out["per_pump"][snr].values()
        out["mean"][snr] = {
            key: round(float(np.mean([r[key] for r in rows])), 4) for key in ("auc", "auc_without_prior")
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="only compare with the committed prior")
    args = ap.parse_args(argv)
    if not (args.data / "snr0_id_00_normal.npy").exists():
        sys.stderr.write(f"machine_sound_prior: no MIMII features at {args.data}\n")
        return 2
    target = normal_target(args.data, PUMPS).astype(np.float32)
    npy, manifest = PRIOR_DIR / "pump_prior.npy", PRIOR_DIR / "pump_prior.json"
    if args.check:
        same = npy.exists() and np.array_equal(np.load(npy), target)
        sys.stdout.write(f"{npy}: {'matches' if same else 'DIFFERS from'} the MIMII features\n")
        return 0 if same else 1
    np.save(npy, target)
    metrics = leave_one_pump_out(args.data, args.splits)
    doc = {
        "name": "machine_sound_pump_prior",
        "version": PRIOR_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_file": npy.name,
        "sha256": sha256_file(npy),
        "input": {"shape": [-1, N_FEATURES], "dtype": "float32"},
        "output": {"shape": [N_FEATURES, N_FEATURES], "dtype": "float32"},
        "sample_rate": 16000.0,
        "threshold": None,
        "training_data": (
            "MIMII pumps 00, 02, 04, 06 (Hitachi, CC BY-SA 4.0), normal clips only, +6 / 0 / -6 dB "
            "factory noise: correlation of the 136 clip features (log-mel bands + waveform statistics), "
            f"mean over pumps and noise mixes, {IDENTITY_SHARE:.0%} identity. Shrinkage target of the "
            "machine-sound detector's covariance."
        ),
        "metrics": {"leave_one_pump_out": metrics},
        "extra": {"identity_share": IDENTITY_SHARE},
    }
    manifest.write_text(json.dumps(doc, indent=1) + "\n")
    sys.stdout.write(json.dumps(metrics["mean"], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
