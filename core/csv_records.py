"""Cells of an export's lines, one record per line.

A SCADA or historian export writes one row per line; a quoted cell spanning lines is not something
they write. A stray quote is (a tag comment, a hand edit, a cut-off line): read as standard CSV, a
quote that is never closed takes every later line into one cell, and the rest of the file silently
becomes one bad row. Read line by line, it spoils its own row only, which the readers count.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator


def cells(line: str, sep: str) -> list[str]:
    """The line's cells; CSV quoting is honoured within the line (`"1,5";2`)."""
    if '"' not in line:
        return line.split(sep)  # what csv.reader gives for a line without quotes, 5x faster
    return next(csv.reader((line,), delimiter=sep), [])


def records(lines: Iterable[str], sep: str) -> Iterator[list[str]]:
    """`cells` of each line, in order."""
    for line in lines:
        yield cells(line, sep)
