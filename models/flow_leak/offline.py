"""`edge-agent models score flow-leak`: minimum night flow and its steps from a SCADA export (CSV).

The file has a header and a timestamp column first; columns are separated by ',', ';' or tabs
(the one that splits the data rows and the line above them alike: `core.export_layout.layout`), in
UTF-8 or UTF-16 with a byte-order mark (Excel's "Unicode text"). Numbers use a decimal point or a
decimal comma, each column's read from its cells, digits grouped or not ('1,185.8', '1.185,8',
'1 494,5', "1'234.5": `core.export_numbers`, shared with `score pump`); a value of `LARGEST_FLOW` or
more is a logger's "no value": its row is skipped, counted apart. Timestamps are ISO 8601,
'YYYY-MM-DD' or 'YYYY/MM/DD' (Japanese exports), or a numeric date with the year last: 'DD.MM.YYYY',
and 'DD/MM/YYYY' or 'MM/DD/YYYY' (US exports) — the order is read from the whole column (a first
field above 12 is a day, a second field above 12 is a day), day first when nothing in the file
tells; a time 'HH:MM[:SS]', or 'h:MM[:SS] AM/PM', follows. Without an offset they are
local times of `--timezone`, with one they are converted to it. Any regular interval works.
Net flow per row = sum of the `--flow` columns minus the `--minus` columns (each column once: one
given twice, as both, or also as `--pressure`, is refused); a row with an empty or unreadable cell
in them is skipped and counted.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from itertools import islice
from pathlib import Path

import numpy as np
import numpy.typing as npt

from water_edge.core.csv_records import records
from water_edge.core.export_layout import MAX_UNIT_ROWS, MISSING_MARKS, layout
from water_edge.core.export_numbers import Formats, Mixed
from water_edge.core.textfiles import lines_of, read_export
from water_edge.core.timestamps import day_first, parse_time, skipped_hour, year_last
from water_edge.models.flow_leak.detector import FixedThreshold, Night, StepDetector, StepParams
from water_edge.models.flow_leak.mnf import LARGEST_FLOW, NS, is_error_code, night_figures
from water_edge.models.flow_leak.volume import VolumeRate, looks_like_totaliser
from water_edge.models.nightwindow import NightWindow


class FlowCsvError(ValueError):
    """The file cannot be used; the message names the file and what is wrong."""


@dataclass
class NightFlows:
    """Per night (local date the window began): MNF and pressure (`mnf.night_figures`)."""

    nights: list[tuple[date, float | None, float | None]]
    rows: int
    skipped: int
    guessed_day_first: bool = False  # numeric dates none of which said day or month first
    resets: int = 0  # volume registers that went down (with `volume`): those intervals skipped
    error_codes: int = 0  # rows skipped for a meter's error code (mnf.ERROR_CODES) in a used column
    glitches: int = 0  # night rows left out of their night's MNF as glitches (glitch.night_glitches)
    preamble: int = 0  # lines skipped before the header
    unit_rows: int = 0  # text-only rows skipped under the header
    no_value: int = 0  # rows skipped for a value of LARGEST_FLOW or more in a used column
    first_no_value: str = ""  # where the first is ("line 12, column 'inflow': '1e308'")
    mixed: dict[str, Mixed] = field(default_factory=dict)  # `_Counts.mixed`
    skipped_hour: int = 0  # rows stamped in the hour the zone's clocks skip (`_Counts`)
    first_skipped_hour: str = ""


@dataclass
class _Row:
    local: datetime  # wall clock in the night window's zone
    instant: int  # UTC ns: a DST change falls inside the night window
    cells: dict[str, float]  # the flow and minus columns
    pressure: float


@dataclass
class _Counts:
    read: int = 0  # data rows in the file
    skipped: int = 0  # unreadable
    first_bad: dict[str, str] | None = None  # per column: its first unreadable cell
    error_codes: int = 0  # a flow or pressure cell holding a meter's error code (mnf.ERROR_CODES)
    guessed_day_first: bool = False
    preamble: int = 0  # lines before the header (an export's title, station, period)
    unit_rows: int = 0  # text-only rows under the header (units, descriptions)
    no_value: int = 0  # a used cell of LARGEST_FLOW or more (a logger's "largest double" for no value)
    first_no_value: str = ""
    mixed: dict[str, Mixed] = field(default_factory=dict)  # columns with decimal commas and points
    skipped_hour: int = 0  # rows stamped in the hour the zone's clocks skip: not its wall clock
    first_skipped_hour: str = ""


def _refuse_repeats(flow: Sequence[str], minus: Sequence[str], pressure: str | None = None) -> None:
    """A column given twice would be summed twice (the flow doubled), or added and taken away; a
    flow column given as the pressure would correct the flow by itself."""
    for option, given in (("--flow", flow), ("--minus", minus)):
        twice = [c for c in dict.fromkeys(given) if given.count(c) > 1]
        if twice:
            raise FlowCsvError(
                f"{option} {twice[0]!r} is given {given.count(twice[0])} times: give each column once"
            )
    both = [c for c in flow if c in minus]
    if both:
        raise FlowCsvError(
            f"column {both[0]!r} is given both as --flow and as --minus: "
            "it is an inflow or an outflow, not both"
        )
    if pressure is not None and pressure in (*flow, *minus):
        option = "--flow" if pressure in flow else "--minus"
        raise FlowCsvError(
            f"column {pressure!r} is given both as {option} and as --pressure: "
            "a flow (m3/h) or a pressure (bar), not both"
        )


def _rows(
    path: Path,
    columns: Sequence[str],
    pressure: str | None,
    tz: tzinfo,
    counts: _Counts,
    *,
    naive_tz: tzinfo | None = None,
) -> Iterator[_Row]:
    """The file's readable rows, one at a time (a year of minutes is half a million of them).
    Timestamps without an offset are `tz`'s wall clock, or `naive_tz`'s when given."""
    wanted = [*columns, *([pressure] if pressure else [])]
    lines, first, sep = _table(path, wanted, counts)
    reader = records(lines, sep)
    header = [h.strip() for h in next(reader)]
    idx = _columns(path, lines.header, header, wanted)
    formats = _formats(lines, sep, len(header))
    mixed = formats.mixed()
    counts.mixed = {c: mixed[j] for c, j in idx.items() if j in mixed}
    order = day_first(line.split(sep, 1)[0].strip('" ') for line in lines.data())
    counts.first_bad = {}
    kept = 0
    wall_clock = _WallClock(tz)
    for line_no, row in enumerate(reader, start=first + 2):
        if not row or not any(cell.strip() for cell in row):
            continue
        counts.read += 1
        try:
            local = parse_time(row[0], tz, order is not False, naive_tz)
        except ValueError as exc:
            if counts.read == 1 and counts.unit_rows < MAX_UNIT_ROWS and _units_row(row, idx, formats):
                counts.read, counts.unit_rows = 0, counts.unit_rows + 1  # units: part of the header
                continue
            if counts.read == 1:
                raise FlowCsvError(f"{path}: line {line_no}: {exc}") from None
            counts.skipped += 1
            continue
        if order is None and not counts.guessed_day_first:
            counts.guessed_day_first = year_last(row[0])
        numbers, bad, huge = _numbers(row, idx, formats)
        if bad is not None:  # the column whose cell is no number
            counts.skipped += 1
            counts.first_bad.setdefault(bad, row[idx[bad]] if idx[bad] < len(row) else "")
            continue
        if huge is not None:
            counts.no_value += 1
            if not counts.first_no_value:
                counts.first_no_value = f"line {line_no}, column {huge!r}: {row[idx[huge]].strip()!r}"
            continue
        values = {c: numbers[c] for c in columns}
        p = numbers[pressure] if pressure else math.nan
        if is_error_code(p) or any(is_error_code(v) for v in values.values()):
            counts.error_codes += 1
            continue
        kept += 1
        wall_clock.check(local, row[0], counts)
        yield _Row(local, int(local.replace(tzinfo=tz).timestamp() * 1e9), values, p)
    if counts.read == 0:
        raise FlowCsvError(f"{path}: no data rows")
    if kept == 0:
        raise FlowCsvError(f"{path}: none of its {counts.read} data rows is usable: {_why_none(counts)}")


class _WallClock:
    """Counts the rows stamped in an hour `tz`'s clocks skip when daylight saving begins: a file
    stamped there is not that zone's wall clock (a historian's UTC, read as local). Told once per
    half hour of the file (a zone may skip half an hour): a year of minutes is half a million rows."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.skipped: dict[tuple[date, int, bool], bool] = {}

    def check(self, local: datetime, cell: str, counts: _Counts) -> None:
        half_hour = (local.date(), local.hour, local.minute >= 30)
        skipped = self.skipped.get(half_hour)
        if skipped is None:
            skipped = self.skipped[half_hour] = skipped_hour(local, self.tz)
        if skipped:
            counts.skipped_hour += 1
            counts.first_skipped_hour = counts.first_skipped_hour or cell.strip()


