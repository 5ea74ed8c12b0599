"""`edge-agent models ...`: check models offline on historical data and calibrate pumps.

    edge-agent models score pump --csv FILE --calibrate-rows N [--model MANIFEST]

The leak detector adds `score leak` and `locate` through `models.leak.cli.register(models_sub,
score_sub)` when that module is installed. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_PUMP_MODEL = Path(__file__).resolve().parents[2] / "models" / "pump" / "pump_scorer.json"


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="score data with the on-device models, calibrate pumps")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    score = models_sub.add_parser("score", help="score a file offline with a model")
    score_sub = score.add_subparsers(dest="score_model", required=True)

    pump = score_sub.add_parser(
        "pump", help="pump anomaly scores for a CSV (header; timestamp, then numeric signals)")
    pump.add_argument("--csv", required=True, type=Path, help="history file, ',' or ';' separated")
    pump.add_argument("--calibrate-rows", required=True, type=int,
                      help="the first N data rows are normal operation, used to calibrate only")
    pump.add_argument("--model", type=Path, default=DEFAULT_PUMP_MODEL, help="model manifest")
    pump.add_argument("--persistence", type=int, default=5, help="rows above threshold to alarm")
    pump.add_argument("--clear-after", type=int, default=30, help="rows below to clear an alarm")
    pump.set_defaults(func=cmd_score_pump)

    try:
        leak_cli = importlib.import_module("models.leak.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "models.leak.cli":
            raise
    else:
        leak_cli.register(models_sub, score_sub)


def _error(message: str) -> int:
    sys.stderr.write(f"edge-agent models: {message}\n")
    return EXIT_USAGE


def _warn(message: str) -> None:
    sys.stderr.write(f"edge-agent models: warning: {message}\n")


def cmd_score_pump(args: argparse.Namespace) -> int:
    from agent import logs
    from models.manifest import ModelError
    from models.pump.offline import score_csv
    from models.runtime import load_model

    logs.configure("warning", json=False)  # stdout carries the CSV and nothing else
    if args.persistence < 1 or args.clear_after < 1:
        return _error("--persistence and --clear-after must be at least 1")
    try:
        model = load_model(args.model)
        lines = score_csv(
            args.csv, args.calibrate_rows, model,
            window=int(model.manifest.extra.get("window", 32)), model_version=model.version,
            persistence=args.persistence, clear_after=args.clear_after,
            warn=_warn,
        )
    except ModelError as exc:
        return _error(str(exc))
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK
