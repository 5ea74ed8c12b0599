"""How often `edge-agent models score leak FILE.wav` (the classifier alone, no baseline) says leak on
audio without one: the rate a user sees when trying the README's `edge-sim hydrophones` example.

`edge-sim hydrophones` at its defaults (no leak, ductile iron, 10 dB SNR, every background) for
`--files` seeds of `--seconds` each, rendered in-process as the command renders them, scored with
the shipped classifier as the CLI scores them (mean window probability, channel A). Prints the share
of files above each threshold and writes them as JSON (`--json`), which docs/leak-detection.md and
the CLI's note quote.

    python -m water_edge.models.train.leak_cli_false_alarms --files 40 --json docs/leak-cli-false-alarms.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from water_edge.models.leak.detector import LeakScorer
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

THRESHOLDS = (0.36, 0.5, 0.6, 0.7, 0.8)
RATE = 16000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--first-seed", type=int, default=1000)  # seeds the README's examples do not use
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    scorer = LeakScorer()
    probs = []
    for i in range(args.files):
        scene = PipeScene(
            material="ductile_iron",
            diameter_mm=150.0,
            spacing_m=100.0,
            leak_position_m=None,
            leak_size=1.0,
            snr_db=10.0,
            backgrounds=tuple(BACKGROUNDS),
            sample_rate=RATE,
            channels=2,
            seed=args.first_seed + i,
        )
        samples = HydrophoneSynth(scene).render(round(args.seconds * RATE))
        probs.append(scorer.score(np.asarray(samples, dtype=np.float64), RATE).leak_probability)
        sys.stderr.write(f"\r{i + 1}/{args.files} files scored")
    sys.stderr.write("\n")
    rates = {f"{t:g}": float(np.mean(np.array(probs) >= t)) for t in THRESHOLDS}
    result = {
        "what": "share of simulated no-leak files the classifier alone calls leak, per threshold",
        "files": args.files,
        "seconds": args.seconds,
        "first_seed": args.first_seed,
        "shipped_threshold": scorer.threshold,
        "false_alarm_rate": rates,
        "probability_median": float(np.median(probs)),
    }
    for t, r in rates.items():
        sys.stdout.write(f"threshold {t}: {r:.0%} of {args.files} no-leak files called leak\n")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
