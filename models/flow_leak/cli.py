"""`edge-agent models score flow-leak` (night flow of a district from a SCADA export, night by night)
and `edge-agent models score burst` (the same export, slot by slot: bursts within hours).

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
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from water_edge.core.cli_numbers import number, whole
from water_edge.core.timestamps import skipped_hour
from water_edge.models.nightwindow import night_option

if TYPE_CHECKING:
    from water_edge.models.flow_leak.burst import BurstDetector, SlotRow

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _file_arguments(p: Any) -> None:
    """The export and its columns, alike for `score flow-leak` and `score burst`."""
    p.add_argument("--csv", required=True, type=Path, help="header; timestamp first; ',' ';' or tab")
    p.add_argument("--flow", required=True, action="append", metavar="COL", help="an inflow column (m3/h)")
    p.add_argument("--minus", action="append", default=[], metavar="COL", help="an outflow column")
    p.add_argument(
        "--timezone", default=None, help="IANA zone of the district and its timestamps (default: system's)"
    )
    p.add_argument(
        "--timestamps-zone",
        default=None,
        metavar="ZONE",
        help="zone of timestamps without an offset when not --timezone's (a historian's export in UTC: UTC)",
    )


def register(score_sub: Any) -> None:
    p = score_sub.add_parser(
        "flow-leak", help="minimum night flow and its steps from a district's flow history (CSV out)"
    )
    _file_arguments(p)
    p.add_argument(
        "--volume",
        action="store_true",
        help="the --flow/--minus columns are volume totalisers (m3, a meter's index), not flows",
    )
    p.add_argument("--pressure", default=None, metavar="COL", help="inlet pressure: night flow is corrected")
    p.add_argument("--calibrate-days", required=True, type=int, metavar="N", help="the first N nights learn")
    p.add_argument(
        "--night",
        type=night_option,
        default="02:00-04:00",
        metavar="HH:MM-HH:MM",
        help="local night window, at most 12 h; may cross midnight, e.g. 23:00-05:00 (default 02:00-04:00)",
    )
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
    _register_burst(score_sub)


def _register_burst(score_sub: Any) -> None:
    p = score_sub.add_parser(
        "burst", help="bursts in a district's flow history, slot by slot (CSV out; events only with --events)"
    )
    _file_arguments(p)
    p.add_argument("--volume", action="store_true", help="the flow columns are volume totalisers (m3)")
    p.add_argument(
        "--pressure", default=None, metavar="COL", help="inlet pressure: its drop goes with a burst"
    )
    p.add_argument(
        "--slot-minutes",
        type=whole(5, 240),
        default=None,
        help="slot length (default 15, or the file's interval when longer: 60 for an hourly export)",
    )
    p.add_argument(
        "--learn-days", type=whole(7, 90), default=14, help="days learnt before judging (default 14)"
    )
    p.add_argument(
        "--min-added-pct",
        type=number(high=500, above=0),
        default=10.0,
        help="smallest burst, %% of mean flow",
    )
    p.add_argument("--min-added-m3h", type=number(0, 1e9), default=0.0, help="smallest burst, m3/h")
    p.add_argument("--z", type=number(1, 50), default=5.0, help="alarm level in spreads of the usual excess")
    p.add_argument(
        "--holiday", action="append", default=[], metavar="YYYY-MM-DD", help="a day judged as a Sunday"
    )
    p.add_argument(
        "--holidays-country",
        default=None,
        metavar="CC",
        help="judge the country's public holidays as Sundays (ISO 3166-1: IT, JP, DE ...)",
    )
    p.add_argument(
        "--holidays-subdivision", default=None, metavar="CODE", help="and its region's (BY for Bavaria ...)"
    )
    p.add_argument("--method", choices=("profile", "fixed"), default="profile")
    p.add_argument(
        "--fixed-rise-pct", type=number(high=500, above=0), default=20.0, help="fixed rule's margin"
    )
    p.add_argument("--events", action="store_true", help="print only the slots where something happened")
    p.set_defaults(func=cmd_score_burst)


def _err(message: str) -> int:
    sys.stderr.write(f"edge-agent models: {message}\n")
    return EXIT_BAD_INPUT


def cmd_score_flow_leak(args: argparse.Namespace) -> int:
    from water_edge.core.local_zone import zone
    from water_edge.models.flow_leak.detector import StepParams
    from water_edge.models.flow_leak.glitch import GLITCH_FACTOR, GLITCH_SAMPLES
    from water_edge.models.flow_leak.offline import (
        FlowCsvError,
        correct_for_pressure,
        read_night_flows,
        score_nights,
    )
    from water_edge.models.nightwindow import NightWindow

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
            naive_tz=_timestamps_zone(args),
        )
    except FlowCsvError as exc:
        return _err(str(exc))
    except ValueError as exc:
        return _err(str(exc))
    if not flows.nights:
        resets = f" (a volume register went down {flows.resets} time(s))" if flows.resets else ""
        return _err(f"{args.csv}: no usable reading falls in the night window {args.night}{resets}")
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
    _warn_read(flows)
    if flows.glitches:
        sys.stderr.write(
            f"edge-agent models: warning: {flows.glitches} night sample(s) beyond {GLITCH_FACTOR:g}x "
            "the night's median flow, or below minus half of it (a sign flipped), skipped as a glitch "
            f"(at most {GLITCH_SAMPLES} in a row: a longer run is flow)\n"
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


def cmd_score_burst(args: argparse.Namespace) -> int:
    import numpy as np

    from water_edge.core.local_zone import zone
    from water_edge.models.flow_leak.burst import BurstDetector, BurstParams, FixedExcess
    from water_edge.models.flow_leak.glitch import GLITCH_FACTOR, GLITCH_SAMPLES
    from water_edge.models.flow_leak.offline import FlowCsvError, read_net_flows

    try:
        holidays = _holidays(args)
    except ValueError as exc:
        return _err(str(exc))
    try:
        flows = read_net_flows(
            args.csv,
            args.flow,
            args.minus,
            pressure=args.pressure,
            tz=zone(args.timezone),
            volume=args.volume,
            naive_tz=_timestamps_zone(args),
        )
    except (FlowCsvError, ValueError) as exc:
        return _err(str(exc))
    if len(flows) < 2:
        return _err(f"{args.csv}: needs at least two readable rows")
    first, last = flows.local(0), flows.local(len(flows) - 1)
    days = (last - first).total_seconds() / 86400
    if days <= args.learn_days:
        sys.stderr.write(
            f"edge-agent models: warning: the file covers {days:.1f} day(s), no more than --learn-days "
            f"{args.learn_days}: every slot is learnt from, none is judged\n"
        )
    gaps = np.sort(np.diff(flows.wall_us)) / 60e6
    interval = float(gaps[len(gaps) // 2])
    slot = args.slot_minutes or next((m for m in (15, 20, 30, 60, 120, 180, 240) if m >= interval), 240)
    if slot <= 0 or 1440 % slot:
        return _err("--slot-minutes must divide a day (15, 20, 30, 60 ...)")
    if slot < interval:  # slots with no reading: a burst's volume counted over a fraction of its time
        return _err(
            f"--slot-minutes {slot} is shorter than {args.csv}'s interval of {interval:g} min: "
            f"most slots would hold no reading; give {interval:g} or more, or leave it out"
        )
    params = BurstParams(
        slot_minutes=slot,
        learn_days=args.learn_days,
        min_added_pct=args.min_added_pct,
        min_added_m3h=args.min_added_m3h,
        z=args.z,
        holidays=holidays,
    )
    detector, fixed = BurstDetector(params), FixedExcess(args.fixed_rise_pct)
    _warn_read(flows)
    sys.stdout.write("time,flow,expected,added,event,onset,size_m3h,volume_m3\n")
    counted = {"burst": 0, "cleared": 0, "accepted": 0}
    slots = 0
    tz, repeated = zone(args.timezone), set[datetime]()
    for row in _slot_rows(detector, flows.samples()):
        slots += 1
        if args.method == "fixed":
            raised = fixed.update(row)
            row.event = "burst" if raised else "cleared" if fixed.cleared else ""
            row.onset = fixed.onset if row.event else None
            row.size, row.volume_m3 = (row.added if raised else None), None
        if row.event:
            counted[row.event] += 1
        elif args.events:
            continue
        sys.stdout.write(_slot_line(row, tz, repeated) + "\n")
    if detector.glitches:
        sys.stderr.write(
            f"edge-agent models: warning: {detector.glitches} sample(s) beyond {GLITCH_FACTOR:g}x the "
            "district's mean flow (while learning, its median slot flow) skipped as a glitch (at most "
            f"{GLITCH_SAMPLES} in a row: a longer run is flow)\n"
        )
    if detector.unlearnt:
        start, flow = detector.unlearnt[0]
        end = start + timedelta(minutes=slot)
        in_slot = [(t, q) for t, q, _ in flows.samples() if start <= t < end]
        when, q = max(in_slot, key=lambda s: abs(s[1]), default=(start, flow))
        _warn(
            f"{len(detector.unlearnt)} slot(s) of the first half-day beyond {GLITCH_FACTOR:g}x its median "
            f"slot flow left out of what is learnt as a glitch (first: the row stamped "
            f"{when.isoformat(sep=' ', timespec='seconds')}, {q:g} m3/h; slot {flow:g} m3/h)"
        )
    judged = _holidays_judged(holidays, first.date(), last.date())
    sys.stderr.write(
        f"edge-agent models: {slots} slots of {slot} min; {counted['burst']} burst(s), "
        f"{counted['cleared']} cleared, {counted['accepted']} accepted as the new level; {judged}\n"
    )
    return EXIT_OK


def _slot_rows(
    detector: BurstDetector, samples: Iterable[tuple[datetime, float, float]]
) -> Iterator[SlotRow]:
    """The detector's slot rows as the samples close them, then the last one: written out as they
    come (a year of minute rows is 35,040 slots of 15 min)."""
    for local, q, p in samples:
        yield from detector.add(local, q, p)
    yield from detector.flush()


def _slot_line(row: SlotRow, tz: tzinfo, repeated: set[datetime]) -> str:
    """A slot's CSV line: time,flow,expected,added,event,onset,size_m3h,volume_m3."""
    extra = (
        "" if row.onset is None else row.onset.isoformat(sep=" ", timespec="minutes"),
        "" if row.size is None else f"{row.size:.3f}",
        "" if row.volume_m3 is None else f"{row.volume_m3:.1f}",
    )
    cells = row.csv().split(",", 1)
    cells[0] = _slot_time(row.start, tz, repeated) or cells[0]
    return ",".join((*cells, *extra))


