"""`edge-agent models ...`: check models offline on historical data and calibrate pumps and machines.

    edge-agent models score pump --csv FILE --calibrate-rows N|--calibrate-until TIME [--label COLUMN]
        [--causal] [--explain] [--persistence N] [--clear-after N] [--model MANIFEST]
    edge-agent models score pump --pump NAME [--from T] [--to T] [-c CONFIG] [--state-dir DIR]
    edge-agent models calibrate pump --pump NAME --from T --to T [-c CONFIG] [--state-dir DIR]
    edge-agent models score machine-sound --features FILE.npy --calibrate FILE.npy
    edge-agent models features machine-sound REC.wav ... --out FILE.npy
    edge-agent models calibrate machine-sound --machine NAME [--from T --to T] [-c CONFIG]

The leak detector adds `score leak`, `calibrate leak` and `locate` through
`models.leak.cli.register(models_sub, score_sub, calibrate_sub)`, night-flow detection adds
`score flow-leak` through `models.flow_leak.cli.register(score_sub)`, when installed. Errors are
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from water_edge.agent.commands._exits import EXIT_OK, EXIT_USAGE
from water_edge.models.gateway_args import add_history_arguments, config_path


def register(subparsers: Any) -> None:
    models = subparsers.add_parser(
        "models", help="score files offline, calibrate pumps, machines and hydrophones, locate leaks"
    )
    models_sub = models.add_subparsers(dest="models_command", required=True)
    score = models_sub.add_parser("score", help="score a file offline with a model")
    score_sub = score.add_subparsers(dest="score_model", required=True)

    pump = score_sub.add_parser(
        "pump", help="pump anomaly scores for a CSV (header; timestamp, then numeric signals)"
    )
    pump.add_argument(
        "--csv", type=Path, metavar="FILE", help="history file, ',' ';' or tab separated, UTF-8 or UTF-16"
    )
    calibration = pump.add_mutually_exclusive_group()
    calibration.add_argument(
        "--calibrate-rows",
        type=int,
        metavar="N",
        help="the first N data rows are normal operation, used to calibrate only (fewer than the "
        "file's: a row must be left to score; under 3600 the steady-state detector scores, else the "
        "gateway's)",
    )
    calibration.add_argument(
        "--calibrate-until",
        metavar="TIME",
        help="the rows stamped before TIME are normal operation (as the file writes times; "
        "without an offset, local time); TIME must be at or before the last row's",
    )
    pump.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="the gateway detector's scorer manifest (default: the shipped scorer)",
    )
    pump.add_argument(
        "--persistence",
        type=int,
        default=None,
        metavar="N",
        help="rows above threshold to alarm (default: the detector's, 5)",
    )
    pump.add_argument(
        "--clear-after",
        type=int,
        default=None,
        metavar="N",
        help="rows below to clear an alarm (default: the detector's, 20 for calibrations "
        "under an hour, else 30)",
    )
    pump.add_argument(
        "--causal",
        action="store_true",
        help="flag rows as a live gateway would, when an alarm is confirmed (default: an alarm "
        "is marked from where its score began to rise, at most a minute earlier)",
    )
    pump.add_argument(
        "--explain",
        action="store_true",
        help="add a 'signals' column: on each marked row the signals it stands on and which way "
        "they moved (above, below, noisier, steadier, frozen)",
    )
    pump.add_argument(
        "--label",
        metavar="COLUMN",
        help="a column of the file that labels rows 1 (anomalous) or 0 (normal), empty if unknown "
        "(other numbers are refused): not scored; the marked rows are compared with it (F1, "
        "false alarms, missed, delays)",
    )
    pump.add_argument(
        "--pump",
        metavar="NAME",
        help="instead of --csv: score again the samples this gateway kept of a pump ([[models.pump]] name)",
    )
    add_history_arguments(pump, "--pump")
    pump.set_defaults(func=cmd_score_pump)

    calibrate = models_sub.add_parser(
        "calibrate", help="calibrate a model on the gateway's own history (e.g. after maintenance)"
    )
    calibrate_sub = calibrate.add_subparsers(dest="calibrate_model", required=True)
    cal_pump = calibrate_sub.add_parser(
        "pump", help="new calibration version for one pump from its feature history"
    )
    cal_pump.add_argument("--pump", required=True, help="pump name ([[models.pump]] name)")
    cal_pump.add_argument(
        "--from",
        dest="from_ts",
        required=True,
        help="start of normal operation: ISO 8601 (UTC if no zone) or epoch seconds",
    )
    cal_pump.add_argument("--to", dest="to_ts", required=True, help="end of normal operation")
    cal_pump.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="agent config with [[models.pump]] (default $EDGE_AGENT_CONFIG or /etc/edge-agent/config.toml)",
    )
    cal_pump.add_argument("--state-dir", type=Path, default=None, help="override gateway.state_dir")
    cal_pump.add_argument("--model", type=Path, default=None, help="model manifest (default: the pump's)")
    cal_pump.set_defaults(func=cmd_calibrate_pump)
    _register_machine_sound(models_sub, score_sub, calibrate_sub)

    try:
        leak_cli = importlib.import_module("water_edge.models.leak.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "water_edge.models.leak.cli":
            raise
    else:
        leak_cli.register(models_sub, score_sub, calibrate_sub)
    try:
        flow_cli = importlib.import_module("water_edge.models.flow_leak.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "water_edge.models.flow_leak.cli":
            raise
    else:
        flow_cli.register(score_sub)


def _error(message: str) -> int:
    sys.stderr.write(f"edge-agent models: {message}\n")
    return EXIT_USAGE


def _closed(exc: PermissionError) -> int:
    """A file of the gateway's state directory (0750, the agent's) this user may not open."""
    from water_edge.agent.locate import state_access_hint
    from water_edge.core.files import printable_name

    if exc.filename is None:
        return _error(f"{exc.strerror or exc}: run as root or as the agent's user")
    where = Path(os.fsdecode(exc.filename))
    return _error(f"{printable_name(where)}: {exc.strerror or exc}: {state_access_hint(where)}")


def _warn(message: str) -> None:
    sys.stderr.write(f"edge-agent models: warning: {message}\n")


def cmd_score_pump(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.models.manifest import ModelError
    from water_edge.models.pump.explain import summary
    from water_edge.models.pump.offline import score_csv
    from water_edge.models.pump.processor import DEFAULT_MANIFEST
    from water_edge.models.runtime import load_model

    logs.configure("warning", json=False)  # stdout carries the CSV and nothing else
    if args.pump is not None:
        if any(v is not None for v in (args.csv, args.calibrate_rows, args.calibrate_until, args.label)):
            return _error(
                "give either --csv with --calibrate-rows/--calibrate-until (and --label), "
                "or --pump (with --from/--to)"
            )
        return _replay_pump(args)
    if args.csv is None or (args.calibrate_rows is None and args.calibrate_until is None):
        return _error("give --csv FILE with --calibrate-rows N or --calibrate-until TIME, or --pump P")
    if (args.persistence is not None and args.persistence < 1) or (
        args.clear_after is not None and args.clear_after < 1
    ):
        return _error("--persistence and --clear-after must be at least 1")
    try:
        model = load_model(args.model or DEFAULT_MANIFEST)
        scored_csv = score_csv(
            args.csv,
            args.calibrate_rows,
            model,
            window=int(model.manifest.extra.get("window", 32)),
            model_version=model.version,
            persistence=args.persistence,
            clear_after=args.clear_after,
            causal=args.causal,
            explained=args.explain,
            calibrate_until=args.calibrate_until,
            label=args.label,
            warn=_warn,
        )
    except ModelError as exc:
        return _error(str(exc))
    scored_csv.write(sys.stdout)
    marked = scored_csv.marked
    scored = max(0, len(scored_csv.timestamps) - scored_csv.calibrate_rows)
    sys.stderr.write(
        f"edge-agent models: {marked:,} of {scored:,} rows after the {scored_csv.calibrate_rows:,} "
        "calibration rows marked anomalous\n"
    )
    if scored_csv.texts is not None and marked:
        sys.stderr.write(f"edge-agent models: signals behind the marked rows: {summary(scored_csv.texts)}\n")
    if (compared := scored_csv.compared()) is not None:
        for line in compared.lines():
            sys.stderr.write(f"edge-agent models: against --label {args.label}: {line}\n")
    return EXIT_OK


def _named_table(
    args: argparse.Namespace, load: Callable[[Path], tuple[Path, Sequence[Any]]], name: str, what: str
) -> tuple[Path, Any] | str:
    """The gateway's state directory (-c, --state-dir) and the table of `load`ed ones named `name`,
    or why not."""
    config = config_path(args.config)
    try:
        state_dir, tables = load(config)
    except ValueError as exc:
        return str(exc)
    table = next((t for t in tables if t.name == name), None)
    if table is None:
        known = ", ".join(t.name for t in tables) or "none"
        return f"no {what} {name!r} in {config} (configured: {known})"
    return args.state_dir or state_dir, table


def _pump_config(args: argparse.Namespace) -> tuple[Path, Any] | str:
    from water_edge.models.pump.config import load_pump_section

    return _named_table(args, load_pump_section, args.pump, "pump")


def _replay_pump(args: argparse.Namespace) -> int:
    from water_edge.core.processor import CalibrationFailedError
    from water_edge.models.manifest import ModelError
    from water_edge.models.pump.processor import DEFAULT_MANIFEST
    from water_edge.models.pump.replay import replay_pump
    from water_edge.models.runtime import load_model

    found = _pump_config(args)
    if isinstance(found, str):
        return _error(found)
    state_dir, cfg = found
    try:
        model = load_model(args.model or cfg.model or DEFAULT_MANIFEST)
        window = int(model.manifest.extra.get("window", 32))
        cal, lines = replay_pump(cfg, state_dir, model, window, {"from": args.from_ts, "to": args.to_ts})
        raised = 0
        for line in lines:
            sys.stdout.write(line + "\n")
            raised += line.endswith(",raised")
    except (CalibrationFailedError, ModelError) as exc:
        return _error(str(exc))
    except PermissionError as exc:
        return _closed(exc)
    sys.stderr.write(
        f"edge-agent models: pump {cfg.name} scored again against calibration v{cal.version} "
        f"(threshold {cal.threshold:.4g}): the alarm was raised {raised} time(s)\n"
    )
    return EXIT_OK


def cmd_calibrate_pump(args: argparse.Namespace) -> int:
    import json

    from water_edge.core import logs
    from water_edge.core.instants import instant_ns
    from water_edge.core.processor import CalibrationFailedError
    from water_edge.models.pump.calibration import calibrate_pump, short_span

    logs.configure("warning", json=False)
    found = _pump_config(args)
    if isinstance(found, str):
        return _error(found)
    state_dir, cfg = found
    try:
        from_ns, to_ns = instant_ns(args.from_ts), instant_ns(args.to_ts)
    except ValueError as exc:
        return _error(str(exc))
    if to_ns <= from_ns:
        return _error("--to must be after --from")
    try:
        cal = calibrate_pump(cfg, state_dir, from_ns, to_ns, args.model)
    except CalibrationFailedError as exc:
        return _error(str(exc))
    except PermissionError as exc:  # the state directory is the agent's
        return _closed(exc)
    if (short := short_span(cal, cfg.sample_interval_s)) is not None:
        _warn(short)
    sys.stdout.write(
        json.dumps(
            {
                "pump": cfg.name,
                "version": cal.version,
                "rows": cal.n_samples,
                "from": cal.from_ts,
                "to": cal.to_ts,
                "threshold": round(cal.threshold, 6),
                "channels": cal.channels,
                "dropped": cal.dropped,
            }
        )
        + "\n"
    )
    return EXIT_OK


# -- machine sound ------------------------------------------------------------------------------


def _register_machine_sound(models_sub: Any, score_sub: Any, calibrate_sub: Any) -> None:
    sound = score_sub.add_parser(
        "machine-sound",
        help="machine-sound anomaly scores for clip features (JSON lines: row, score, anomaly)",
    )
    sound.add_argument(
        "--features",
        nargs="+",
        type=Path,
        help="clips to score: .npy arrays (clips, 136) or WAV recordings (10 s clips)",
    )
    sound.add_argument(
        "--calibrate",
        nargs="+",
        type=Path,
        help="normal sound of the same machine: .npy arrays (clips, 136) or WAV recordings",
    )
    sound.add_argument(
        "--machine",
        help="instead: score again the clips this gateway kept of a machine ([[models.machine_sound]] name)",
    )
    add_history_arguments(sound, "--machine")
    sound.add_argument(
        "--prior",
        choices=("pump", "none"),
        default="none",
        help="what the machine's covariance is shrunk towards: nothing (default) or how pumps sound "
        "(helps a short calibration file, <= 100 clips, that spans the machine's normal)",
    )
    sound.set_defaults(func=cmd_score_machine_sound)

    features = models_sub.add_parser("features", help="compute model features from recordings")
    features_sub = features.add_subparsers(dest="features_model", required=True)
    wav = features_sub.add_parser(
        "machine-sound", help="the 136 clip features of each 10 s of WAV recordings, as one .npy"
    )
    wav.add_argument("wav", nargs="+", type=Path, help="PCM WAV files (channels are averaged)")
    wav.add_argument("--out", required=True, type=Path, help="output .npy (clips, 136)")
    wav.set_defaults(func=cmd_features_machine_sound)

    cal = calibrate_sub.add_parser(
        "machine-sound", help="new calibration version for one machine from its clip history"
    )
    cal.add_argument("--machine", required=True, help="machine name ([[models.machine_sound]] name)")
    cal.add_argument(
        "--from", dest="from_ts", default=None, help="start of normal sound: ISO 8601 or epoch s"
    )
    cal.add_argument("--to", dest="to_ts", default=None, help="end of normal sound (default: now)")
    cal.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="agent config (default $EDGE_AGENT_CONFIG or /etc/edge-agent/config.toml)",
    )
    cal.add_argument("--state-dir", type=Path, default=None, help="override gateway.state_dir")
    cal.set_defaults(func=cmd_calibrate_machine_sound)


def cmd_score_machine_sound(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.models.machine_sound.detector import MAX_FEATURE, MIN_CLIPS, CalibrationError, plausible
    from water_edge.models.machine_sound.offline import Clips, InputError, other_rates, score_clips
    from water_edge.models.manifest import ModelError

    logs.configure("warning", json=False)
    if args.machine is not None:
        if args.features or args.calibrate:
            return _error("give either --features with --calibrate, or --machine (with --from/--to)")
        return _replay_machine_sound(args)
    if not args.features or not args.calibrate:
        return _error("give --features and --calibrate files, or --machine M to score its stored clips")
    try:
        normal = Clips.read(args.calibrate)
        if silent := int(normal.silent.sum()):
            _warn(f"{silent} calibration clip(s) of digital silence left out (the microphone was not heard)")
        unusable = int((~plausible(normal.features)).sum())
        if unusable and len(normal.features) - unusable >= MIN_CLIPS:  # fewer: the error says it
            _warn(
                f"{unusable} calibration clip(s) left out: non-finite features, or beyond ±{MAX_FEATURE:g} "
                "(an export's placeholder, not a sound)"
            )
        features = Clips.read(args.features)
        for warning in other_rates(features, normal):
            _warn(warning)
        try:
            lines = list(score_clips(features, normal, prior=args.prior))
        except (CalibrationError, InputError) as exc:  # the files were read: it is what they hold
            raise ModelError(f"--calibrate {' '.join(map(str, args.calibrate))}: {exc}") from None
    except ModelError as exc:
        return _error(str(exc))
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def cmd_features_machine_sound(args: argparse.Namespace) -> int:
    import numpy as np

    from water_edge.core import logs
    from water_edge.models.machine_sound.offline import wav_clips
    from water_edge.models.manifest import ModelError

    logs.configure("warning", json=False)
    try:
        read = [wav_clips(p) for p in args.wav]
    except ModelError as exc:
        return _error(str(exc))
    # A .npy keeps no sample rate, and a score cannot warn later about clips of another rate than
    # the calibration's (their top bands differ: `other_rates`), so one file holds one rate.
    by_rate: dict[int, list[str]] = {}
    for path, (_, rate) in zip(args.wav, read, strict=True):
        by_rate.setdefault(rate, []).append(str(path))
    if len(by_rate) > 1:
        said = "; ".join(f"{rate} Hz: {', '.join(paths)}" for rate, paths in sorted(by_rate.items()))
        return _error(
            f"the recordings are at {len(by_rate)} sample rates ({said}); a features file keeps no rate, "
            "so write one --out per rate"
        )
    x = np.vstack([features for features, _ in read])
    try:
        with open(args.out, "wb") as fh:  # the name given: np.save(path) would append ".npy" to it
            np.save(fh, x.astype(np.float32))
    except OSError as exc:
        return _error(f"{args.out}: {exc.strerror or exc}")
    sys.stdout.write(f"{args.out}: {len(x)} clips x {x.shape[1]} features\n")
    return EXIT_OK


def _machine_section(args: argparse.Namespace) -> tuple[Path, Any] | str:
    from water_edge.models.machine_sound.config import load_machine_sound_sections

    return _named_table(args, load_machine_sound_sections, args.machine, "machine")


def _replay_machine_sound(args: argparse.Namespace) -> int:
    import json

    from water_edge.core.processor import CalibrationFailedError
    from water_edge.models.machine_sound.replay import replay_machine

    found = _machine_section(args)
    if isinstance(found, str):
        return _error(found)
    state_dir, section = found
    try:
        cal, clips = replay_machine(section, state_dir, {"from": args.from_ts, "to": args.to_ts})
    except CalibrationFailedError as exc:
        return _error(str(exc))
    except PermissionError as exc:
        return _closed(exc)
    n = raised = 0
    for clip in clips:
        sys.stdout.write(json.dumps({"machine": section.name, **clip}) + "\n")
        n, raised = n + 1, raised + (clip["event"] == "raised")
    sys.stderr.write(
        f"edge-agent models: {n:,} clip(s) of {section.name} scored again against calibration "
        f"v{cal.version}: the event rule raised {raised} time(s)\n"
    )
    return EXIT_OK


def cmd_calibrate_machine_sound(args: argparse.Namespace) -> int:
    import json

    from water_edge.core import logs
    from water_edge.core.processor import CalibrationFailedError
    from water_edge.models.machine_sound.calibration import calibrate_from_history

    logs.configure("warning", json=False)
    found = _machine_section(args)
    if isinstance(found, str):
        return _error(found)
    state_dir, section = found
    try:
        done = calibrate_from_history(section, state_dir, {"from": args.from_ts, "to": args.to_ts})
    except CalibrationFailedError as exc:
        return _error(str(exc))
    except PermissionError as exc:
        return _closed(exc)
    sys.stdout.write(json.dumps(done) + "\n")
    return EXIT_OK
