"""Train the acoustic leak classifier and export `models/leak/leak_detector.tflite` with its manifest.

    python -m water_edge.models.train.leak [--seed 7] [--clips 4000] [--out models/leak]

Reproducible from the seed: the dataset (`edge-sim dataset leak` plan, train split only), the weight
initialisation and the shuffling all derive from it. The model is a small MLP over the 40 band
features (`models.leak.features`) with the feature standardisation baked in. The decision threshold is
chosen on a validation slice of the *train* split; the eval split is only touched by `leak_eval`,
whose figures go into the manifest. Needs the `[train]` extra (TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.core.digests import sha256_file
from water_edge.models.leak import features
from water_edge.models.train.leak_data import Table, render_table

NAME = "leak_detector"
VERSION = "1.1.0"


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import importlib

    return importlib.import_module("tensorflow")


def build(tf: Any, mean: npt.NDArray[np.float64], std: npt.NDArray[np.float64], seed: int) -> Any:
    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input(shape=(features.N_FEATURES,), name="features")
    x = tf.keras.layers.Rescaling(
        scale=(1.0 / std).astype("float32"), offset=(-mean / std).astype("float32")
    )(inp)
    x = tf.keras.layers.Dense(48, activation="relu")(x)
    x = tf.keras.layers.Dropout(0.1)(x)
    x = tf.keras.layers.Dense(24, activation="relu")(x)
    out = tf.keras.layers.Dense(1, activation="sigmoid", name="leak_probability")(x)
    model = tf.keras.Model(inp, out)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3),
        loss="binary_crossentropy",
        metrics=[tf.keras.metrics.AUC(name="auc")],
    )
    return model


def best_threshold(p: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
    """The threshold maximising F1 on validation rows."""
    best, best_f1 = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 91):
        pred = p >= t
        tp = float(np.sum(pred & (y == 1)))
        prec = tp / max(float(pred.sum()), 1.0)
        rec = tp / max(float((y == 1).sum()), 1.0)
        f1 = 2 * prec * rec / max(prec + rec, 1e-9)
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return round(best, 2)


def export(tf: Any, model: Any, table: Table, out_dir: Path, quant: str) -> Path:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quant == "int8":
        rep = table.x[np.random.default_rng(0).choice(len(table.x), 500, replace=False)].astype(np.float32)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([r[None, :]] for r in rep)
    elif quant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    path = out_dir / (f"{NAME}.tflite" if quant == "float32" else f"{NAME}_{quant}.tflite")
    path.write_bytes(conv.convert())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m water_edge.models.train.leak", description=__doc__)
    ap.add_argument("--seed", type=int, default=7, help="dataset and training seed")
    ap.add_argument("--clips", type=int, default=4000, help="dataset size (train + eval clips)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "leak")
    ap.add_argument("--quant", choices=("float32", "float16", "dynamic", "int8"), default="float32")
    args = ap.parse_args(argv)
    tf = _tf()
    t0 = time.perf_counter()
    table = render_table(args.seed, args.clips, "train")
    took = time.perf_counter() - t0
    sys.stdout.write(f"train rows {len(table.y)} ({table.y.mean():.2f} leak) in {took:.0f} s\n")
    rng = np.random.default_rng(args.seed)
    # Validation by clip seed, so windows of one clip never straddle train and validation.
    clip_seeds = np.array([m["seed"] for m in table.meta])
    val_seeds = set(rng.choice(np.unique(clip_seeds), size=len(np.unique(clip_seeds)) // 6, replace=False))
    val = np.array([s in val_seeds for s in clip_seeds])
    mean, std = table.x[~val].mean(0), table.x[~val].std(0) + 1e-6
    model = build(tf, mean, std, args.seed)
    model.fit(
        table.x[~val].astype(np.float32),
        table.y[~val],
        epochs=args.epochs,
        batch_size=128,
        validation_data=(table.x[val].astype(np.float32), table.y[val]),
        verbose=2,
    )
    p_val = model.predict(table.x[val].astype(np.float32), verbose=0)[:, 0]
    threshold = best_threshold(p_val, table.y[val])
    args.out.mkdir(parents=True, exist_ok=True)
    path = export(tf, model, table, args.out, args.quant)
    vectors = table.x[:3].astype(np.float32)
    outputs = model.predict(vectors, verbose=0)
    manifest = {
        "name": NAME, "version": VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_file": path.name, "sha256": sha256_file(path),
        "input": {"shape": [-1, features.N_FEATURES], "dtype": "float32"},
        "output": {"shape": [-1, 1], "dtype": "float32"},
        "sample_rate": features.SAMPLE_RATE, "threshold": threshold,
        "training_data": (
            f"edge-sim dataset leak, seed {args.seed}, train split of {args.clips} clips "
            f"({len(table.y)} windows of {features.WINDOW_S:g} s, both channels): ductile iron, steel, "
            "cast iron, PVC, PE; DN63-600; leak size 0.2-3; SNR -25..+20 dB; flow, pump, traffic "
            "(two rumble modes), transient backgrounds; simulator v1.1 (plastic leak and background "
            "recalibrated against the real PVC recordings' PSDs). No real recordings in training."
        ),
        "metrics": {},
        "self_test": [
            {"input": vectors[i : i + 1].tolist(), "output": outputs[i : i + 1].tolist(), "atol": 2e-3}
                      for i in range(len(vectors))],
        "extra": {"dataset_seed": args.seed, "dataset_clips": args.clips,
                  "features": "models.leak.features v1.1: 20 log-spaced bands 10-3600 Hz from 8192-point "
                  "(1.024 s) frames, hop 1024, rel. level dB + frame spread dB",
                  "window_s": features.WINDOW_S, "quantisation": args.quant,
                  "validation_threshold_rule": "max F1 on validation clips of the train split",
                  "train_seconds": round(time.perf_counter() - t0, 1)},
    }  # fmt: skip
    mpath = args.out / f"{NAME}.json"
    mpath.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {path} and {mpath}; threshold {threshold}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
