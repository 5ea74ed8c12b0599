"""`edge-agent models score leak` and `edge-agent models locate`: the leak models on recorded WAV files.

    edge-agent models score leak FILE.wav [FILE.wav ...]
    edge-agent models locate PAIR.wav --distance M (--material NAME [--diameter MM] | --wave-speed M_S)
    edge-agent models locate A.wav B.wav --distance M ... [--offset-s S]

Output is JSON (one line per scored file). A file that cannot be read or scored gives one line on
stderr and exit code 2; the other files are still scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def register(models_sub: Any, score_sub: Any) -> None:
    leak = score_sub.add_parser("leak", help="leak probability of WAV recordings (one JSON line each)")
    leak.add_argument("files", nargs="+", type=Path, metavar="FILE.wav")
    leak.add_argument("--model", type=Path, default=None, help="model manifest (default: the shipped one)")
    leak.set_defaults(func=cmd_score_leak)

    loc = models_sub.add_parser("locate", help="leak position between two hydrophones (JSON)")
    loc.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="WAV",
        help="one 2-channel WAV (channel 0 = sensor A) or two WAVs: A.wav B.wav",
    )
    loc.add_argument("--distance", type=float, required=True, metavar="M", help="sensor spacing in metres")
    speed = loc.add_mutually_exclusive_group(required=True)
    speed.add_argument("--material", help="ductile_iron, steel, cast_iron, pvc or pe")
    speed.add_argument("--wave-speed", type=float, metavar="M_PER_S")
    loc.add_argument(
        "--diameter", type=float, default=150.0, metavar="MM", help="inner diameter (default 150)"
    )
    loc.add_argument("--weighting", choices=("phat", "scot"), default="phat")
    loc.add_argument(
        "--offset-s",
        type=float,
        default=0.0,
        help="with two WAVs: start of B minus start of A, in seconds (from their timestamps)",
    )
    loc.set_defaults(func=cmd_locate)


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


def _err(message: str) -> None:
    sys.stderr.write(f"edge-agent models: {message}\n")


def cmd_score_leak(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.models.leak.detector import DEFAULT_MANIFEST, LeakScorer
    from water_edge.models.leak.wavio import WavError, read_wav
    from water_edge.models.manifest import ModelError
    from water_edge.models.runtime import load_model

    logs.configure("warning", json=False)
    try:
        scorer = LeakScorer(load_model(args.model or DEFAULT_MANIFEST))
    except ModelError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    status = EXIT_OK
    for path in args.files:
        try:
            samples, rate = read_wav(path)
            notes = [f"{rate} Hz, {samples.shape[1]} channel(s), {samples.shape[0] / rate:.2f} s"]
            score = scorer.score(samples, rate)
        except (WavError, ValueError, ModelError) as exc:
            _err(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            status = EXIT_BAD_INPUT
            continue
        body = score.to_json()
        body["input"] = notes + body["input"]
        _out(
            {
                "file": str(path),
                **body,
                "threshold": scorer.threshold,
                "leak": score.leak_probability >= scorer.threshold,
                "model": scorer.model.version,
            }
        )
    return status


def cmd_locate(args: argparse.Namespace) -> int:
    import numpy as np

    from water_edge.models.leak.localise import locate
    from water_edge.models.leak.wavio import WavError, read_wav

    notes: list[str] = []
    try:
        if len(args.files) == 1:
            x, rate = read_wav(args.files[0])
            if x.shape[1] < 2:
                raise WavError(f"{args.files[0]}: has 1 channel; give a 2-channel WAV or two files")
            a, b = x[:, 0], x[:, 1]
            if x.shape[1] > 2:
                notes.append(f"used channels 0 and 1 of {x.shape[1]}")
        elif len(args.files) == 2:
            xa, rate = read_wav(args.files[0])
            xb, rate_b = read_wav(args.files[1])
            a, b = xa[:, 0], xb[:, 0]
            if rate_b != rate:
                b = _resample(b, rate_b, rate)
                notes.append(f"B resampled from {rate_b} Hz to {rate} Hz")
            # Align on the recording clocks: drop the head of whichever file started first.
            shift = round(args.offset_s * rate)
            if shift > 0:
                a = a[shift:]
            elif shift < 0:
                b = b[-shift:]
            n = min(a.size, b.size)
            a, b = a[:n], b[:n]
        else:
            raise WavError("give one 2-channel WAV or two WAVs (A then B)")
        loc = locate(
            np.asarray(a),
            np.asarray(b),
            rate,
            args.distance,
            material=args.material,
            diameter_mm=args.diameter,
            wave_speed_m_s=args.wave_speed,
            weighting=args.weighting,
        )
    except (WavError, ValueError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    _out({**loc.to_json(), "input": notes, "files": [str(f) for f in args.files]})
    return EXIT_OK


def _resample(x: Any, rate_from: int, rate_to: int) -> Any:
    from fractions import Fraction

    from scipy import signal

    ratio = Fraction(rate_to, rate_from).limit_denominator(1000)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator)