def _columns(path: Path, line: str, header: list[str], wanted: list[str]) -> dict[str, int]:
    """Where each wanted column is in the header; FlowCsvError when one is absent or given twice."""
    if len(header) < 2:
        raise FlowCsvError(
            f"{path}: the header {line[:60]!r} has no ',', ';' or tab separator: "
            "need a timestamp column and the flow columns"
        )
    missing = [c for c in wanted if c not in header]
    if missing:
        raise FlowCsvError(f"{path}: no column(s) {', '.join(missing)} (columns: {', '.join(header[1:])})")
    for c in dict.fromkeys(wanted):
        where = [str(j + 1) for j, h in enumerate(header) if h == c]
        if len(where) > 1:
            raise FlowCsvError(
                f"{path}: column {c!r} appears {len(where)} times (columns {', '.join(where)}): "
                "rename them in the header so that each name says which meter it is"
            )
    return {c: header.index(c) for c in wanted}


@dataclass(frozen=True)
class _Lines:
    """The file's lines from its header on, read from its text each time they are gone through
    (`textfiles.lines_of`): a year of minute rows is 24 MB of text, and a list of its lines was
    54 MB more."""

    text: str
    start: int  # where the header line begins in `text`

    def __iter__(self) -> Iterator[str]:
        return lines_of(self.text, self.start)

    @property
    def header(self) -> str:
        return next(iter(self))

    def data(self) -> Iterator[str]:
        """The lines under the header."""
        return islice(self, 1, None)


