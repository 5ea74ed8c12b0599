"""Numbers as SCADA and historian exports write them, each column's decimal mark learnt from its own
cells. Shared by the CSV readers of `models score pump` (`models/pump/offline.py`) and of
`models score flow-leak` and `models score burst` (`models/flow_leak/offline.py`).

A cell may group its digits in thousands with `,` or `.` (whichever is not its decimal mark), a
space, a no-break space (U+00A0, U+202F: what French and Swiss exports write) or an apostrophe
(`1'234.5`, or U+2019); grouping that is not in thousands (`12 34,5`) is no number. Most cells
show which mark is the decimal one (`own_mark`): `1,185.8` (the last mark), `1,234,567` (a repeated
mark groups), `12,5` or `40.18` (not three digits after it). Only a cell of 1-3 digits, one mark and
exactly three digits (`1,185`, `40.187`) could be either; it is read with its column's mark, the
one its other cells showed (`Formats`). A column none of whose cells shows one takes the mark the
file's other columns agree on; with none, and in a column with cells of both marks (exports pasted
together), such a cell is read as the separator suggests: `1,234` is 1.234 in a `;` or tab file and
1234 in a `,` file (a quoted cell), `1.234` is 1.234. Before the readers learnt the marks, every
comma of a `;` or tab file was a decimal comma: Excel's US "Unicode text" export (`1,185.8`) was
read 1000 times too small, silently.

A value of `LARGEST_READING` or more is no reading but a logger's or a historian's "largest double"
for no value (1.8e308), which would overflow every sum and square taken of it: `Formats.parse`
reads it as missing, and `Formats.too_large` tells it from a cell that is no number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# No pump signal nor district flow reaches this in any unit; a "largest double" for no value does.
# The gateway's bounds too (`models.pump.config.LARGEST_SIGNAL`, `models.flow_leak.mnf.LARGEST_FLOW`).
LARGEST_READING = 1e150

_SPACES = " \u00a0\u202f'\u2019"  # digit grouping besides the marks: spaces, no-break spaces, 1'234.5
_GROUPING = str.maketrans("", "", _SPACES)
# A number grouped by one of `_SPACES`: in thousands, in its whole part only.
_SPACED = re.compile(rf"[-+]?\d{{1,3}}([{_SPACES}])\d{{3}}(?:\1\d{{3}})*(?:[.,]\d*)?(?:[eE][-+]?\d+)?")
_NUMBER = re.compile(r"[-+]?(\d[\d.,]*|[.,]\d+)([eE][-+]?\d+)?")  # with `_SPACES` removed
_GROUPED = {  # an integer part grouped in thousands by the mark
    ",": re.compile(r"[-+]?[1-9]\d{0,2}(,\d{3})+"),
    ".": re.compile(r"[-+]?[1-9]\d{0,2}(\.\d{3})+"),
}
_ONE_GROUP = re.compile(r"[-+]?[1-9]\d{0,2}[.,]\d{3}")  # '1,234', '15.117': shows no mark (`own_mark`)
_OTHER = {",": ".", ".": ","}


def own_mark(text: str) -> str | None:
    """The decimal mark a number (its `_SPACES` grouping removed) shows by itself: the last of ','
    and '.' when it has both ('1,234.5', '1.234,5'); the other one when its one mark groups in
    thousands more than once ('1,234,567'); its one mark when that cannot be grouping ('0,512',
    '12.5'). None when it does not tell: '1,234' is 1234 in a US export and 1.234 in a German one."""
    comma, point = text.rfind(","), text.rfind(".")
    if comma >= 0 and point >= 0:
        return "," if comma > point else "."
    if comma < 0 and point < 0:
        return None
    mark = "," if comma >= 0 else "."
    if not _GROUPED[mark].fullmatch(text):
        return mark if text.count(mark) == 1 else None
    return _OTHER[mark] if text.count(mark) > 1 else None


def _ungrouped(text: str) -> str | None:
    """A stripped cell without its `_SPACES` grouping; None when that grouping is not in thousands
    ('12 34,5', '- 5', "1'2"): no number."""
    plain = text.translate(_GROUPING)
    if len(plain) != len(text) and not _SPACED.fullmatch(text):
        return None
    return plain


def _plain(cell: str, decimal: str | None, sep: str) -> str | None:
    """The cell as `float` reads it ('1,234.5' -> '1234.5'), None when it is no number. The cell's own
    decimal mark (`own_mark`) when it shows one, else `decimal` (its column's), else as the separator
    suggests: '1,234' is 1.234 in a ';' or tab file and 1234 in a ',' file (a quoted cell), '1.234'
    is 1.234."""
    text = _ungrouped(cell.strip())
    if text is None or ("," not in text and "." not in text):
        return text
    mark = own_mark(text) or decimal or ("," if "," in text and sep != "," else ".")
    whole, point, fraction = text.partition(mark)
    group = _OTHER[mark]
    if group in fraction or (group in whole and not _GROUPED[group].fullmatch(whole)):
        return None  # '1.2.3', '1,2.5': no number
    return whole.replace(group, "") + ("." if point else "") + fraction


def number(cell: str, decimal: str | None, sep: str) -> float:
    """One cell as a number (`_plain`), NaN when it is none or `LARGEST_READING` or more."""
    text = _plain(cell, decimal, sep)
    return math.nan if not text else _bounded(text)


def _spaced(cell: str) -> float:
    """A cell of one column's one mark, written as a decimal point, that `float` could not read:
    NaN unless it is grouped by `_SPACES` ('1 234.5'). '1,234,567' in a column of decimal commas
    is no number: its commas are not the column's grouping."""
    text = _ungrouped(cell.strip())
    return math.nan if not text else _bounded(text)


def _bounded(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if abs(value) < LARGEST_READING else math.nan


@dataclass(frozen=True, slots=True)
class Mixed:
    """A column with decimal commas and decimal points (rows pasted from another locale): the first
    cell of each, and the file's separator, which says how a cell showing neither reads."""

    comma: str
    point: str
    sep: str

    def warning(self, column: str) -> str:
        return (
            f"column {column!r} has decimal commas ({self.comma!r}) and decimal points ({self.point!r}): "
            "each number is read by its own mark, and one that shows none, '1,234', as "
            + ("1234" if self.sep == "," else "1.234")
        )


class Formats:
    """The decimal mark of each column of a table, learnt from all its cells (`see` every data row,
    then `settle`), and the parse that follows from it (`parse`): a column none of whose cells
    tells ('1,234' alone) takes the file's mark when its other columns agree on one, else the
    separator's default (`_plain`). Column 0 is the timestamp, whose dots say nothing."""

    def __init__(self, sep: str, width: int) -> None:
        self.sep = sep
        self.rows = 0
        self.filled = [0] * width
        self.shown: list[dict[str, str]] = [{} for _ in range(width)]  # mark -> the first cell showing it
        self.decimals: list[str | None] = []  # per column, once `settle`d; None: as `_plain` says
        self._point: list[bool] = []  # a cell whose one mark is '.' reads as a decimal point
        self._comma: list[bool] = []  # a cell whose one mark is ',' reads as a decimal comma

    def see(self, row: list[str]) -> None:
        """One data row, of at most `width` cells."""
        self.rows += 1
        for j, cell in enumerate(row):
            text = cell.strip()
            if not text:
                continue
            self.filled[j] += 1
            shown = self.shown[j]
            # Only a cell holding a mark not yet shown can show it: most cells are passed over.
            if (
                j
                and (("," in text and "," not in shown) or ("." in text and "." not in shown))
                and not _ONE_GROUP.fullmatch(text)
            ):
                plain = _ungrouped(text)
                if plain is not None and _NUMBER.fullmatch(plain):
                    mark = own_mark(plain)
                    if mark is not None:
                        shown.setdefault(mark, text)

    def settle(self) -> Formats:
        """Each column's decimal mark, from the rows seen."""
        marks = {m for shown in self.shown[1:] for m in shown}
        agreed = next(iter(marks)) if len(marks) == 1 else None
        self.decimals = [next(iter(s)) if len(s) == 1 else None if s else agreed for s in self.shown]
        # Where a cell of one mark is read at once (nearly every cell): not in a column of both
        # marks, where '1,234,567' shows its decimal mark by its grouping.
        pairs = list(zip(self.shown, self.decimals, strict=True))
        self._point = [len(s) < 2 and d != "," for s, d in pairs]
        self._comma = [len(s) < 2 and (d == "," or (d is None and self.sep != ",")) for s, d in pairs]
        return self

    def mixed(self) -> dict[int, Mixed]:
        """The columns with cells of both marks ('1,5' and '2.5')."""
        return {j: Mixed(s[","], s["."], self.sep) for j, s in enumerate(self.shown) if len(s) == 2}

    def parse(self, j: int, cell: str) -> float:
        """Cell `j` of a row as a number, NaN when it is none or `LARGEST_READING` or more; once
        `settle`d. A cell `float` reads at once is one without grouping (nearly every cell)."""
        if "," not in cell and self._point[j]:
            try:
                value = float(cell)
            except ValueError:
                return _spaced(cell)
            return value if abs(value) < LARGEST_READING else math.nan
        if "." not in cell and self._comma[j]:
            cell = cell.replace(",", ".")
            try:
                value = float(cell)
            except ValueError:
                return _spaced(cell)
            return value if abs(value) < LARGEST_READING else math.nan
        return number(cell, self.decimals[j], self.sep)

    def too_large(self, j: int, cell: str) -> bool:
        """Whether `parse` read cell `j` as missing for its size, not for being no number: digits
        of `LARGEST_READING` or more ('1e308', '1,8e308' in a column of decimal commas; not 'inf')."""
        text = _plain(cell, self.decimals[j], self.sep)
        if not text or not any(c.isdigit() for c in text):
            return False
        try:
            return abs(float(text)) >= LARGEST_READING
        except ValueError:
            return False
