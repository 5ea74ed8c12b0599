"""Trains the shared pump window scorer and writes `models/pump/pump_scorer.tflite` + its manifest.

    .venv/bin/python -m water_edge.models.train.pump_train [--seed 7] [--cases 72]

Needs the `[train]` extra (TensorFlow). The scorer reads one channel's calibrated window
(relation residual, z-score) x 32 samples and returns a non-negative abnormality. It is trained
"multiple instance" style: a pump window is faulty if any of its channels is, so the loss sees the
maximum over channels, as the detector does. Fault types in `HELD_OUT` are never shown to it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from water_edge.core.digests import sha256_file
from water_edge.models.train.pump_data import MAX_CHANNELS, WINDOW, build, random_cases
from water_edge.models.train.pump_sim import FAULTS

TRAIN_FAULTS = ("bearing_wear", "cavitation", "outlet_valve", "sensor_drift")
HELD_OUT = tuple(f for f in FAULTS if f not in TRAIN_FAULTS)  # imbalance, inlet_valve, sensor_stuck
OUT_DIR = Path(__file__).resolve().parents[1] / "pump"
NAME = "pump_scorer"
VERSION = "1.1.0"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cases", type=int, default=72)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--jobs", type=int, default=2, help="processes simulating scenarios")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf: Any = importlib.import_module("tensorflow")  # the [train] extra; untyped

    tf.keras.utils.set_random_seed(args.seed)
    cases = random_cases(args.seed, args.cases, TRAIN_FAULTS)
    x, mask, y = build(cases, jobs=args.jobs)
    print(f"training windows: {len(x)} ({y.mean():.2f} faulty) from {len(cases)} scenarios")  # noqa: T201

    dense1 = tf.keras.layers.Dense(32, activation="relu", name="d1")
    dense2 = tf.keras.layers.Dense(16, activation="relu", name="d2")
    logit = tf.keras.layers.Dense(1, name="logit")

    def channel_net(t: Any) -> Any:
        return logit(dense2(dense1(t)))

    inp = tf.keras.Input((MAX_CHANNELS, WINDOW, 2))
    inp_mask = tf.keras.Input((MAX_CHANNELS,))
    flat = tf.keras.layers.Reshape((MAX_CHANNELS, WINDOW * 2))(inp)
    per_channel = tf.keras.layers.Reshape((MAX_CHANNELS,))(channel_net(flat))
    masked = tf.keras.layers.Lambda(lambda a: a[0] + (a[1] - 1.0) * 1e4)([per_channel, inp_mask])
    pump_logit = tf.keras.layers.Lambda(lambda a: tf.reduce_max(a, axis=1, keepdims=True))(masked)
    trainer = tf.keras.Model([inp, inp_mask], pump_logit)
    trainer.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3), loss=tf.keras.losses.BinaryCrossentropy(from_logits=True)
    )
    perm = np.random.default_rng(args.seed).permutation(len(x))
    trainer.fit(
        [x[perm], mask[perm]],
        y[perm].astype(np.float32),
        epochs=args.epochs,
        batch_size=256,
        validation_split=0.1,
        verbose=2,
    )

    # The shipped graph is rebuilt from the trained weights as constants: plain matmuls convert
    # to TFLite the same way in every TensorFlow/Keras version.
    (w1, b1), (w2, b2), (w3, b3) = (layer.get_weights() for layer in (dense1, dense2, logit))

    def forward(t: Any) -> Any:
        h = tf.reshape(t, [-1, WINDOW * 2])
        h = tf.nn.relu(tf.matmul(h, tf.constant(w1)) + tf.constant(b1))
        h = tf.nn.relu(tf.matmul(h, tf.constant(w2)) + tf.constant(b2))
        logit = tf.matmul(h, tf.constant(w3)) + tf.constant(b3)
        # softplus written so it cannot overflow: TFLite's kernel returns inf past a logit of ~88,
        # which a faulty signal's window reaches.
        return tf.nn.relu(logit) + tf.math.log(1.0 + tf.exp(-tf.abs(logit)))

    serve = tf.function(forward, input_signature=[tf.TensorSpec([None, WINDOW, 2], tf.float32)])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    blob = converter.convert()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / f"{NAME}.tflite"
    model_path.write_bytes(blob)

    probe = x[perm[:4], 0]
    want = serve(tf.constant(probe)).numpy()
    manifest = {
        "name": NAME,
        "version": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_file": model_path.name,
        "sha256": sha256_file(model_path),
        "input": {"shape": [-1, WINDOW, 2], "dtype": "float32"},
        "output": {"shape": [-1, 1], "dtype": "float32"},
        "sample_rate": 1.0,
        "threshold": None,
        "training_data": (
            f"{len(cases)} firmware-sim pump scenarios (seed {args.seed}, 24 h of normal duty for "
            "calibration then 2 h scored, 1 s samples, random pump "
            f"curve/size, noise, quantisation, missing cells, random subset of signals); faults "
            f"{', '.join(TRAIN_FAULTS)}; held out: {', '.join(HELD_OUT)}. Threshold is per pump "
            "(calibration)."
        ),
        "metrics": {},
        "self_test": [{"input": probe.tolist(), "output": want.tolist(), "atol": 1e-4}],
        "extra": {"window": WINDOW, "train_faults": list(TRAIN_FAULTS), "held_out": list(HELD_OUT)},
    }
    (args.out / f"{NAME}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {model_path} ({len(blob)} bytes)")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