def _table(path: Path, wanted: Sequence[str], counts: _Counts) -> tuple[_Lines, int, str]:
    """The file's lines from its header on (past an export's preamble, counted in `counts`), the
    header's index among the file's lines, and the separator (`export_layout.layout`: the one that
    splits the data rows and the line above them alike; counted in the header alone,
    'Zeit;Zufluss, m3/h;Druck, bar' was split on its commas)."""
    try:
        text = read_export(path)
    except OSError as exc:
        raise FlowCsvError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise FlowCsvError(f"{path}: not a text file ({exc.reason})") from exc
    found = layout(lines_of(text), wanted)
    counts.preamble = found.preamble
    first, start = _header_at(text, counts.preamble)
    lines = _Lines(text, start)
    if next(lines.data(), None) is None:
        raise FlowCsvError(f"{path}: needs a header and at least one data row")
    # No data row found under any separator: the header's, for the reader's own errors to name.
    sep = found.separator or max((",", ";", "\t"), key=lines.header.count)
    return lines, first, sep


def _header_at(text: str, preamble: int) -> tuple[int, int]:
    """The header's index among the lines of `text` and where it begins: the first non-blank line
    after `preamble` non-blank ones (the end of the text when there is none)."""
    start, nonblank = 0, 0
    for index, line in enumerate(lines_of(text)):
        if line.strip():
            if nonblank == preamble:
                return index, start
            nonblank += 1
        start += len(line) + 1
    return 0, len(text)


def _formats(lines: _Lines, sep: str, width: int) -> Formats:
    """Each column's decimal mark, learnt from the cells under the header."""
    formats = Formats(sep, width)
    for row in records(lines.data(), sep):
        formats.see((row + [""] * width)[:width])
    return formats.settle()


def _units_row(row: list[str], idx: dict[str, int], formats: Formats) -> bool:
    """A row under the header with text and no number in every column asked for (units, tag
    descriptions)."""
    cells = [(j, row[j].strip() if j < len(row) else "") for j in idx.values()]
    return all(c for _, c in cells) and all(_is_text(formats, j, c) for j, c in cells)


