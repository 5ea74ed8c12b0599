"""How short a check `edge-agent models calibrate leak` / `score leak --check-s` can take: the false
alarms of the walkthrough's protocol on simulated recordings, per check length.

Each file is an `edge-sim hydrophones` recording of one site with no leak (8 kHz, one channel,
`--seconds` long, of each of `--materials`, every background, written as the command writes it). As in the
real-recording protocol of docs/leak-detection.md, the baseline is learnt from its first half and its
second half is judged as one night, both cut into checks of the same length: any warning or leak
there is a false one. The quiet level of a check is the 10th percentile of its one-second levels; of
a few levels that is about their minimum, so short checks scatter and the judgement's thresholds,
learnt from few checks, do not hold. Prints, per check length, the share of files warned about and
called leak, and of their checks positive; and the same judged against a baseline learnt from
8 s checks (the low percentile of fewer levels sits higher: a rise that is no sound). `--json`
writes them; docs/leak-detection.md quotes them.

    python -m water_edge.models.train.leak_check_length --files 100 --json docs/leak-check-length.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from water_edge.models.leak.baseline import Baseline
from water_edge.models.leak.detector import LeakScorer
from water_edge.models.leak.judge import JudgeParams, confirmed, judge
from water_edge.models.leak.recording import file_checks
from water_edge.sim.hydrophone_stream import main as render

CHECK_LENGTHS = (2, 3, 4, 5, 6, 8)
DEFAULT = 8  # `--check-s`'s default


def _render(path: Path, seconds: float, material: str, seed: int) -> None:
    argv = ["--wav", str(path), "--seconds", f"{seconds:g}", "--sample-rate", "8000", "--channels", "1"]
    argv += ["--material", material, "--seed", str(seed), "--site-seed", str(seed)]
    with contextlib.redirect_stdout(io.StringIO()):  # its one line per file written
        done = render(argv)
    if done != 0:
        raise SystemExit(f"edge-sim hydrophones failed for seed {seed}")


def _baseline(path: Path, half: float, check_s: int, material: str, scorer: LeakScorer) -> Baseline:
    learnt = file_checks(path, check_s=check_s, scorer=scorer, span=(None, half))
    return Baseline.learn(learnt, sensor=path.stem, material=material)


def _false_alarms(
    path: Path, half: float, check_s: int, baseline: Baseline, scorer: LeakScorer
) -> tuple[int, int, bool]:
    """(positive checks, checks, leak) of the second half of a no-leak file, in checks of `check_s`,
    against `baseline` (learnt from its first half)."""
    judged = file_checks(path, check_s=check_s, scorer=scorer, span=(half, None))
    params = JudgeParams(material=baseline.material, diameter_mm=150.0)
    js = [judge(c, baseline, params) for c in judged]
    return sum(j.positive for j in js), len(js), confirmed(js)


def _rates(counts: dict[int, list[int]], files: int) -> dict[str, dict[str, float]]:
    return {
        str(c): {"warning": w / files, "leak": n / files, "positive_check": p / max(k, 1)}
        for c, (w, n, p, k) in counts.items()
    }


def _print(title: str, rates: dict[str, dict[str, float]]) -> None:
    sys.stdout.write(f"{title}\n")
    for c, r in rates.items():
        sys.stdout.write(
            f"  --check-s {c}: warning on {r['warning']:.0%}, leak on {r['leak']:.0%} of files; "
            f"{r['positive_check']:.1%} of checks positive\n"
        )


def _material(material: str, args: argparse.Namespace, scorer: LeakScorer) -> dict[str, object]:
    """The false alarms on `args.files` recordings of `material`, per check length."""
    half = args.seconds // 2
    # per check length: warned files, leak files, positive checks, checks
    same = {c: [0, 0, 0, 0] for c in CHECK_LENGTHS}  # baseline learnt at that length too
    other = {c: [0, 0, 0, 0] for c in CHECK_LENGTHS}  # against the default length's baseline
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.files):
            path = Path(tmp) / f"quiet-{i}.wav"
            _render(path, args.seconds, material, args.first_seed + i)
            default = _baseline(path, half, DEFAULT, material, scorer)
            for c in CHECK_LENGTHS:
                own = _baseline(path, half, c, material, scorer)
                for counts, baseline in ((same, own), (other, default)):
                    positive, checks, leak = _false_alarms(path, half, c, baseline, scorer)
                    counts[c][0] += positive > 0
                    counts[c][1] += leak
                    counts[c][2] += positive
                    counts[c][3] += checks
            sys.stderr.write(f"\r{material}: {i + 1}/{args.files} files judged")
    sys.stderr.write("\n")
    rates, mismatched = _rates(same, args.files), _rates(other, args.files)
    _print(f"{material}, calibrated and judged in checks of the same length:", rates)
    _print(f"{material}, judged against a baseline learnt from {DEFAULT} s checks:", mismatched)
    return {"same_length": rates, f"against_{DEFAULT}_s_baseline": mismatched}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--seconds", type=float, default=36.0)  # the real test-bed files' length
    p.add_argument("--materials", default="pvc,ductile_iron")
    p.add_argument("--first-seed", type=int, default=5000)  # seeds no other evaluation uses
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    scorer = LeakScorer()
    found = {m: _material(m, args, scorer) for m in args.materials.split(",")}
    if args.json is not None:
        result = {
            "what": "share of simulated no-leak recordings (second half judged against a baseline from "
            "the first) warned about / called leak, and share of their checks positive, per check "
            "length in seconds",
            "files": args.files,
            "seconds": args.seconds,
            "first_seed": args.first_seed,
            "false_alarm_rate": found,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