def _slot_time(start: datetime, tz: tzinfo, seen: set[datetime]) -> str | None:
    """A slot's `time` when the clocks show it twice (the hour they repeat when daylight saving
    ends), with its UTC offset, so that its two passes read as two times: '2026-10-25 02:00+02:00',
    an hour later '2026-10-25 02:00+01:00' (the first pass seen is the earlier); None for any other
    slot (printed without offset, as always). Before, the two passes were two rows of one time."""
    first, second = start.replace(tzinfo=tz, fold=0), start.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset() or skipped_hour(start, tz):
        return None
    when = second if start in seen else first
    seen.add(start)
    return when.isoformat(sep=" ", timespec="minutes")


def _holidays(args: argparse.Namespace) -> frozenset[date]:
    """The days `score burst` judges as Sundays: `--holiday` dates and the country's calendar."""
    from water_edge.models.flow_leak.holiday_dates import HolidayCalendarError, public_holidays

    try:
        days = frozenset(date.fromisoformat(h) for h in args.holiday)
    except ValueError as exc:
        raise ValueError(f"--holiday: expected a date as YYYY-MM-DD ({exc})") from None
    if args.holidays_country is None:
        if args.holidays_subdivision is not None:
            raise ValueError("--holidays-subdivision needs --holidays-country")
        return days
    try:
        return days | public_holidays(args.holidays_country, args.holidays_subdivision)
    except HolidayCalendarError as exc:
        raise ValueError(f"--{exc.key.replace('_', '-')}: {exc}") from None


