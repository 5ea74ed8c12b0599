"""The layout of a SCADA or historian export around its table.

Where the table begins: many write a few lines before the header
(the export's title, the station, the period asked for), which a reader taking the first line as
the header reads as a header of one column. Shared by the CSV readers of `models score pump`,
`models score flow-leak` and `models score burst`.

The first data row is the first line whose first cell is a timestamp; the header is the first line
before it with as many separators as it has, preferring one that names the columns asked for, then
one with every cell filled: a spreadsheet saved as CSV pads its title lines to the table's width
("Historian export;;;;"). A units row under the header has as many separators too, and is the
reader's own business. When no line of the
first `MAX_PREAMBLE_LINES` + a few is a data row, or the first line already is, there is no
preamble to skip: the reader's own errors say what is wrong with the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC
from itertools import islice

from water_edge.core.timestamps import parse_time

MAX_PREAMBLE_LINES = 20
MAX_UNIT_ROWS = 3  # text-only rows under the header read as part of it (units, descriptions)
# Cells that say "no value" rather than being text: not a units row, a missing reading.
MISSING_MARKS = frozenset({"nan", "na", "n/a", "#n/a", "null", "none", "-", "--", "?", "inf", "-inf"})
_LOOK_AHEAD = MAX_PREAMBLE_LINES + 5  # a units row or two, and the first data row
SEPARATORS = (";", ",", "\t")


def is_timestamp(cell: str) -> bool:
    for day_first in (True, False):  # 13/03/2024 or 03/13/2024
        try:
            parse_time(cell.strip().strip('"'), UTC, day_first)
        except ValueError:
            continue
        return True
    return False


def _separator(line: str) -> str | None:
    sep = max(SEPARATORS, key=line.count)
    return sep if line.count(sep) else None


def _cells(line: str, sep: str) -> list[str]:
    return [c.strip().strip('"').strip() for c in line.split(sep)]


def preamble_lines(lines: Iterable[str], wanted: Sequence[str] = ()) -> int:
    """How many of the non-blank `lines` come before the header (0 when there are none). With
    `wanted` column names, the header is also the first line that names all of them."""
    head = [line for line in islice(lines, _LOOK_AHEAD) if line.strip()]
    for i, line in enumerate(head):
        sep = _separator(line)
        if sep is None or not is_timestamp(line.split(sep, 1)[0]):
            continue
        if i == 0:
            return 0  # no header at all: the reader says so
        width = line.count(sep)
        shaped = [j for j, c in enumerate(head[: min(i, MAX_PREAMBLE_LINES + 1)]) if c.count(sep) == width]
        naming = [j for j in shaped if wanted and all(w in _cells(head[j], sep) for w in wanted)]
        # A spreadsheet pads every line to the table's width ("Station:;North;;;"): the header is
        # the first line that names every column.
        full = [j for j in shaped if all(_cells(head[j], sep))]
        return (naming or full or shaped or [0])[0]
    return 0
