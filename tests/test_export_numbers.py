"""`core.export_numbers`: the cells of SCADA exports as numbers, the rules both export readers share
(`score pump`, `score flow-leak` / `score burst`)."""

from __future__ import annotations

import math

import pytest

from water_edge.core.export_numbers import LARGEST_READING, Formats, number, own_mark


def _column(sep: str, cells: list[str]) -> Formats:
    formats = Formats(sep, 2)
    for cell in cells:
        formats.see(["2024-03-01 00:00", cell])
    return formats.settle()


@pytest.mark.parametrize(
    ("text", "mark"),
    [("1,234.5", "."), ("1.234,5", ","), ("1,234,567", "."), ("0,512", ","), ("12.5", "."), ("1,234", None)],
)
def test_a_number_shows_its_decimal_mark_or_says_nothing(text: str, mark: str | None) -> None:
    assert own_mark(text) == mark


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("1 234,5", 1234.5),
        ("1\u202f234,5", 1234.5),
        ("1\u00a0234\u00a0567,5", 1234567.5),
        ("1\u00a0234 567,5", math.nan),  # one kind of grouping a number
        ("1'234.5", 1234.5),
        ("1\u2019234.5", 1234.5),
        ("-1 234,5", -1234.5),
        ("12 34,5", math.nan),  # grouping not in thousands: no number
        ("1 2 3", math.nan),
        ("- 5", math.nan),
        ("3,141 59", math.nan),
    ],
)
def test_digits_grouped_by_spaces_or_apostrophes_in_thousands_only(cell: str, value: float) -> None:
    got = _column(";", ["12,5", cell]).parse(1, cell)
    assert got == value or (math.isnan(got) and math.isnan(value))


def test_a_cell_that_could_be_either_reads_with_its_columns_mark_else_the_files_else_the_separators() -> None:
    assert _column("\t", ["1,185.8", "2,989"]).parse(1, "2,989") == 2989.0  # US "Unicode text"
    assert _column(";", ["12,5", "1,185"]).parse(1, "1,185") == 1.185
    formats = Formats(";", 3)
    for row in (["t", "1.185", "1.234,5"], ["t", "2.989", "7,5"]):
        formats.see(row)
    assert formats.settle().parse(1, "1.185") == 1185.0  # the other column's mark: '.' groups
    assert _column(";", ["1,185"]).parse(1, "1,185") == 1.185
    assert _column(",", ["1,185"]).parse(1, "1,185") == 1185.0  # a quoted cell of a ',' file


def test_a_column_of_both_marks_reads_each_cell_by_its_own_and_says_so() -> None:
    formats = _column(";", ["1,5", "2.5", "1,234"])
    assert [formats.parse(1, c) for c in ("1,5", "2.5", "1.234,5", "1,234.5")] == [1.5, 2.5, 1234.5, 1234.5]
    assert formats.parse(1, "1,234") == 1.234
    (both,) = formats.mixed().values()
    assert both.warning("flow") == (
        "column 'flow' has decimal commas ('1,5') and decimal points ('2.5'): each number is read by "
        "its own mark, and one that shows none, '1,234', as 1.234"
    )


@pytest.mark.parametrize("cell", ["1e308", "-1.8e308", "1e400"])
def test_a_largest_double_is_missing_and_told_from_no_number(cell: str) -> None:
    formats = _column(",", ["12.5"])
    assert math.isnan(formats.parse(1, cell))
    assert formats.too_large(1, cell)
    assert _column(";", ["12,5"]).too_large(1, cell.replace(".", ","))
    assert abs(float(cell)) >= LARGEST_READING


@pytest.mark.parametrize("cell", ["", "inf", "-inf", "NaN", "Infinity", "Err", "1.2.3"])
def test_text_and_words_for_infinity_are_no_number_not_too_large(cell: str) -> None:
    formats = _column(",", ["12.5"])
    assert math.isnan(formats.parse(1, cell))
    assert not formats.too_large(1, cell)
    assert math.isnan(number(cell, None, ","))
