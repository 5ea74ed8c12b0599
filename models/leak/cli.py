"""`edge-agent models score leak`, `calibrate leak` and `locate`: the leak models on recorded WAV files
and on the gateway's stored nights.

    edge-agent models score leak FILE.wav [FILE.wav ...] [--baseline BASELINE.json] [--start T] [--end T]
    edge-agent models calibrate leak FILE.wav [FILE.wav ...] --out BASELINE.json [--material M]
                                     [--start T] [--end T]
    edge-agent models calibrate leak --sensor DEVICE.CHANNEL --from T --to T [-c CONFIG]
    edge-agent models locate PAIR.wav --distance M (--material NAME [--diameter MM] | --wave-speed M_S)
    edge-agent models locate A.wav B.wav --distance M ... [--offset-s S]

Output is JSON (one line per scored file). A file that cannot be read or scored gives one line on
stderr and exit code 2; the other files are still scored. With `--baseline`, each file is judged
as one listening night cut into checks of `--check-s` seconds against the baseline a calibration
wrote: `leak` is then the confirmed decision (two positive checks), `warning` one positive check.
A calibration records its check length and a score against it uses that length and refuses another;
no check is shorter than `--check-s` (a remainder joins the check before it), and a file holding no
whole check is not judged. `calibrate leak` refuses a recording given twice (same file or content).
`--start` / `--end` (seconds, or [H:]MM:SS, from the beginning of each file) keep a part of every
file: the quiet hours of a logger's evening-long recording, or the first half of a quiet file to
learn from and the second half to judge.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from water_edge.core.cli_numbers import number, whole
from water_edge.core.files import printable_name, printable_texts

if TYPE_CHECKING:
    from water_edge.models.leak.baseline import Baseline, CheckStats
    from water_edge.models.leak.config import LeakModelSection
    from water_edge.models.leak.detector import Score
    from water_edge.models.leak.judge import Judgement, JudgeParams

# Measured by models/train/leak_cli_false_alarms.py (40 files of edge-sim hydrophones at its
# defaults, no leak; docs/leak-cli-false-alarms.json): the classifier alone is one piece of evidence,
# not a verdict.
CLASSIFIER_ALONE_NOTE = (
    "edge-agent models: note: no --baseline, so 'leak' is the classifier alone (threshold 0.36); on "
    "simulated no-leak audio it gives false alarms on 20 % of files (8 % at 0.5, 2 % at 0.6; "
    "docs/leak-detection.md). The gateway judges each hydrophone against its own quiet: "
    "calibrate leak QUIET.wav ... --out B.json, then score with --baseline B.json\n"
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def register(models_sub: Any, score_sub: Any, calibrate_sub: Any = None) -> None:
    leak = score_sub.add_parser(
        "leak",
        help="leak probability of WAV recordings; with --baseline, the decision against the hydrophone's "
        "own quiet (one JSON line each)",
    )
    leak.add_argument("files", nargs="*", type=Path, metavar="FILE.wav")
    leak.add_argument("--model", type=Path, default=None, help="model manifest (default: the shipped one)")
    leak.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="judge against this sensor baseline (calibrate leak --out)",
    )
    _gateway_arguments(leak, "replay the stored nights of DEVICE.CHANNEL on the gateway (no FILEs)")
    _judging_arguments(
        leak,
        "seconds of a recording per check (default: the baseline's, else 8; with a baseline that "
        "records its own, only that)",
    )
    leak.set_defaults(func=cmd_score_leak)

    if calibrate_sub is not None:
        cal = calibrate_sub.add_parser(
            "leak",
            help="a hydrophone baseline: quiet recordings (--out) or the gateway's stored nights (--sensor)",
        )
        cal.add_argument(
            "files",
            nargs="*",
            type=Path,
            metavar="FILE.wav",
            help="quiet recordings, one per night (each once)",
        )
        cal.add_argument("--out", type=Path, default=None, help="write the baseline JSON here (with FILEs)")
        _gateway_arguments(
            cal, "DEVICE.CHANNEL on the gateway (with --from and --to, both required)", needs_stretch=True
        )
        _judging_arguments(
            cal, "seconds of a recording per check (default 8), kept in the baseline: score with the same"
        )
        cal.set_defaults(func=cmd_calibrate_leak)

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
        "--diameter", type=number(10, 3000), default=150.0, metavar="MM", help="inner diameter (default 150)"
    )
    loc.add_argument("--weighting", choices=("phat", "scot"), default="phat")
    loc.add_argument(
        "--offset-s",
        type=number(),
        default=None,
        help="with two WAVs only: start of B minus start of A, in seconds (from their timestamps); "
        "a 2-channel WAV's channels were recorded together",
    )
    loc.set_defaults(func=cmd_locate)


def _gateway_arguments(p: Any, sensor_help: str, *, needs_stretch: bool = False) -> None:
    """A hydrophone on this gateway and a stretch of its stored nights (`needs_stretch`: both
    --from and --to required with --sensor)."""
    from water_edge.models.gateway_args import add_history_arguments

    p.add_argument("--sensor", default=None, help=sensor_help)
    if needs_stretch:
        add_history_arguments(p, "--sensor", to_default=None)
    else:
        add_history_arguments(p)


def offset_seconds(text: str) -> float:
    """`--start` / `--end`: seconds (`17`, `17.5`) or [H:]MM:SS (`1:30`, `2:05:00`) into a file."""
    parts = text.strip().split(":")
    try:
        if len(parts) > 3 or any(p == "" for p in parts):
            raise ValueError
        fields = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or [H:]MM:SS, got {text!r}") from None
    if not all(math.isfinite(f) and f >= 0 for f in fields) or any(f >= 60 for f in fields[1:]):
        raise argparse.ArgumentTypeError(f"expected seconds or [H:]MM:SS, got {text!r}")
    seconds = 0.0
    for f in fields:
        seconds = seconds * 60 + f
    return seconds


def _judging_arguments(p: Any, check_help: str) -> None:
    from water_edge.models.leak.check_length import SHORTEST_CHECK_S

    p.add_argument(
        "--start",
        type=offset_seconds,
        default=None,
        metavar="T",
        help="judge from T into each file (s or [H:]MM:SS)",
    )
    p.add_argument("--end", type=offset_seconds, default=None, metavar="T", help="... up to T into each file")
    p.add_argument(
        "--check-s",
        type=number(SHORTEST_CHECK_S),
        default=None,
        metavar="S",
        help=f"{check_help}; at least {SHORTEST_CHECK_S:g} (shorter checks give false alarms: "
        "docs/leak-detection.md); whole seconds, a shorter remainder joins the last check",
    )
    p.add_argument("--material", default=None, help="pipe material: judge its leak bands only")
    p.add_argument(
        "--channel",
        type=whole(1),
        default=1,
        metavar="N",
        help="the file's channel to judge, from 1 (default 1; a 2-channel logger: 2 for sensor B)",
    )
    p.add_argument(
        "--diameter", type=number(10, 3000), default=150.0, metavar="MM", help="inner diameter (default 150)"
    )


NOT_HEARD_NOTE = (
    "the hydrophone is not heard (digital silence: every second a dropout, one value for 50 ms or more): "
    "check the sensor, its cable and the audio input"
)
SIGNAL_LOST_NOTE = (
    "the hydrophone is not heard (digital silence, or its bands {db:g} dB or more below the baseline): "
    "check the sensor, its cable and the audio input"
)


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(printable_texts(obj)).decode() + "\n")


def _err(message: str) -> None:
    sys.stderr.write(f"edge-agent models: {message}\n")


def _file_options(args: argparse.Namespace, *others: object) -> bool:
    """Whether anything that belongs to FILEs was given (refused together with --sensor)."""
    return bool(args.files) or any(o is not None for o in (args.start, args.end, *others))


def _unknown_material(args: argparse.Namespace) -> bool:
    """Whether `--material` names no pipe material (said on stderr): refused before any file is read,
    not once per file."""
    from water_edge.models.leak import pipes

    if args.material is None:
        return False
    try:
        pipes.material(args.material)
    except ValueError as exc:
        _err(f"--material: {exc}")
        return True
    return False


def cmd_score_leak(args: argparse.Namespace) -> int:
    from water_edge.core import logs

    logs.configure("warning", json=False)
    if _unknown_material(args):
        return EXIT_BAD_INPUT
    if args.sensor is not None:
        if _file_options(args, args.baseline, args.check_s):
            _err("give either FILEs (with --baseline), or --sensor with --from/--to")
            return EXIT_BAD_INPUT
        return _replay_on_gateway(args)
    if not args.files:
        _err("give WAV recordings to score, or --sensor DEVICE.CHANNEL to replay its stored nights")
        return EXIT_BAD_INPUT
    return _score_files(args)


def _score_files(args: argparse.Namespace) -> int:
    from water_edge.core.wavio import WavError
    from water_edge.models.leak.detector import DEFAULT_MANIFEST, LeakScorer
    from water_edge.models.leak.judge import judge
    from water_edge.models.leak.recording import read_recording
    from water_edge.models.manifest import ModelError
    from water_edge.models.runtime import load_model

    try:
        scorer = LeakScorer(load_model(args.model or DEFAULT_MANIFEST))
    except ModelError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    baseline = params = None
    if args.baseline is not None:
        if (read := _read_baseline(args)) is None:
            return EXIT_BAD_INPUT
        baseline, params = read
    check_s = _check_length_against(args, baseline)
    if check_s is None:
        return EXIT_BAD_INPUT
    if baseline is None:
        sys.stderr.write(CLASSIFIER_ALONE_NOTE)
        if args.material is not None:
            _err("warning: --material picks the bands judged against a baseline: unused without one")
    status = EXIT_OK
    for path in args.files:
        try:
            score, checks = read_recording(
                path,
                check_s=check_s,
                scorer=scorer,
                checks=baseline is not None,
                span=(args.start, args.end),
                channel=args.channel - 1,
            )
            judged = None if baseline is None else [judge(c, baseline, params) for c in checks]
        except (WavError, ValueError, ModelError) as exc:
            _err(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            status = EXIT_BAD_INPUT
            continue
        body = score.to_json()
        line: dict[str, Any] = {
            "file": str(path),
            **body,
            "threshold": scorer.threshold,
            "leak": score.leak_probability >= scorer.threshold if score.classified else None,
            "model": scorer.model.version,
        }
        if judged is not None and baseline is not None:
            line.update(_against_baseline(judged, checks, baseline, classifier_leak=line["leak"]))
            _warn_other_rate(path, checks, baseline)
        _say_not_judged(path, score, judged)
        _out(line)
    return status


def _read_baseline(args: argparse.Namespace) -> tuple[Baseline, JudgeParams] | None:
    """`--baseline` and what its checks are judged with (`--material`, else the baseline's), or
    None after saying on stderr why the file is not one."""
    from water_edge.models.leak import pipes
    from water_edge.models.leak.baseline import Baseline, BaselineError
    from water_edge.models.leak.judge import JudgeParams

    try:
        data = args.baseline.read_bytes()
        baseline = Baseline.from_dict(orjson.loads(data))
    except OSError as exc:
        _err(f"{args.baseline}: cannot read: {exc.strerror or exc}")
        return None
    except orjson.JSONDecodeError as exc:  # a CSV, a WAV, a half-written file given by mistake
        where = re.sub(r" \(char \d+\)$", "", str(exc))
        why = "an empty file" if not data else "not JSON" if exc.pos == 0 else f"not JSON: {where}"
        _err(f"{args.baseline}: not a leak baseline ({why}): give the file that calibrate leak --out wrote")
        return None
    except (BaselineError, ValueError) as exc:
        _err(f"{args.baseline}: {exc}")
        return None
    material = None if args.material is None else pipes.material(args.material).name
    params = JudgeParams(material=material or baseline.material, diameter_mm=args.diameter)
    _warn_other_material(args, baseline, params)
    return baseline, params


def _say_not_judged(path: Path, score: Score, judged: list[Judgement] | None) -> None:
    """One line on stderr when the file's JSON line holds no verdict: nothing heard (against a
    baseline: no check heard), or no baseline and a rate the classifier does not hear."""
    from water_edge.models.leak.judge import SIGNAL_LOST_DB

    if judged is not None:
        if judged and all(j.signal_lost for j in judged):
            _err(f"{path}: not judged: {SIGNAL_LOST_NOTE.format(db=SIGNAL_LOST_DB)}{_which_channel(score)}")
    elif not score.heard:
        _err(f"{path}: not judged: {NOT_HEARD_NOTE}{_which_channel(score)}")
    elif not score.classified:
        _err(
            f"{path}: not judged: recorded below the classifier's 8000 Hz; judge it against a baseline "
            "(calibrate leak on quiet recordings made at its rate, then --baseline)"
        )


def _which_channel(score: Score) -> str:
    """On a file of several channels, which one was judged and that `--channel` picks another."""
    return next(
        (f"; {n.removesuffix(' (--channel)')}: --channel N judges another" for n in score.notes
         if n.startswith("channel ")),
        "",
    )  # fmt: skip


def _warn_other_material(args: argparse.Namespace, baseline: Baseline, params: JudgeParams) -> None:
    """Say so when `--material` is not the material the baseline was calibrated for. Judged as
    asked, not refused (as another `--check-s` is): a baseline keeps every band's levels whatever
    the material, and the gateway too judges a stored baseline with the material configured now;
    but the verdict is then about the other material's leak bands."""
    from water_edge.models.leak.features import band_centres_hz

    if args.material is None or baseline.material is None or params.material == baseline.material:
        return
    judged = [c for c, m in zip(band_centres_hz(), params.band_mask(), strict=True) if m]
    _err(
        f"warning: --material {params.material}: {args.baseline} was calibrated for {baseline.material}; "
        f"judged in {params.material}'s leak bands ({judged[0]:.0f}-{judged[-1]:.0f} Hz), not "
        f"{baseline.material}'s: if the pipe is {baseline.material}, leave --material out"
    )


