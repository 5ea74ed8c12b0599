"""Offline scoring of a CSV of pump history: what `edge-agent models score pump --csv` runs.

The file has a header, timestamps in the first column and numeric signals in the others, under any
names, separated by commas, semicolons or tabs (`core.export_layout`, which also finds the header
under an export's title lines), with each column's decimal mark learnt from its cells
(`core.export_numbers.Formats`; both modules are shared with `score flow-leak`), in UTF-8 or UTF-16
with a byte-order mark (`core.textfiles`). Blank and non-numeric cells count as missing; a column
that is mostly text is ignored with a warning. The first `calibrate_rows` data rows calibrate the
pump; every data row gets exactly one output row.

Which detector scores the file depends on how much normal it was given:

- fewer than `STEADY_MAX_ROWS` calibration rows (an hour at 1 s): `models.pump.steady`, per-channel
  level and noise statistics around the one operating point such a short stretch can show (a test
  bed, a commissioning run), re-based after an event (`steady.detect`). The score is in units of
  its threshold.
- more: the gateway's detector (`models.pump.detector`: relations between signals and the shared
  TFLite scorer), which needs calibration to have seen the pump's range of operating points.

On simulated test-rig runs and 20-minute steady files (`models/train/pump_eval_rig.py`,
`pump_eval_short.py`) the first is far better; on 3-hour files with daily demand the second is
(docs/pump-anomaly.md).

A file is history, seen whole: once an alarm is confirmed (persistence), the rows just before it
whose score was already rising are marked too (`steady.backdate`, at most a minute), and once it
has cleared, the rows it waited through below the hysteresis are not (`steady.trim_cleared`), so an
anomaly is shown from where its evidence begins to where it ends. `causal=True` (`--causal`) marks
what a live gateway would have flagged at each row instead.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np

from water_edge.core.csv_records import records
from water_edge.core.export_layout import MAX_UNIT_ROWS, MISSING_MARKS, is_timestamp, layout
from water_edge.core.export_numbers import Formats, number
from water_edge.core.local_zone import system_zone
from water_edge.core.textfiles import lines_of, read_export
from water_edge.core.timestamps import day_first, parse_time
from water_edge.models.manifest import ModelError
from water_edge.models.pump import coverage, explain, steady
from water_edge.models.pump.config import LARGEST_SIGNAL
from water_edge.models.pump.detector import (
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    DEFAULT_SIZE_FACTOR,
    MIN_CALIBRATION_ROWS,
    Calibration,
    CalibrationError,
    Scorer,
    alarm_series,
    calibrate,
    explain_rows,
    held_together_rows,
    score_series,
    select,
)
from water_edge.models.pump.labelled import PointScores, as_labels, point_scores

NUMERIC_SHARE = 0.5  # a column is numeric when at least this share of its filled cells parse
STEADY_MAX_ROWS = 3600  # shorter calibrations are scored by `models.pump.steady`
ORDER_SAMPLE = 5000  # rows whose timestamps are checked for order
# The gateway detector's alarm defaults (the steady detector's are in `steady.SteadyParams`).
PERSISTENCE, CLEAR_AFTER, HYSTERESIS = 5, 30, 0.8


class InputError(ModelError):
    """The CSV cannot be used; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Table:
    timestamps: list[str]
    names: list[str]
    values: np.ndarray  # (rows, columns) float64, NaN where missing
    ignored: list[str]


def _separator(header: str) -> str:
    counts = {sep: header.count(sep) for sep in (";", ",", "\t")}
    sep = max(counts, key=lambda k: counts[k])
    if counts[sep] == 0:
        raise InputError("the header has no ',', ';' or tab separator: need a timestamp column and signals")
    return sep


