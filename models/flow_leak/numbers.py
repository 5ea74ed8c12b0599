"""Numbers as SCADA exports write them, each column's decimal mark learnt from its own cells.

A cell may group its digits with `,` or `.` (whichever is not the decimal mark), a space, a
no-break space (U+00A0, U+202F: what French and Swiss exports write) or an apostrophe (`1'234.5`).
Most cells say which mark is the decimal one: `1,185.8` (the last mark), `1,234,567` (a repeated
mark groups), `12,5` or `40.18` (not three digits after it). Only a cell of 1-3 digits, one mark
and exactly three digits (`1,185`, `40.187`) could be either; it is read with its column's mark,
the one the other cells said (most of them). A column none of whose cells says takes the mark the
file's other columns agree on; with none, it is read as it always was: a lone `.` is a decimal
point, a lone `,` a decimal comma, but in a `,`-separated file, where a comma inside a quoted cell
of such a shape is thousands grouping (`"1,234"`), as the pump reader reads it
(`models/pump/offline.py`). Before, every comma of a `;` or tab file was a decimal comma: Excel's
US "Unicode text" export (`1,185.8`) was read 1000 times too small, silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

_GROUPS = " ,.\u00a0\u202f'\u2019"
_NUMBER = re.compile(
    r"(?P<sign>[-+]?)"
    rf"(?:(?P<plain>\d+)|(?P<grouped>\d{{1,3}}(?P<g>[{_GROUPS}])\d{{3}}(?:(?P=g)\d{{3}})*))?"
    r"(?:(?P<mark>[.,])(?P<frac>\d*))?"
    r"(?P<exp>[eE][-+]?\d+)?"
)
_AMBIGUOUS = re.compile(r"[-+]?[1-9]\d{0,2}[.,]\d{3}")


def _match(cell: str) -> re.Match[str] | None:
    m = _NUMBER.fullmatch(cell.strip())
    if m is None or not (m["plain"] or m["grouped"] or m["frac"]) or (m["g"] and m["g"] == m["mark"]):
        return None
    return m


def _says(m: re.Match[str]) -> str | None:
    """The decimal mark a matched cell says, None when it could be either (or has none)."""
    if m["g"] in (",", "."):
        return "." if m["g"] == "," else ","
    if m["mark"] is None or (m["g"] is None and _AMBIGUOUS.fullmatch(m[0])):
        return None
    return m["mark"]


def number(cell: str, decimal: str) -> float:
    """One cell as a number, its one ambiguous shape (`1,185`) read with `decimal` as the decimal
    mark; ValueError when it is none. Not checked for size: the caller decides what is too large."""
    m = _match(cell)
    if m is None:
        raise ValueError(cell)
    whole, frac = m["plain"] or m["grouped"] or "", m["frac"] or ""
    if m["g"]:
        whole = whole.replace(m["g"], "")
    if m["mark"] is not None and _says(m) is None and m["mark"] != decimal:
        whole, frac = whole + frac, ""  # grouping: '1,185' in a column written '1,185.8'
    return float(f"{m['sign']}{whole or '0'}.{frac or '0'}{m['exp'] or ''}")


def is_number(cell: str) -> bool:
    return _match(cell) is not None


class Formats:
    """Each column's decimal mark, from what its cells say (`learn`, one row at a time)."""

    def __init__(self, sep: str, columns: Mapping[str, int]) -> None:
        self.sep = sep
        self.columns = dict(columns)
        self.votes = {c: {".": 0, ",": 0} for c in columns}
        self.first: dict[str, dict[str, str]] = {c: {} for c in columns}  # mark -> first cell saying it
        self.lone = {c: {".": 0, ",": 0} for c in columns}  # cells that could be either, by mark

    def learn(self, rows: Iterable[Sequence[str]]) -> Formats:
        for row in rows:
            for c, j in self.columns.items():
                if j >= len(row) or ("," not in row[j] and "." not in row[j]):
                    continue
                m = _match(row[j])
                if m is None:
                    continue
                said = _says(m)
                if said is not None:
                    self.votes[c][said] += 1
                    self.first[c].setdefault(said, row[j].strip())
                elif m["mark"] is not None:
                    self.lone[c][m["mark"]] += 1
        return self

    def _said(self, column: str) -> str | None:
        votes = self.votes[column]
        if votes["."] == votes[","]:
            return None
        return "." if votes["."] > votes[","] else ","

    def decimal(self, column: str) -> str:
        said = self._said(column)
        if said is not None:
            return said
        others = {m for c in self.columns if c != column and (m := self._said(c)) is not None}
        if len(others) == 1:
            return others.pop()
        return "," if self.sep != "," and self.lone[column][","] else "."

    def mixed(self, column: str) -> tuple[str, str] | None:
        """A cell of the column with a decimal comma and one with a decimal point, when it has both."""
        first = self.first[column]
        return (first[","], first["."]) if len(first) == 2 else None