def _check_length_against(args: argparse.Namespace, baseline: Baseline | None) -> int | None:
    """The check length to score with: `--check-s`, else the baseline's, else the default; None
    (said on stderr) when `--check-s` differs from the length the baseline was learnt at. Refused,
    not warned: its thresholds hold for the scatter of checks that long, and shorter checks against
    them gave a confident false leak (docs/leak-detection.md), which a warning beside a JSON
    `"leak": true` would not undo."""
    from water_edge.models.leak.check_length import DEFAULT_CHECK_S, check_length

    learnt = None if baseline is None else baseline.check_s
    if args.check_s is None:
        return learnt or check_length(DEFAULT_CHECK_S)
    asked = check_length(args.check_s)
    if baseline is not None and learnt is None:
        _err(
            f"warning: {args.baseline} does not say how long the checks it was learnt from were "
            f"(written before it was kept): --check-s {asked} is right only if it was calibrated with it; "
            "calibrate again to have it checked"
        )
    if learnt is not None and asked != learnt:
        _err(
            f"--check-s {args.check_s:g}: {args.baseline} was learnt from {learnt} s checks, and its "
            f"thresholds hold for checks that long: leave --check-s out (or give {learnt}), or calibrate "
            f"again with --check-s {asked}"
        )
        return None
    return asked