def read_table(text: str, warn: Callable[[str], None] = lambda _m: None) -> Table:
    """The file as a table. Two passes over the rows, neither holding them: the first learns each
    column's number format from all its cells, the second parses into arrays (a week at 1 s is
    600,000 rows; held as strings they took a gigabyte)."""

    found = layout(_text_lines(text))
    preamble = found.preamble
    if preamble:
        warn(f"skipping {preamble} line(s) before the header (the export's title, station or period?)")

    def lines() -> Iterator[str]:
        return itertools.islice(_text_lines(text), preamble, None)

    header_line = next(lines(), None)
    if header_line is None:
        raise InputError("the file is empty")
    sep = found.separator or _separator(header_line)

    def raw_rows() -> Iterator[list[str]]:
        return itertools.islice(records(lines(), sep), 1, None)

    def rows() -> Iterator[list[str]]:
        for row in raw_rows():
            yield (row + [""] * width)[:width]

    header = next(records(lines(), sep))
    if len(header) < 2:
        raise InputError("need a timestamp column and at least one signal column")
    width = len(header)
    head = list(itertools.islice(rows(), MAX_UNIT_ROWS + 1))
    _refuse_header_rows_alone(head, sep)
    skip = _unit_rows(head, sep)
    if skip:
        warn(f"skipping {skip} row(s) under the header with no numbers in them (units?)")
    formats = Formats(sep, width)
    for row in itertools.islice(rows(), skip, None):
        formats.see(row)
    if formats.rows == 0:
        raise InputError("the file has a header but no data rows")
    stamps, values, unreadable, first_row = _parse(
        itertools.islice(raw_rows(), skip, None), formats.settle(), width
    )
    header, repeated = _unique_names(header)
    for name, count in repeated.items():
        warn(
            f"column {name!r} appears {count} times: read as {name!r}, "
            + ", ".join(f"'{name} ({k})'" for k in range(2, count + 1))
        )
    names, keep, ignored = _numeric(header, values, formats.filled)
    if not names:
        raise InputError("no numeric signal column found")
    for message in unreadable.messages(keep, header):
        warn(message)
    for j, both in formats.mixed().items():
        if j in keep:
            warn(both.warning(header[j].strip()))
    told = _warn_timestamps_not_first(header, first_row, values[0, 0], warn)
    first = values[:, 0]
    if not told and not np.isnan(first).any() and (np.diff(first) < 0).any():
        warn(
            f"the first column {header[0].strip()!r} is read as the timestamp (echoed, not scored), "
            "but its numbers go down: if it is a signal, put a timestamp column first"
        )
    # Every signal column kept (the usual case): a view, not a second copy of the table.
    run = keep == list(range(keep[0], keep[-1] + 1))
    kept = values[:, keep[0] : keep[-1] + 1] if run else values[:, keep]
    return Table(stamps, names, np.asfortranarray(kept), ignored)


def _read_text(path: Path) -> str:
    """The file's text (`textfiles.read_export`). A byte that is not UTF-8 in a text file (a legacy
    export's "m³/h") is read as U+FFFD; a file with NUL bytes among them is no text (a .npy, a
    workbook) and is refused as `score flow-leak` refuses it (it was "no numeric signal column found")."""
    try:
        try:
            return read_export(path)
        except UnicodeDecodeError as exc:
            text = read_export(path, errors="replace")
            if "\x00" in text:
                raise InputError(f"{path}: not a text file ({exc.reason})") from None
            return text
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _text_lines(text: str) -> Iterator[str]:
    """The non-blank lines of `text` (a leading BOM dropped), one at a time (`textfiles.lines_of`:
    a week at 1 s held as a list was 75 MB)."""
    return (line for line in lines_of(text, 1 if text.startswith("\ufeff") else 0) if line.strip())


def _unique_names(header: list[str]) -> tuple[list[str], dict[str, int]]:
    """The header with a repeated name numbered from its second time on ('Current', 'Current (2)'):
    exports put one tag name in two places, and a name stands for one column in the output, the
    explanations and the calibration."""
    seen: dict[str, int] = {}
    unique = [header[0]]
    for raw in header[1:]:
        name = raw.strip()
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 or not name else f"{name} ({seen[name]})")
    return unique, {name: n for name, n in seen.items() if n > 1 and name}


def _unit_rows(head: list[list[str]], sep: str) -> int:
    """How many rows right under the header are part of it: text in every signal cell and no
    number (units, descriptions, tag addresses). At most a few, and only when numbers follow: a
    file of text only is "no numeric column"."""
    skip = 0
    while skip < min(MAX_UNIT_ROWS, len(head) - 1) and _header_row(head[skip], sep):
        skip += 1
    return 0 if skip and _header_row(head[skip], sep) else skip


