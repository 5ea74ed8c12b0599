"""The layout of a SCADA or historian export around its table: its separator and where the table
begins. Shared by the CSV readers of `models score pump`, `models score flow-leak` and
`models score burst`.

Many exports write a few lines before the header (the export's title, the station, the period
asked for), which a reader taking the first line as the header reads as a header of one column,
and some write rows under it that describe the columns (units, tag names). `layout` reads the
first `MAX_PREAMBLE_LINES` + a few non-blank lines:

- The first data row is the first line whose first cell is a timestamp and whose other cells are
  mostly numbers, or a line right above it that is data too (`_data_too`): a logger's `Err` or
  `Offline` in every signal cell is a row of missing readings, and a glitched stamp
  (`2024-03-32 02:00`, `n/a`) over numbers a row the reader reports.
- The separator is the one of tab, `;` and `,` under which such a first data row exists and the
  data rows, with the line above them, have the same number of cells (on a tie, in that order).
  Counting separators on a line does not tell: `01.03.2024 00:00<TAB>99,634<TAB>3,0` (Excel's
  "Unicode text" in a German locale) has as many commas as tabs.
- The header is the line right above the first data row, past up to `MAX_UNIT_ROWS` rows that
  describe the columns (`_describes_columns`). When the line above those names fewer columns than
  they do (a title, `Export;;;`, above a header with no name for its timestamp column, `;flow;…`),
  the topmost of them is the header. With `wanted` column names, the line that names all of them.
  Title lines as wide as the table (`Pumpwerk Nord;Pumpe 1;von 01.03.2024;bis 01.03.2024`, or
  padded by a spreadsheet, `Station:;North;;;`) are thus skipped: up to `MAX_PREAMBLE_LINES`.

When no line read is a data row, or the first already is, there is no preamble to skip (and with
no data row, no separator known): the reader's own errors say what is wrong with the file. The
rows under the header are the reader's own business too: it skips them by its own rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from itertools import islice

from water_edge.core.csv_records import cells as split_cells
from water_edge.core.timestamps import parse_time

MAX_PREAMBLE_LINES = 20
MAX_UNIT_ROWS = 3  # text-only rows under the header read as part of it (units, descriptions)
# Cells that say "no value" rather than being text: not a units row, a missing reading.
MISSING_MARKS = frozenset({"nan", "na", "n/a", "#n/a", "null", "none", "-", "--", "?", "inf", "-inf"})
_LOOK_AHEAD = MAX_PREAMBLE_LINES + 5  # a units row or two, and the first data row
SEPARATORS = ("\t", ";", ",")  # on a tie in this order: a comma may be a decimal mark
_NUMBER = re.compile(r"[-+]?(\d[\d.,]*|[.,]\d+)([eE][-+]?\d+)?")
_GROUPING = str.maketrans("", "", " \u00a0\u202f'")  # 1 234,5 and 1'234.5
_DATE_LIKE = re.compile(r"\s*\d{1,4}[-/.]\d{1,2}[-/.]\d")  # a stamp, even one that does not parse
# What the first cell of a row describing the columns says it is.
_DESCRIBES = re.compile(
    r"\W*(units?|uom|eu|engineering units?|einheit(en)?|unit[ée]s?|eenhe(id|den)|unit[àa]|unidad(es)?"
    r"|enhet(er)?|dimension|tags?|tag ?names?|descriptions?|beschreibung(en)?|comments?|kommentar"
    r"|address(es)?|adressen?)\W*",
    re.IGNORECASE,
)
# Units a SCADA export writes under its column names (not single letters: names too).
_UNIT_WORDS = (
    "m3/h m³/h m3/s m³/s m3/d m³/d m3 m³ l/s l/min l/h ml/s bar mbar pa kpa mpa psi mws mwc mm cm ma mv kv "
    "kw mw wh kwh mwh va kva var kvar hz rpm 1/min u/min min-1 % °c degc °f mm/s m/s mg/l ntu ph µs/cm us/cm"
)
_UNITS = frozenset(_UNIT_WORDS.split())


@dataclass(frozen=True, slots=True)
class Layout:
    separator: str | None  # None when no line read is a data row under any separator
    preamble: int  # non-blank lines before the header


def is_timestamp(cell: str) -> bool:
    for day_first in (True, False):  # 13/03/2024 or 03/13/2024
        try:
            parse_time(cell.strip().strip('"'), UTC, day_first)
        except ValueError:
            continue
        return True
    return False


def _cells(line: str, sep: str) -> list[str]:
    return [c.strip().strip('"').strip() for c in split_cells(line, sep)]


def _numbers(row: list[str]) -> tuple[int, int]:
    """How many of the row's signal cells are numbers, and how many hold anything but a missing mark."""
    filled = [c for c in row[1:] if c and c.lower() not in MISSING_MARKS]
    return sum(1 for c in filled if _NUMBER.fullmatch(c.translate(_GROUPING))), len(filled)