def _is_text(formats: Formats, j: int, cell: str) -> bool:
    return (
        math.isnan(formats.parse(j, cell))
        and not formats.too_large(j, cell)
        and cell.lower() not in MISSING_MARKS
    )


def _numbers(
    row: list[str], idx: dict[str, int], formats: Formats
) -> tuple[dict[str, float], str | None, str | None]:
    """The row's cells in the columns of `idx` as numbers (`formats`), the first column whose cell
    is none (None when all are), and the first whose number is `LARGEST_FLOW` or more."""
    out, huge = {}, None
    for column, j in idx.items():
        cell = row[j] if j < len(row) else ""
        value = out[column] = formats.parse(j, cell)
        if math.isnan(value):  # no number, or one too large to be a flow
            if not formats.too_large(j, cell):
                return out, column, huge
            huge = column if huge is None else huge
    return out, None, huge


def _why_none(counts: _Counts) -> str:
    """Why no row could be used: the columns whose cells are no numbers, or the meter's error codes."""
    bad = counts.first_bad or {}
    if not bad and counts.no_value:
        return (
            f"{counts.no_value} rows hold a value of {LARGEST_FLOW:g} or more, a logger's mark of no value "
            f"(first: {counts.first_no_value})"
        )
    if not bad:
        return f"every row holds a meter error code ({counts.error_codes} rows)"
    return "; ".join(
        f"column {c!r} holds no number" + (f" (e.g. {cell.strip()!r})" if cell.strip() else " (empty)")
        for c, cell in bad.items()
    )


def _oldest_first(rows: Iterable[_Row]) -> list[_Row]:
    """A totaliser's rows in time order: flow is the difference to the reading before, so a
    historian's newest-first export, read as it comes, gave no interval at all. Stable: readings of
    one instant keep the file's order (the first is used)."""
    return sorted(rows, key=lambda row: row.instant)


def _in_time_order(
    ts: list[int], values: list[float], pressures: list[float]
) -> tuple[list[int], list[float], list[float]]:
    """One night's samples sorted by time, a time given twice (overlapping exports pasted
    together) kept once: the MNF's averaging runs over consecutive samples."""
    order = sorted(range(len(ts)), key=ts.__getitem__)
    kept = [i for n, i in enumerate(order) if n == 0 or ts[i] != ts[order[n - 1]]]
    return [ts[i] for i in kept], [values[i] for i in kept], [pressures[i] for i in kept]


def _from_volumes(rows: Iterable[_Row], meters: dict[str, VolumeRate]) -> Iterator[_Row]:
    """Rows whose columns are totalisers, as flows (`volume.VolumeRate`); resets are counted in
    `meters`. The first row, a repeated time or a reset gives no flow for its interval."""
    for row in rows:
        flows = {c: meters.setdefault(c, VolumeRate()).rate(row.instant, v) for c, v in row.cells.items()}
        if all(f is not None for f in flows.values()):
            yield _Row(
                row.local, row.instant, {c: f for c, f in flows.items() if f is not None}, row.pressure
            )


class _Given:
    """The flow columns as given, kept compactly to tell a totaliser passed as a flow."""

    def __init__(self, flow: Sequence[str]) -> None:
        self.instants = array("q")
        self.values = {c: array("d") for c in flow}

    def watch(self, rows: Iterable[_Row]) -> Iterator[_Row]:
        for row in rows:
            self.instants.append(row.instant)
            for c, values in self.values.items():
                values.append(row.cells[c])
            yield row

    def refuse_totalisers(self, path: Path) -> None:
        order = np.argsort(np.frombuffer(self.instants, dtype=np.int64), kind="stable")  # newest-first files
        instants = np.frombuffer(self.instants, dtype=np.int64)[order]
        for c, given in self.values.items():
            values = np.frombuffer(given, dtype=np.float64)[order]
            if looks_like_totaliser(instants, values):
                days = (instants[-1] - instants[0]) / 86.4e12
                raise FlowCsvError(
                    f"{path}: column {c!r} rises and never falls over {days:.0f} days: a volume totaliser "
                    "(m3), not a flow (m3/h); give --volume to read the flow from the meter's index"
                )