def _holidays_judged(holidays: frozenset[date], first: date, last: date) -> str:
    if not holidays:
        return "no holidays given (--holidays-country CC): they are judged as weekdays"
    on_weekdays = sum(first <= d <= last and d.weekday() < 5 for d in holidays)
    return f"{on_weekdays} holiday(s) on weekdays judged as Sundays"


def _warn_read(flows: Any) -> None:
    """What reading the file skipped or guessed, as `score flow-leak` and `score burst` say it."""
    from water_edge.models.flow_leak.mnf import ERROR_CODES, LARGEST_FLOW

    if flows.preamble:
        _warn(f"skipping {flows.preamble} line(s) before the header (the export's title, station or period?)")
    if flows.unit_rows:
        _warn(f"skipping {flows.unit_rows} row(s) under the header with no numbers in them (units?)")
    if flows.guessed_day_first:
        _warn("no date in the file has a day above 12: read as DD/MM/YYYY")
    if flows.resets:
        _warn(
            f"a volume register went down {flows.resets} time(s) "
            "(a meter replaced? a register rolled over?): those intervals skipped"
        )
    if flows.skipped:
        _warn(f"{flows.skipped} row(s) with unreadable values skipped")
    for column, both in flows.mixed.items():
        _warn(both.warning(column))
    if flows.no_value:
        _warn(
            f"{flows.no_value} row(s) with a value of {LARGEST_FLOW:g} or more skipped: a logger's mark of "
            f"no value, not a flow (first: {flows.first_no_value})"
        )
    if flows.error_codes:
        codes = ", ".join(f"{c:g}" for c in sorted(ERROR_CODES, reverse=True))
        _warn(f"{flows.error_codes} row(s) holding a meter error code ({codes}) skipped")
    if flows.skipped_hour:
        _warn(
            f"{flows.skipped_hour} row(s) stamped in an hour the district's clocks skip when daylight "
            f"saving begins (first: {flows.first_skipped_hour}): the timestamps are not its wall clock. "
            "A historian's export in UTC or standard time? Give --timestamps-zone (UTC, or the fixed "
            "offset: Etc/GMT-1 is UTC+1); read as local, demand moves an hour against the profile at "
            "every change of clock"
        )


def _timestamps_zone(args: argparse.Namespace) -> tzinfo | None:
    from water_edge.core.local_zone import zone

    if args.timestamps_zone is None:
        return None
    try:
        return zone(args.timestamps_zone)
    except ValueError as exc:
        raise ValueError(f"--timestamps-zone: {exc}") from None


def _warn(message: str) -> None:
    sys.stderr.write(f"edge-agent models: warning: {message}\n")