def _data_start(rows: list[list[str]]) -> int | None:
    """Where the data rows begin (see the module's docstring), None when no row is one."""
    for first, row in enumerate(rows):
        numbers, filled = _numbers(row)
        if numbers and 2 * numbers >= filled and is_timestamp(row[0]):
            start = first
            while start > 0 and _data_too(rows[start - 1]):
                start -= 1
            return start
    # No row with numbers in the lines read: a logger's status text alone is still data.
    return next((i for i, r in enumerate(rows) if len(r) > 1 and is_timestamp(r[0])), None)


def _data_too(row: list[str]) -> bool:
    """Whether a row right above a data row is data too: its first cell is (or tries to be) a date,
    or its signal cells are mostly numbers under a stamp that cannot be read (`n/a`, `Err`) — but
    not whole numbers under a name: a header naming its columns by tag number (`time;101;102`)."""
    first = row[0]
    if _DATE_LIKE.match(first) or is_timestamp(first):
        return True
    numbers, filled = _numbers(row)
    if not numbers or 2 * numbers < filled:
        return False
    whole = all(c.isdigit() for c in row[1:] if _NUMBER.fullmatch(c.translate(_GROUPING)))
    return not whole or not first or first.lower() in MISSING_MARKS


def _fit(rows: list[list[str]], start: int) -> tuple[bool, bool, float]:
    """How well the rows read as a table with data from `start`: a first data row with numbers, two
    cells or more, and the share of the data rows (and the line above them) as wide as the first."""
    numbers, filled = _numbers(rows[start])
    width = len(rows[start])
    block = rows[max(0, start - 1) :]
    return numbers > 0 and 2 * numbers >= filled, width > 1, sum(len(r) == width for r in block) / len(block)


def _describes_columns(row: list[str], width: int) -> bool:
    """A row under the header about its columns rather than a header: as wide as the data, no
    number, and a blank first cell (a timestamp column has no unit), a label there (`Unit`, `Tag`,
    `Einheit`) or a unit in every filled signal cell."""
    signals = [c for c in row[1:] if c]
    if len(row) != width or not signals or _numbers(row)[0]:
        return False
    first = row[0]
    if not first or first.lower() in MISSING_MARKS or _DESCRIBES.fullmatch(first):
        return True
    return all(c.strip("[]()").lower() in _UNITS for c in signals)


def _header(rows: list[list[str]], start: int, wanted: Sequence[str]) -> int:
    """Which of `rows` is the header, the data beginning at `start` (see the module's docstring)."""
    if wanted:
        for j in range(start - 1, -1, -1):
            if all(w in rows[j] for w in wanted):
                return j
    above = 0
    while above < min(MAX_UNIT_ROWS, start) and _describes_columns(rows[start - 1 - above], len(rows[start])):
        above += 1
    line, top = start - 1 - above, start - above
    if not above or (line >= 0 and len(rows[line]) > 1 and _filled(rows[line]) >= _filled(rows[top])):
        return line
    return top


def _filled(row: list[str]) -> int:
    return sum(1 for c in row if c)


def layout(lines: Iterable[str], wanted: Sequence[str] = ()) -> Layout:
    """The separator of the export whose `lines` these are, and how many of its non-blank lines
    come before the header. With `wanted` column names, the header is the line that names them."""
    head = [line for line in islice(lines, _LOOK_AHEAD) if line.strip()]
    found: list[tuple[tuple[bool, bool, float], str, list[list[str]], int]] = []
    for sep in SEPARATORS:
        if not any(sep in line for line in head):
            continue
        rows = [_cells(line, sep) for line in head]
        start = _data_start(rows)
        if start is not None:
            found.append((_fit(rows, start), sep, rows, start))
    if not found:
        return Layout(None, 0)
    _, sep, rows, start = max(found, key=lambda f: f[0])  # the first of the best: SEPARATORS' order
    header = _header(rows, start, wanted) if start else 0
    return Layout(sep, header if header <= MAX_PREAMBLE_LINES else 0)


def preamble_lines(lines: Iterable[str], wanted: Sequence[str] = ()) -> int:
    """How many of the non-blank `lines` come before the header (0 when there are none). With
    `wanted` column names, the header is the line that names all of them."""
    return layout(lines, wanted).preamble