def _refuse_header_rows_alone(head: list[list[str]], sep: str) -> None:
    """InputError when the only rows under the header are a few with no number in them (units,
    descriptions): the file has no data rows, whatever its columns would have held."""
    if head and len(head) <= MAX_UNIT_ROWS and all(_header_row(row, sep) for row in head):
        raise InputError(
            f"the file has a header but no data rows (only {len(head)} row(s) under it with no "
            "numbers: units?)"
        )


def _numeric(
    header: list[str], values: np.ndarray, filled: list[int]
) -> tuple[list[str], list[int], list[str]]:
    """The signal columns that are numbers (at least `NUMERIC_SHARE` of their filled cells parse):
    names, indices, and the names of the others."""
    names, keep, ignored = [], [], []
    for j in range(1, len(header)):
        name = header[j].strip() or f"column {j + 1}"
        good = int(np.count_nonzero(~np.isnan(values[:, j])))
        if filled[j] and good >= NUMERIC_SHARE * filled[j]:
            names.append(name)
            keep.append(j)
        else:
            ignored.append(name)
    return names, keep, ignored


def _parse(
    raw: Iterator[list[str]], formats: Formats, width: int
) -> tuple[list[str], np.ndarray, _Unreadable, list[str]]:
    """The data rows as timestamps and a column-major array (as scored), what could not be read,
    and the first row's cells."""
    stamps: list[str] = []
    values = np.empty((formats.rows, width), dtype=np.float64, order="F")
    unreadable = _Unreadable()
    first_row: list[str] = []
    for i, row in enumerate(raw):
        cells = row
        if len(row) < width:
            unreadable.short_row(i, formats.sep.join(row))
            cells = row + [""] * (width - len(row))
        if i == 0:
            first_row = cells
        stamps.append(cells[0].strip())
        values[i, 0] = formats.parse(0, cells[0])
        for j in range(1, width):
            value = values[i, j] = formats.parse(j, cells[j])
            if math.isnan(value):  # a blank, a missing mark, or text where a number was expected
                unreadable.see(i, j, cells[j])
    return stamps, values, unreadable, first_row


def _warn_timestamps_not_first(
    header: list[str], first_row: list[str], first_value: float, warn: Callable[[str], None]
) -> bool:
    """A numeric first column with the timestamps in a later one: the first is taken as the
    timestamp (echoed, not scored), which is the signal an engineer would miss. Whether it said so."""
    if math.isnan(first_value):
        return False
    for j in range(1, len(first_row)):
        if is_timestamp(first_row[j]):
            warn(
                f"column {header[j].strip()!r} holds timestamps ({first_row[j].strip()!r}) and is not "
                f"read; the first column {header[0].strip()!r} holds numbers and is read as the timestamp "
                "(echoed, not scored): put the timestamp column first"
            )
            return True
    return False


class _Unreadable:
    """What in the data rows was read as missing without saying so: rows with fewer cells than the
    header (a cut-off line, a stray quote that took the row's separators) and signal cells holding
    neither a number nor a mark of a missing value (a logger's "Err"). Told once each, with the
    first."""

    def __init__(self) -> None:
        self.short = 0
        self.first_short: tuple[int, str] | None = None  # (data row index, the row)
        self.cells: dict[int, int] = {}  # column -> count
        self.first: dict[int, tuple[int, str]] = {}  # column -> (data row index, cell)

    def short_row(self, i: int, line: str) -> None:
        self.short += 1
        if self.first_short is None:
            self.first_short = (i, line)

    def see(self, i: int, j: int, cell: str) -> None:
        text = cell.strip()
        if not text or text.strip('"').lower() in MISSING_MARKS or _huge(text):
            return
        self.cells[j] = self.cells.get(j, 0) + 1
        self.first.setdefault(j, (i, text))

    def messages(self, columns: list[int], header: list[str]) -> list[str]:
        """The warnings; cells only in `columns` (the numeric ones: a text column is ignored whole)."""
        out = []
        if self.first_short is not None:
            i, row = self.first_short
            out.append(
                f"{self.short:,} row(s) have fewer cells than the header; the missing cells are read as "
                f"missing (first: data row {i + 1}: {row[:60]!r})"
            )
        seen = [j for j in columns if j in self.cells]
        if seen:
            j = min(seen, key=lambda c: self.first[c][0])
            i, text = self.first[j]
            out.append(
                f"{sum(self.cells[c] for c in seen):,} cell(s) in signal columns are not numbers and are "
                f"read as missing (first: data row {i + 1}, column {header[j].strip()!r}: {text[:40]!r})"
            )
        return out