def read_night_flows(
    path: Path,
    flow: Sequence[str],
    minus: Sequence[str] = (),
    *,
    pressure: str | None = None,
    window: NightWindow,
    average_minutes: float = 15.0,
    volume: bool = False,
    naive_tz: tzinfo | None = None,
) -> NightFlows:
    """`volume`: the flow and minus columns are totalisers (m³); each row's flow is the volume
    drawn since the row before over the time between them (`volume.VolumeRate`).

    A night's samples are its rows' instants: the autumn night's repeated hour, stamped with its
    offsets, is two hours of samples, not one hour given twice. The file's own interval is what a
    night's lone sample stands for (`mnf.minimum_night_flow`)."""
    _refuse_repeats(flow, minus, pressure)
    counts, meters, given = _Counts(), dict[str, VolumeRate](), _Given(flow)
    rows = _rows(path, [*flow, *minus], pressure, window.tz, counts, naive_tz=naive_tz)
    rows = _from_volumes(_oldest_first(rows), meters) if volume else given.watch(rows)
    per_night: dict[date, tuple[list[int], list[float], list[float]]] = {}
    instants = array("q")
    for row in rows:
        instants.append(row.instant)
        night = window.night_of_local(row.local)
        if night is None:
            continue
        ts, values, pressures = per_night.setdefault(night, ([], [], []))
        ts.append(row.instant)
        values.append(sum(row.cells[c] for c in flow) - sum(row.cells[c] for c in minus))
        pressures.append(row.pressure)
    if not volume:
        given.refuse_totalisers(path)
    interval_s = _interval_s(instants)
    nights, glitches = [], 0
    for night in sorted(per_night):
        ts, values, pressures = _in_time_order(*per_night[night])
        got = night_figures(
            ts,
            values,
            pressures,
            window_min=window.minutes_on(night),
            average_minutes=average_minutes,
            interval_s=interval_s,
        )
        nights.append((night, got.flow, got.pressure))
        glitches += got.glitches
    resets = sum(m.resets for m in meters.values())
    return NightFlows(
        nights,
        counts.read,
        counts.skipped,
        guessed_day_first=counts.guessed_day_first,
        resets=resets,
        error_codes=counts.error_codes,
        glitches=glitches,
        preamble=counts.preamble,
        unit_rows=counts.unit_rows,
        no_value=counts.no_value,
        first_no_value=counts.first_no_value,
        mixed=counts.mixed,
        skipped_hour=counts.skipped_hour,
        first_skipped_hour=counts.first_skipped_hour,
    )


def _interval_s(instants: array[int]) -> float | None:
    """The file's sampling interval: the median step between its distinct instants (None with one)."""
    steps = np.diff(np.unique(np.frombuffer(instants, dtype=np.int64)))
    return float(np.median(steps)) / NS if steps.size else None


@dataclass
class NetFlows:
    """Every readable row's net flow, in time order (a time given twice kept once), held as arrays:
    a year of minute rows as datetimes and tuples took 90 MB."""

    wall_us: npt.NDArray[np.int64]  # local wall-clock time, microseconds since 1970-01-01 on that clock
    flow: npt.NDArray[np.float64]  # net flow, m3/h
    pressure: npt.NDArray[np.float64]
    rows: int
    skipped: int
    guessed_day_first: bool = False
    resets: int = 0
    error_codes: int = 0
    preamble: int = 0
    unit_rows: int = 0
    no_value: int = 0
    first_no_value: str = ""
    mixed: dict[str, Mixed] = field(default_factory=dict)
    skipped_hour: int = 0
    first_skipped_hour: str = ""

    def __len__(self) -> int:
        return len(self.wall_us)

    def local(self, i: int) -> datetime:
        """The `i`th sample's local wall-clock time (naive)."""
        return _wall_clock(int(self.wall_us[i]))

    def samples(self) -> Iterator[tuple[datetime, float, float]]:
        """(local wall-clock time, net flow m3/h, pressure) in time order."""
        for i in range(0, len(self), _CHUNK):  # as Python numbers a chunk at a time, not all at once
            chunk = slice(i, i + _CHUNK)
            wall, flow, pressure = self.wall_us[chunk], self.flow[chunk], self.pressure[chunk]
            for us, q, p in zip(wall.tolist(), flow.tolist(), pressure.tolist(), strict=True):
                yield _wall_clock(us), q, p