def _night_names(paths: Sequence[Path]) -> list[str]:
    """What each recording's night is called in a baseline: its file name, or its path as given
    when two share a name (a logger's folder per night of REC0001.WAV): otherwise their checks were
    learnt as one night."""
    names = [printable_name(p.name) for p in paths]
    return names if len(set(names)) == len(names) else [printable_name(p) for p in paths]


def _given_twice(paths: Sequence[Path]) -> str | None:
    """Why the recordings cannot be learnt from when one is given twice (the same file, or the
    same bytes under another name): a night counted twice makes the baseline look steadier, and
    surer of its nights, than it is. None when each is given once (or one cannot be read: its own
    error says so). Only files of the same size are hashed: a night's recording can be hundreds of
    MB, read again just to be told apart from the others."""
    import hashlib

    seen: dict[Path, Path] = {}
    by_size: dict[int, list[Path]] = {}
    for path in paths:
        try:
            where, size = path.resolve(), path.stat().st_size
        except OSError:
            continue
        if where in seen:
            return f"{path} is the same file as {seen[where]}: {_TWICE}"
        seen[where] = path
        by_size.setdefault(size, []).append(path)
    for same_size in (group for group in by_size.values() if len(group) > 1):
        digests: dict[str, Path] = {}
        for path in same_size:
            try:
                with path.open("rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError:
                continue
            if digest in digests:
                return f"{path} is the same content as {digests[digest]}: {_TWICE}"
            digests[digest] = path
    return None


_TWICE = "one recording given twice would count one night twice; give each quiet night once"


def _warn_mixed_rates(checks: Sequence[CheckStats]) -> None:
    """Say so when the recordings a baseline was learnt from differ in sample rate (it then records
    none, and no file is warned about against it)."""
    rates = {c.night: c.sample_rate for c in checks}  # a recording's checks share its name
    if len(set(rates.values())) > 1:
        listed = ", ".join(f"{name} {rate} Hz" for name, rate in rates.items())
        _err(f"warning: the recordings are at different sample rates ({listed}): the baseline records none")


def _warn_other_rate(path: Path, checks: Sequence[CheckStats], baseline: Baseline) -> None:
    """Say so when `path` was recorded at another rate than the baseline's audio: the recorder's
    anti-alias filter shapes the top bands, and at a lower rate they are missing altogether."""
    from water_edge.models.leak.features import SAMPLE_RATE

    made = baseline.sample_rate
    rate = next((c.sample_rate for c in checks if c.sample_rate is not None), None)
    if made is None or rate is None or rate == made:
        return
    top = min(rate, made, SAMPLE_RATE) // 2
    hint = (
        f"its bands above {rate // 2} Hz are missing, and read as a change"
        if rate < made and rate < SAMPLE_RATE
        else f"the bands near {top} Hz may differ with the recorders' anti-alias filters"
    )
    _err(
        f"warning: {path}: recorded at {rate} Hz, the baseline's audio at {made} Hz: {hint}; "
        f"calibrate on quiet recordings made at {rate} Hz"
    )


def _against_baseline(
    judged: list[Judgement],
    checks: list[CheckStats],
    baseline: Baseline,
    *,
    classifier_leak: bool | None,
) -> dict[str, Any]:
    """The JSON line's decision against a baseline: a recording is one night of checks (each
    check's evidence says the second of the file it starts at). Null when no check was heard (every
    one lost its signal): a dead input is no verdict, least of all "no leak"."""
    from water_edge.models.leak.judge import confirmed

    best = max(judged, key=lambda j: j.score)
    heard = not all(j.signal_lost for j in judged)
    return {
        "leak": confirmed(judged) if heard else None,
        "warning": any(j.positive for j in judged) if heard else None,
        "decision": "against baseline",
        "classifier_leak": classifier_leak,
        "rise_db": best.rise_db,
        "signal_lost_checks": sum(j.signal_lost for j in judged),
        "evidence": {
            "baseline_sensor": baseline.sensor,
            "baseline_version": baseline.version,
            "baseline_sample_rate_hz": baseline.sample_rate,
            "positive_checks": sum(j.positive for j in judged),
            "checks": [
                {
                    "start_s": c.start_ns // 1_000_000_000,
                    **j.evidence(),
                    **({"saturated_s": c.saturated_s} if c.saturated_s else {}),
                }
                for c, j in zip(checks, judged, strict=True)
            ],
        },
    }


def cmd_calibrate_leak(args: argparse.Namespace) -> int:
    from water_edge.core import logs

    logs.configure("warning", json=False)
    if args.sensor is not None:
        if _file_options(args, args.out, args.check_s):
            _err("give either FILEs with --out (and --start/--end), or --sensor with --from/--to")
            return EXIT_BAD_INPUT
        return _calibrate_on_gateway(args)
    if not args.files or args.out is None:
        _err("give quiet recordings and --out BASELINE.json (or --sensor DEVICE.CHANNEL --from T --to T)")
        return EXIT_BAD_INPUT
    if (twice := _given_twice(args.files)) is not None:
        _err(twice)
        return EXIT_BAD_INPUT
    return _calibrate_files(args)


def _calibrate_files(args: argparse.Namespace) -> int:
    from water_edge.core.wavio import WavError
    from water_edge.models.leak import pipes
    from water_edge.models.leak.baseline import Baseline, BaselineError
    from water_edge.models.leak.check_length import DEFAULT_CHECK_S, check_length
    from water_edge.models.leak.detector import LeakScorer
    from water_edge.models.leak.recording import file_checks
    from water_edge.models.manifest import ModelError

    check_s = check_length(DEFAULT_CHECK_S if args.check_s is None else args.check_s)
    per_file: dict[Path, list[CheckStats]] = {}
    try:
        material = None if args.material is None else pipes.material(args.material).name
        scorer = LeakScorer()
        for path, night in zip(args.files, _night_names(args.files), strict=True):
            notes: list[str] = []
            try:
                per_file[path] = file_checks(
                    path,
                    check_s=check_s,
                    scorer=scorer,
                    span=(args.start, args.end),
                    notes=notes,
                    channel=args.channel - 1,
                    night=night,
                )
            except (WavError, ValueError) as exc:
                raise ValueError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
            for note in notes:
                if "dropouts" in note:
                    _err(f"warning: {path}: {note}")
        if (nothing := _nothing_to_learn(per_file)) is not None:
            raise ValueError(nothing)
        checks = [c for file in per_file.values() for c in file]
        baseline = Baseline.learn(checks, sensor=args.out.stem, material=material, check_s=check_s)
        _warn_mixed_rates(checks)
        for path, file in per_file.items():
            if silent := sum(c.silent for c in file):
                _err(
                    f"warning: {path}: {silent} check(s) of digital silence left out (no signal: a dropout?)"
                )
            if clipped := sum(bool(c.saturated_s) and not c.silent for c in file):
                _err(
                    f"warning: {path}: {clipped} check(s) saturated at full scale left out (clipped: "
                    "lower the gain)"
                )
    except (WavError, ValueError, ModelError, BaselineError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    try:
        args.out.write_text(orjson.dumps(baseline.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    except OSError as exc:
        _err(f"{args.out}: cannot write: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    _out(
        {
            "out": str(args.out),
            "recordings": len(args.files),
            "checks": baseline.checks,
            "seconds": baseline.seconds,
            "quality": baseline.quality(),
            "note": "one recording = one night; a few nights make a steadier baseline",
        }
    )
    return EXIT_OK


def _nothing_to_learn(per_file: dict[Path, list[CheckStats]]) -> str | None:
    """Why the recordings leave no check to learn from, naming them (their checks digital silence,
    or saturated at full scale), or None when one is left. Said here, not by `Baseline.learn`: it
    knows the checks and the baseline's name (the --out file's), not which recording held them."""
    if not any(per_file.values()) or any(
        not c.silent and not c.saturated_s for file in per_file.values() for c in file
    ):
        return None

    def named(files: list[Path], n: int) -> str:
        whose = "every one of its" if len(files) == 1 else "all"
        return f"{', '.join(map(str, files))}: {whose} {n} check(s)"

    silent = [f for f, file in per_file.items() if all(c.silent for c in file)]
    clipped = [f for f in per_file if f not in silent]
    dead = named(silent, sum(len(per_file[f]) for f in silent)) + " held no signal (digital silence)"
    if not clipped:
        return f"{dead}: is the hydrophone connected and its input enabled?"
    heard = sum(not c.silent for f in clipped for c in per_file[f])
    said = f"{named(clipped, heard)} held audio saturated at full scale: lower the input gain"
    return f"{said}; {dead}" if silent else said


def _leak_sections(args: argparse.Namespace) -> tuple[Path, list[LeakModelSection]] | None:
    """The gateway's state directory and `[[models.leak]]` tables (-c, --state-dir), or None after
    saying why on stderr."""
    from water_edge.models.config_file import processor_sections
    from water_edge.models.gateway_args import config_path
    from water_edge.models.leak.config import LeakModelSection

    config = config_path(args.config)
    try:
        config_state_dir, sections = processor_sections(config, "leak", LeakModelSection)
    except ValueError as exc:
        _err(str(exc))
        return None
    return args.state_dir or config_state_dir, list(sections)


def _device_channels(config: Path, section: LeakModelSection) -> list[str] | None:
    """The channels the section's hydrophones are on, as the gateway names them: its `channels`,
    else the audio device's `channel_names`, else A, B, ... by the device's channel count; None when
    the config does not say (a device of unknown channel count)."""
    from water_edge.core.toml_text import parse_toml, read_toml_text

    if section.channels is not None:
        return list(section.channels)
    try:
        devices = parse_toml(read_toml_text(config)).get("devices")
    except (OSError, ValueError):  # read a moment ago: unreadable now is "does not say"
        return None
    tables = devices if isinstance(devices, list) else []
    device = next((d for d in tables if isinstance(d, dict) and d.get("name") == section.device), None)
    if device is None:
        return None
    names = device.get("channel_names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    count = device.get("channels")
    if not isinstance(count, int) or isinstance(count, bool):
        gains = device.get("calibration_db")
        count = len(gains) if isinstance(gains, list) else None
    if count is None:
        return None
    return [chr(ord("A") + i) if i < 26 else f"ch{i}" for i in range(count)]


def _unknown_channel(args: argparse.Namespace, state_dir: Path, sections: list[LeakModelSection]) -> bool:
    """Whether `--sensor` names a channel its device has no hydrophone on (said on stderr, with
    the ones it has), where otherwise "no baseline yet" or "no night checks yet" would send the
    technician waiting for a sensor that does not exist. A channel with stored state (one since
    removed from the config) is still replayed."""
    from water_edge.models.gateway_args import config_path
    from water_edge.models.leak.calibration import no_such_channel

    device = args.sensor.rpartition(".")[0]
    section = next((s for s in sections if s.device == device), None)
    if section is None:
        return False  # an unknown device: `section_for` says so
    why = no_such_channel(args.sensor, _device_channels(config_path(args.config), section), state_dir)
    if why is None:
        return False
    _err(why)
    return True


def _replay_on_gateway(args: argparse.Namespace) -> int:
    from water_edge.core.processor import CalibrationFailedError
    from water_edge.models.leak.replay import replay_sensor

    found = _leak_sections(args)
    if found is None:
        return EXIT_BAD_INPUT
    state_dir, sections = found
    if _unknown_channel(args, state_dir, sections):
        return EXIT_BAD_INPUT
    try:
        baseline, nights = replay_sensor(
            sections, state_dir, args.sensor, {"from": args.from_ts, "to": args.to_ts}
        )
    except CalibrationFailedError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    for night in nights:
        _out({"sensor": args.sensor, **night})
    learned = f"{baseline.nights[0]} .. {baseline.nights[-1]}" if baseline.nights else "no nights"
    sys.stderr.write(
        f"edge-agent models: {len(nights)} night(s) of {args.sensor} judged again against its baseline "
        f"v{baseline.version} (learned on {learned}); the live events came from the baseline in "
        "service each night\n"
    )
    return EXIT_OK


def _calibrate_on_gateway(args: argparse.Namespace) -> int:
    from water_edge.core.processor import CalibrationFailedError
    from water_edge.models.leak.calibration import calibrate_sensor, summary

    if args.from_ts is None or args.to_ts is None:
        _err("--sensor needs --from and --to (the quiet nights to learn from)")
        return EXIT_BAD_INPUT
    found = _leak_sections(args)
    if found is None:
        return EXIT_BAD_INPUT
    state_dir, sections = found
    if _unknown_channel(args, state_dir, sections):
        return EXIT_BAD_INPUT
    try:
        baseline = calibrate_sensor(
            sections, state_dir, args.sensor, {"from": args.from_ts, "to": args.to_ts}
        )
    except CalibrationFailedError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    wanted = next(s.baseline_nights for s in sections if args.sensor.startswith(s.device + "."))
    _out(summary(baseline, wanted))
    if len(baseline.nights) < wanted:
        sys.stderr.write(
            f"edge-agent models: warning: the baseline covers {len(baseline.nights)} night(s), "
            f"fewer than the {wanted} asked for: its thresholds lean on the prior\n"
        )
    return EXIT_OK


def cmd_locate(args: argparse.Namespace) -> int:
    if len(args.files) == 1 and args.offset_s:
        _err(
            f"--offset-s {args.offset_s:g}: {args.files[0]} is one recording, its two channels sampled "
            "together: there is no clock offset to correct; --offset-s is for two WAVs (A.wav B.wav)"
        )
        return EXIT_BAD_INPUT
    return _locate(args)


def _locate(args: argparse.Namespace) -> int:
    import numpy as np

    from water_edge.core.wavio import WavError, read_wav
    from water_edge.models.leak.localise import locate

    notes: list[str] = []
    offset_s = args.offset_s or 0.0
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
            shift = round(offset_s * rate)
            if shift > 0:
                a = a[shift:]
            elif shift < 0:
                b = b[-shift:]
            n = min(a.size, b.size)
            if shift and n < 0.5 * rate:
                raise WavError(
                    f"--offset-s {offset_s:g} leaves {max(n, 0) / rate:.2f} s in which both recordings "
                    f"run (A {xa.shape[0] / rate:.2f} s, B {xb.shape[0] / rate_b:.2f} s): need 0.5 s"
                )
            a, b = a[:n], b[:n]
        else:
            raise WavError("give one 2-channel WAV or two WAVs (A then B)")
        for sensor, x in (("A", a), ("B", b)):
            if x.size and float(np.ptp(x)) == 0.0:
                what = args.files[0] if len(args.files) == 1 else args.files[0 if sensor == "A" else 1]
                raise WavError(
                    f"{what}: sensor {sensor} holds one constant value (digital silence or a dead input): "
                    "nothing to correlate; check its sensor, cable and audio input"
                )
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