def _huge(text: str) -> bool:
    """A number too large for a signal (a logger's "largest double" for no value), read as missing."""
    try:
        return abs(float(text)) >= LARGEST_SIGNAL
    except ValueError:
        return False


def _header_row(row: list[str], sep: str) -> bool:
    """Text in every signal cell and no number, nor a missing-value mark ('NaN', 'null', '-'), under
    a first cell that is no timestamp: a logger's `Err` in every signal of a row is missing readings."""
    signals = [c.strip() for c in row[1:]]
    return (
        all(c and c.lower() not in MISSING_MARKS for c in signals)
        and all(math.isnan(number(c, None, sep)) for c in signals)
        and not is_timestamp(row[0])
    )


def usable(x: np.ndarray, names: list[str]) -> tuple[list[int], list[str]]:
    """Indices of the columns that vary during calibration rows `x`, and the names of the others."""
    varies = []
    for j in range(x.shape[1]):
        col = x[np.isfinite(x[:, j]), j]
        varies.append(len(col) > 1 and float(col.max() - col.min()) > 1e-9 * (abs(float(col.min())) + 1.0))
    keep = [j for j in range(len(names)) if varies[j]]
    if not keep:
        raise CalibrationError("no channel varies during calibration (all constant or empty)")
    return keep, [n for j, n in enumerate(names) if not varies[j]]


# The `signals` column for the rows a final 0/1 alarm marks (`models.pump.explain.signals`).
Explanation = Callable[[np.ndarray], list[str]]


def score_steady(
    values: np.ndarray,
    names: list[str],
    calibrate_rows: int,
    params: steady.SteadyParams | None = None,
    warn: Callable[[str], None] = lambda _m: None,
    *,
    explained: bool = False,
) -> tuple[np.ndarray, np.ndarray, Explanation | None]:
    """Per-row scores (in units of the threshold), 0/1 alarms from the steady detector, and (when
    `explained`) the explanation of the rows an alarm marks."""
    p = params or steady.SteadyParams()
    keep, dropped = usable(values[:calibrate_rows], names)
    for name in dropped:
        warn(f"ignoring column {name!r}: constant or empty during calibration")
    x = values if len(keep) == values.shape[1] else values[:, keep]  # no copy of a week when all are kept
    model = steady.fit(x[:calibrate_rows], p)
    scores, alarm, per = steady.detect_per_statistic(model, x, calibrate_rows, keep=explained)
    if per is None:
        return scores, alarm, None
    return scores, alarm, partial(_steady_texts, model, x, per, [names[j] for j in keep])


def _steady_texts(
    model: steady.SteadyModel, x: np.ndarray, per: np.ndarray, names: list[str], alarm: np.ndarray
) -> list[str]:
    """The steady detector's `signals` column: what each row `alarm` marks stands on, by `per`,
    the statistics `steady.detect_per_statistic` judged."""
    rows = np.flatnonzero(alarm)
    moved = model.directions(x, rows)
    texts = [""] * len(alarm)

    def worded(part: slice) -> list[str]:
        at = per[:, rows[part]]
        words = explain.steady_words(at, moved[:, part], model.params.use_noise)
        return explain.signals(names, at.max(axis=0), words)

    explain.place(texts, rows, worded)
    return texts


def _as_history(
    scores: np.ndarray, alarm: np.ndarray, calibrate_rows: int, threshold: float, hysteresis: float
) -> np.ndarray:
    """Alarms from where their evidence began to where it ended (`steady.backdate`,
    `steady.trim_cleared`), on the rows after calibration only."""
    p = steady.SteadyParams()
    s = scores[calibrate_rows:] / threshold
    out = alarm.copy()
    marked = steady.backdate(s, alarm[calibrate_rows:], p.backdate_level, p.backdate_max)
    out[calibrate_rows:] = steady.trim_cleared(s, marked, hysteresis)
    return out