_WALL_EPOCH = datetime(1970, 1, 1)
_CHUNK = 4096


def _wall_clock(us: int) -> datetime:
    """A naive wall-clock time from its microseconds since `_WALL_EPOCH` on that clock."""
    return _WALL_EPOCH + timedelta(microseconds=us)


_MICROSECOND = timedelta(microseconds=1)


def read_net_flows(
    path: Path,
    flow: Sequence[str],
    minus: Sequence[str] = (),
    *,
    pressure: str | None = None,
    tz: tzinfo,
    volume: bool = False,
    naive_tz: tzinfo | None = None,
) -> NetFlows:
    """The file's net flow row by row (what `read_night_flows` reads, at every hour of the day)."""
    _refuse_repeats(flow, minus, pressure)
    counts, meters, given = _Counts(), dict[str, VolumeRate](), _Given(flow)
    rows = _rows(path, [*flow, *minus], pressure, tz, counts, naive_tz=naive_tz)
    rows = _from_volumes(_oldest_first(rows), meters) if volume else given.watch(rows)
    instants, wall_us, nets, pressures = array("q"), array("q"), array("d"), array("d")
    for row in rows:
        instants.append(row.instant)
        wall_us.append((row.local.replace(tzinfo=None) - _WALL_EPOCH) // _MICROSECOND)
        nets.append(sum(row.cells[c] for c in flow) - sum(row.cells[c] for c in minus))
        pressures.append(row.pressure)
    if not volume:
        given.refuse_totalisers(path)
    keep = _first_of_each_instant(np.frombuffer(instants, dtype=np.int64))
    return NetFlows(
        np.frombuffer(wall_us, dtype=np.int64)[keep],
        np.frombuffer(nets, dtype=np.float64)[keep],
        np.frombuffer(pressures, dtype=np.float64)[keep],
        counts.read,
        counts.skipped,
        guessed_day_first=counts.guessed_day_first,
        resets=sum(m.resets for m in meters.values()),
        error_codes=counts.error_codes,
        preamble=counts.preamble,
        unit_rows=counts.unit_rows,
        no_value=counts.no_value,
        first_no_value=counts.first_no_value,
        mixed=counts.mixed,
        skipped_hour=counts.skipped_hour,
        first_skipped_hour=counts.first_skipped_hour,
    )


def _first_of_each_instant(instants: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """The indices that put `instants` in time order, an instant given twice (overlapping exports
    pasted together) kept once, at its first row in the file."""
    order = np.argsort(instants, kind="stable")
    ordered = instants[order]
    return order[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if order.size else order


def correct_for_pressure(
    nights: Sequence[tuple[date, float | None, float | None]], calibrate: int, exponent: float
) -> list[tuple[date, float | None]]:
    """MNF x (P_ref / P_night)^N1, with P_ref the median night pressure of the calibration nights."""
    ref_values = sorted(p for _, _, p in nights[:calibrate] if p is not None and p > 0)
    if not ref_values:
        return [(n, v) for n, v, _ in nights]
    ref = ref_values[len(ref_values) // 2]
    out: list[tuple[date, float | None]] = []
    for n, v, p in nights:
        out.append((n, None if v is None or p is None or p <= 0 else v * (ref / p) ** exponent))
    return out


def score_nights(
    nights: Sequence[tuple[date, float | None]],
    *,
    calibrate_days: int,
    method: str = "step",
    params: StepParams | None = None,
    fixed_rise_pct: float = 20.0,
) -> list[Night]:
    """One `Night` row per night; the first `calibrate_days` nights only learn."""
    update: Callable[[date, float | None], Night]
    if method == "fixed":
        update = FixedThreshold(calibrate_nights=calibrate_days, rise_pct=fixed_rise_pct).update
    else:
        p = params or StepParams()
        update = StepDetector(StepParams(**{**p.__dict__, "baseline_nights": calibrate_days})).update
    return [update(n, v) for n, v in nights]
