"""`edge-agent models score flow-leak`: night flow of a district from a SCADA export, night by night.

    edge-agent models score flow-leak --csv FILE --flow COL [--flow COL ...] [--minus COL ...]
        [--pressure COL] --calibrate-days N [--night 02:00-04:00] [--timezone ZONE]
        [--method step|fixed] [--fixed-rise-pct 20]

Prints CSV `date,night_flow,baseline,added,event`: one row per night in order; `event` is `leak`
on the night a new rise is declared (the step detector) or MNF crosses the fixed threshold
(`--method fixed`, the reference rule). Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from water_edge.core.cli_numbers import number

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def register(score_sub: Any) -> None:
    p = score_sub.add_parser(
        "flow-leak", help="minimum night flow and its steps from a district's flow history (CSV out)"
    )
    p.add_argument("--csv", required=True, type=Path, help="header; timestamp first; ',' ';' or tab")
    p.add_argument("--flow", required=True, action="append", metavar="COL", help="an inflow column (m3/h)")
    p.add_argument("--minus", action="append", default=[], metavar="COL", help="an outflow column")
    p.add_argument(
        "--volume",
        action="store_true",
        help="the --flow/--minus columns are volume totalisers (m3, a meter's index), not flows",
    )
    p.add_argument("--pressure", default=None, metavar="COL", help="inlet pressure: night flow is corrected")
    p.add_argument("--calibrate-days", required=True, type=int, metavar="N", help="the first N nights learn")
    p.add_argument("--night", default="02:00-04:00", help="local night window (default 02:00-04:00)")
    p.add_argument("--timezone", default=None, help="IANA zone of the timestamps (default: the system's)")
    p.add_argument("--method", choices=("step", "fixed"), default="step")
    p.add_argument(
        "--fixed-rise-pct",
        type=number(high=500, above=0),
        default=20.0,
        help="fixed rule: %% over calibration median (default 20)",
    )
    p.add_argument("--average-minutes", type=number(1, 240), default=15.0, help="MNF averaging (default 15)")
    p.add_argument("--pressure-exponent", type=float, default=1.0, help="FAVAD N1 (default 1.0)")
    p.add_argument(
        "--min-added-pct",
        type=number(high=100, above=0),
        default=None,
        help="smallest rise reported, %% (default 4)",
    )
    p.set_defaults(func=cmd_score_flow_leak)


def _err(message: str) -> int:
    sys.stderr.write(f"edge-agent models: {message}\n")
    return EXIT_BAD_INPUT


def cmd_score_flow_leak(args: argparse.Namespace) -> int:
    from water_edge.models.flow_leak.detector import StepParams
    from water_edge.models.flow_leak.mnf import ERROR_CODES
    from water_edge.models.flow_leak.offline import (
        FlowCsvError,
        correct_for_pressure,
        read_night_flows,
        score_nights,
    )
    from water_edge.models.nightwindow import NightWindow, zone

    if args.calibrate_days < 3:
        return _err("--calibrate-days must be at least 3 (a week or two of nights is better)")
    if not 0.2 <= args.pressure_exponent <= 2.5:
        return _err("--pressure-exponent must be within 0.2..2.5")
    try:
        window = NightWindow.parse(args.night, zone(args.timezone))
        flows = read_night_flows(
            args.csv,
            args.flow,
            args.minus,
            pressure=args.pressure,
            window=window,
            average_minutes=args.average_minutes,
            volume=args.volume,
        )
    except FlowCsvError as exc:
        return _err(str(exc))
    except ValueError as exc:
        return _err(str(exc))
    nights = (
        correct_for_pressure(flows.nights, args.calibrate_days, args.pressure_exponent)
        if args.pressure
        else [(n, v) for n, v, _ in flows.nights]
    )
    if len(nights) <= args.calibrate_days:
        sys.stderr.write(
            f"edge-agent models: warning: {len(nights)} night(s) in the file, all used to calibrate\n"
        )
    params = StepParams() if args.min_added_pct is None else StepParams(min_added_pct=args.min_added_pct)
    rows = score_nights(
        nights,
        calibrate_days=args.calibrate_days,
        method=args.method,
        params=params,
        fixed_rise_pct=args.fixed_rise_pct,
    )
    if flows.guessed_day_first:
        sys.stderr.write(
            "edge-agent models: warning: no date in the file has a day above 12: read as DD/MM/YYYY\n"
        )
    if flows.resets:
        sys.stderr.write(
            f"edge-agent models: warning: a volume register went down {flows.resets} time(s) "
            "(a meter replaced? a register rolled over?): those intervals skipped\n"
        )
    if flows.skipped:
        sys.stderr.write(
            f"edge-agent models: warning: {flows.skipped} row(s) with unreadable values skipped\n"
        )
    if flows.error_codes:
        codes = ", ".join(f"{c:g}" for c in sorted(ERROR_CODES, reverse=True))
        sys.stderr.write(
            f"edge-agent models: warning: {flows.error_codes} row(s) holding a meter error code "
            f"({codes}) skipped\n"
        )
    unjudged = [r.night for r in rows if r.night_flow is not None and r.night_flow <= 0]
    if unjudged:
        sys.stderr.write(
            f"edge-agent models: warning: {len(unjudged)} night(s) with a night flow of zero or less, "
            f"not judged (first {unjudged[0].isoformat()}): an outflow given with --flow instead of "
            "--minus, or a meter that reads zero when it fails?\n"
        )
    sys.stdout.write("date,night_flow,baseline,added,event\n")
    sys.stdout.write("".join(r.csv() + "\n" for r in rows))
    return EXIT_OK