@dataclass(frozen=True)
class ScoredCsv:
    """The scored rows and how many data rows calibrated; `write` prints the output CSV, one row at
    a time (a week at 1 s held as output lines took more memory than the scoring)."""

    timestamps: list[str]
    scores: np.ndarray
    alarm: np.ndarray
    texts: list[str] | None  # what each marked row stands on (`explained`), "" for the others
    calibrate_rows: int
    labels: np.ndarray | None = None  # `label`: 1, 0 or NaN (unknown) per row

    def compared(self) -> PointScores | None:
        """The marked rows after calibration against the labelled ones (`--label`)."""
        if self.labels is None:
            return None
        return point_scores(self.alarm[self.calibrate_rows :], self.labels[self.calibrate_rows :])

    @property
    def marked(self) -> int:
        return int(np.count_nonzero(self.alarm))

    def write(self, out: TextIO) -> None:
        """`timestamp,score,anomaly`, and `signals` when explained."""
        writer = csv.writer(out, lineterminator="\n")
        texts = self.texts
        writer.writerow(["timestamp", "score", "anomaly", *(["signals"] if texts is not None else [])])
        for i, (ts, s, a) in enumerate(zip(self.timestamps, self.scores, self.alarm, strict=True)):
            writer.writerow([ts, f"{s:.6g}", int(a), *([texts[i]] if texts is not None else [])])


def take_label(table: Table, label: str) -> tuple[Table, np.ndarray]:
    """The table without the column named `label` (`--label`, exact name, else the one name that
    matches ignoring case) and that column as labels (`labelled.as_labels`); a column holding other
    numbers than 0 and 1 is refused."""
    names = [n.strip() for n in table.names]
    want = label.strip()
    found = [j for j, n in enumerate(names) if n == want] or [
        j for j, n in enumerate(names) if n.casefold() == want.casefold()
    ]
    if len(found) > 1:
        raise InputError(f"--label {label!r} matches {len(found)} columns but for case: give the exact name")
    if not found:
        if any(n.strip().casefold() == want.casefold() for n in table.ignored):
            raise InputError(f"--label {label!r}: the column holds text; give labels as 1 (anomalous) or 0")
        raise InputError(
            f"--label {label!r}: no numeric column of that name (the file's: {', '.join(names)})"
        )
    if len(names) == 1:
        raise InputError(f"--label {label!r} is the file's only numeric column: no signal is left to score")
    j = found[0]
    _refuse_non_labels(label, names[j], table.values[:, j])
    rest = [k for k in range(len(names)) if k != j]
    values = np.asfortranarray(table.values[:, rest])
    return replace(table, names=[table.names[k] for k in rest], values=values), as_labels(table.values[:, j])


def _refuse_non_labels(label: str, name: str, column: np.ndarray) -> None:
    """InputError when the `--label` column holds a number other than 0 and 1 (empty cells are
    unknown): a signal given by mistake (`--label flow`) would be taken out of the scoring and read as
    "anomalous" wherever it is not 0."""
    other = np.flatnonzero(np.isfinite(column) & (column != 0) & (column != 1))
    if other.size:
        i = int(other[0])
        raise InputError(
            f"column {name!r} given to --label {label!r} holds {other.size:,} value(s) other than 0 and 1 "
            f"(first: data row {i + 1}, {column[i]:.10g}): labels are 1 (anomalous) or 0 (normal), empty "
            f"where unknown; is {name!r} a signal?"
        )


def _warn_labelled_calibration(
    labels: np.ndarray | None, calibrate_rows: int, warn: Callable[[str], None]
) -> None:
    if labels is not None and (early := int(np.count_nonzero(labels[:calibrate_rows] == 1))):
        warn(
            f"--label marks {early:,} of the {calibrate_rows:,} calibration rows anomalous: "
            "calibration should be normal operation"
        )


def rows_before(timestamps: list[str], until: str, tz: tzinfo) -> int:
    """How many leading rows are stamped before `until` (`--calibrate-until`): calibration ends at
    the first row at or after it. Stamps and `until` are read alike (`core.timestamps`; without an
    offset, local times of `tz`). A row whose stamp cannot be read (a cut-off line, a glitch) is
    taken where it stands in the file; a first stamp that cannot be read says the column cannot."""
    order = day_first(timestamps) is not False
    try:
        limit = parse_time(until, tz, order)
    except ValueError:
        raise InputError(f"--calibrate-until {until!r} is not a timestamp (e.g. 2026-03-04T06:00)") from None
    for i, stamp in enumerate(timestamps):
        try:
            when = parse_time(stamp, tz, order)
        except ValueError:
            if i > 0:
                continue
            raise InputError(
                f"data row {i + 1}: timestamp {stamp!r} cannot be read, so --calibrate-until cannot be "
                "applied: give --calibrate-rows N instead"
            ) from None
        if when >= limit:
            return i
    return len(timestamps)


def _rows_until(
    path: Path, timestamps: list[str], until: str, tz: tzinfo, warn: Callable[[str], None]
) -> int:
    """The calibration rows of `--calibrate-until` (`rows_before`), said in a warning; InputError
    when they are too few, or all the rows, none being left to score (the message gives the file's
    last timestamp, the latest TIME that scores a row)."""
    rows = rows_before(timestamps, until, tz)
    if rows < MIN_CALIBRATION_ROWS:
        raise InputError(
            f"--calibrate-until {until} leaves {rows} row(s) before it; "
            f"calibration needs at least {MIN_CALIBRATION_ROWS}"
        )
    if rows == len(timestamps):
        raise InputError(
            f"--calibrate-until {until} leaves no row to score: the last row of {path} is stamped "
            f"{_last_stamp(timestamps, tz)!r}; give a time at or before it"
        )
    warn(f"calibrating on the first {rows:,} rows (stamped before {until})")
    return rows


def _last_stamp(timestamps: list[str], tz: tzinfo) -> str:
    """The last of the last ten stamps that can be read (a cut-off last line), else the last."""
    n = len(timestamps)
    order = day_first(timestamps) is not False
    last = _first_readable(timestamps, range(n - 1, max(-1, n - 11), -1), tz, order)
    return timestamps[last[0] if last else n - 1]


def refuse_newest_first(timestamps: list[str], tz: tzinfo) -> None:
    """InputError when the last row is stamped before the first (a historian's newest-first export):
    its first rows, which calibrate, would be the newest, and the detector would run backwards."""
    if len(timestamps) < 2:
        return
    order = day_first(timestamps) is not False
    n = len(timestamps)
    head = _first_readable(timestamps, range(min(n, 10)), tz, order)
    tail = _first_readable(timestamps, range(n - 1, max(-1, n - 11), -1), tz, order)  # a cut-off last line
    if head is None or tail is None:
        return  # a first column that is no time (a row number): nothing to tell
    (i, first), (j, last) = head, tail
    if last < first:
        raise InputError(
            f"the rows run newest first ({timestamps[i]} ... {timestamps[j]}): the first rows calibrate, "
            "so sort the file oldest first: (head -1 FILE; tail -n +2 FILE | tac) > SORTED.csv"
        )


def _first_readable(
    timestamps: list[str], rows: range, tz: tzinfo, order: bool
) -> tuple[int, datetime] | None:
    """The first of `rows` whose stamp can be read, with its time."""
    for i in rows:
        try:
            return i, parse_time(timestamps[i], tz, order)
        except ValueError:
            continue
    return None


def warn_out_of_order(timestamps: list[str], tz: tzinfo, warn: Callable[[str], None]) -> None:
    """Warn when rows are stamped before a row above them (a shuffled or pasted-together export):
    rows are scored in file order, so the detector would see time jump about. Judged on at most
    `ORDER_SAMPLE` rows spread over the file (a week at 1 s of dotted dates takes a minute to parse
    whole). One step back of at most an hour is the autumn clock change of local times: let pass."""
    order = day_first(timestamps) is not False
    stride = max(1, len(timestamps) // ORDER_SAMPLE)
    back: list[tuple[int, int, timedelta]] = []
    prev: tuple[int, datetime] | None = None
    for i in range(0, len(timestamps), stride):
        try:
            when = parse_time(timestamps[i], tz, order)
        except ValueError:
            continue
        if prev is not None and when < prev[1]:
            back.append((prev[0], i, prev[1] - when))
        prev = (i, when)
    if not back or (len(back) == 1 and back[0][2] <= timedelta(hours=1)):
        return
    before, after, _ = back[0]
    warn(
        f"the timestamps go back in time (first: data row {after + 1}, {timestamps[after]!r}, after "
        f"row {before + 1}, {timestamps[before]!r}); rows are scored in file order: sort the file by time"
    )


def score_csv(
    path: Path,
    calibrate_rows: int | None,
    model: Scorer,
    *,
    window: int,
    model_version: str,
    persistence: int | None = None,
    clear_after: int | None = None,
    hysteresis: float | None = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    size_factor: float = DEFAULT_SIZE_FACTOR,
    steady_params: steady.SteadyParams | None = None,
    causal: bool = False,
    explained: bool = False,
    calibrate_until: str | None = None,
    tz: tzinfo | None = None,
    label: str | None = None,
    warn: Callable[[str], None] = lambda _m: None,
) -> ScoredCsv:
    """Validate, calibrate and score; the output CSV's lines (header first).

    Calibration is the first `calibrate_rows` data rows, or (with `calibrate_rows` None) the rows
    stamped before `calibrate_until` (naive times in `tz`, default the system's zone);
    `persistence`, `clear_after` and `hysteresis` override the chosen detector's alarm defaults;
    `causal` leaves alarms where a live gateway would have raised them (no backdating);
    `explained` adds a `signals` column naming what each marked row stands on; `label` names a
    column of 1/0 labels, taken out of the signals and kept for `ScoredCsv.compared`."""
    if calibrate_rows is None and calibrate_until is None:
        raise InputError("give --calibrate-rows N or --calibrate-until TIME")
    text = _read_text(path)
    zone = tz or _local_zone()
    with _in_file(path):
        table = read_table(text, warn)
        del text  # a week at 1 s is 50 MB of it, not needed again
        table, labels = (table, None) if label is None else take_label(table, label)
        refuse_newest_first(table.timestamps, zone)
        warn_out_of_order(table.timestamps, zone, warn)
        if calibrate_rows is None:
            calibrate_rows = _rows_until(path, table.timestamps, calibrate_until or "", zone, warn)
    n = len(table.timestamps)
    if calibrate_rows < MIN_CALIBRATION_ROWS:
        raise InputError(f"--calibrate-rows must be at least {MIN_CALIBRATION_ROWS}")
    if calibrate_rows > n:
        raise InputError(f"--calibrate-rows {calibrate_rows} exceeds the {n} data rows in {path}")
    if calibrate_rows == n:
        raise InputError(
            f"--calibrate-rows {calibrate_rows} is every data row of {path}: no row is left to score; "
            "give fewer"
        )
    for name in table.ignored:
        warn(f"ignoring non-numeric column {name!r}")
    _warn_labelled_calibration(labels, calibrate_rows, warn)
    covered = coverage.check(table.values, table.names, calibrate_rows)
    if covered is not None and covered.poor():
        warn(covered.message(calibrate_rows, table.timestamps))
    if calibrate_rows < STEADY_MAX_ROWS:
        p = steady_params or steady.SteadyParams()
        p = replace(
            p,
            persistence=p.persistence if persistence is None else persistence,
            clear_after=p.clear_after if clear_after is None else clear_after,
            hysteresis=p.hysteresis if hysteresis is None else hysteresis,
        )
        with _named(path, table.names, calibrate_rows):
            scores, alarm, why = score_steady(
                table.values, table.names, calibrate_rows, p, warn, explained=explained
            )
        if not causal:
            alarm = _as_history(scores, alarm, calibrate_rows, 1.0, p.hysteresis)
        texts = None if why is None else why(alarm)
        return ScoredCsv(table.timestamps, scores, alarm, texts, calibrate_rows, labels)
    with _named(path, table.names, calibrate_rows):
        cal = calibrate(
            table.values[:calibrate_rows],
            table.names,
            model,
            window=window,
            model_version=model_version,
            quantile=quantile,
            margin=margin,
            size_factor=size_factor,
        )
    for name in cal.dropped:
        warn(f"ignoring column {name!r}: constant or empty during calibration")
    columns = select(table.values, table.names, cal)  # a view of the file's column-major table
    series, run = score_series(columns, cal, model)
    alarm = np.zeros(n, dtype=np.int8)  # the alarm state starts fresh after calibration
    alarm[calibrate_rows:] = alarm_series(
        series[calibrate_rows:],
        cal.threshold,
        PERSISTENCE if persistence is None else persistence,
        CLEAR_AFTER if clear_after is None else clear_after,
        HYSTERESIS if hysteresis is None else hysteresis,
    )
    if not causal:
        hyst = HYSTERESIS if hysteresis is None else hysteresis
        alarm = _as_history(series, alarm, calibrate_rows, cal.threshold, hyst)
    marked = np.flatnonzero(alarm)
    held = _held_together(cal, run, marked, table.timestamps, warn)
    texts = gateway_texts(cal, model, columns, run, held=held, marked=marked) if explained else None
    return ScoredCsv(table.timestamps, series, alarm, texts, calibrate_rows, labels)


def _held_together(
    cal: Calibration, run: np.ndarray, marked: np.ndarray, timestamps: list[str], warn: Callable[[str], None]
) -> np.ndarray:
    """Which signals of the `marked` rows stopped changing at the same sample (`held_together_rows`,
    from `run`), said in a warning when any did."""
    held = np.zeros(run.shape, dtype=bool)
    held[marked] = held_together_rows(cal, run[marked])
    if held.any():
        warn(_held_upstream(timestamps, held, run))
    return held


def gateway_texts(
    cal: Calibration,
    model: Scorer,
    columns: np.ndarray,
    run: np.ndarray,
    *,
    held: np.ndarray,
    marked: np.ndarray,
) -> list[str]:
    """The gateway detector's `signals` column: what each `marked` row stands on, from its piece of
    the file scored again (`detector.explain_rows`); `held` marks signals frozen together."""
    texts = [""] * len(columns)
    for piece in explain_rows(columns, cal, model, run, rows=marked, window=explain.RELATION_WINDOW):
        explain.place(texts, piece[0], partial(_gateway_words, cal, run, held, piece))
    return texts


def _gateway_words(
    cal: Calibration,
    run: np.ndarray,
    held: np.ndarray,
    piece: tuple[np.ndarray, np.ndarray, np.ndarray],
    part: slice,
) -> list[str]:
    """The texts of `piece` (`detector.explain_rows`: marked rows, their per-channel scores and mean
    residuals) at `part` of its rows."""
    rows, channel, mean_residual = piece
    at = rows[part]
    moved = explain.relation_words(mean_residual[part])
    words = explain.frozen_words(moved, run[at], cal.frozen(run[at]), held[at])
    return explain.signals(cal.channels, channel[part] / cal.threshold, words)


def _held_upstream(timestamps: list[str], held: np.ndarray, run: np.ndarray) -> str:
    """The note for marked rows that stand on signals frozen together (`held_together_rows`)."""
    rows = np.flatnonzero(held.any(axis=1))
    first = int(rows[0])
    start = max(0, first - int(run[first][held[first]].min()) + 1)  # where the values stopped
    return (
        f"{len(rows):,} marked row(s) stand on signals that stopped changing at the same sample "
        f"(first: {int(held[first].sum())} signals from data row {start + 1}, {timestamps[start]!r}): "
        "readings held upstream (a PLC, a protocol gateway or a historian's interpolation holding the "
        "last value), not the pump"
    )


@contextmanager
def _in_file(path: Path) -> Iterator[None]:
    """An `InputError` about the file's content names the file (one about an option is left as it is)."""
    try:
        yield
    except InputError as exc:
        if str(exc).startswith("--"):
            raise
        raise InputError(f"{path}: {exc}") from None


@contextmanager
def _named(path: Path, names: list[str], calibrate_rows: int) -> Iterator[None]:
    """A `CalibrationError` as an `InputError` naming the file, its rows and its signal columns."""
    try:
        yield
    except CalibrationError as exc:
        raise InputError(
            f"{path}: {exc} in its first {calibrate_rows:,} data rows (signals: {', '.join(names)})"
        ) from None


def _local_zone() -> tzinfo:
    return system_zone()[0]
