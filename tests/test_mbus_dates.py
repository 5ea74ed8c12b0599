"""M-Bus date and time data (EN 13757-3 annex A): types G (date), J (time), F (date and time to the
minute) and I (to the second), bit by bit as the standard lays them out, so that a meter's billing
date or clock reads as the meter means it; an impossible one is an error, never a wrong date."""

from __future__ import annotations

import pytest

from water_edge.drivers.mbus.values import date


def _g(year: int, month: int, day: int) -> bytes:
    """Type G: day in bits 0-4 and the year's low 3 bits in 5-7; month in 0-3, the year's high 4 in 4-7."""
    y = year % 100
    return bytes([(y & 0x07) << 5 | day, (y >> 3) << 4 | month])


def _f(
    year: int, month: int, day: int, hour: int, minute: int, *, invalid: bool = False, summer: bool = False
) -> bytes:
    """Type F: minute (bit 7: invalid), hour (bit 7: summer time), then a type G date."""
    return bytes([minute | (0x80 if invalid else 0), hour | (0x80 if summer else 0)]) + _g(year, month, day)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (_g(2027, 3, 15), "2027-03-15"),  # the year's low and high bits both set
        (_g(2080, 12, 31), "2080-12-31"),
        (_g(1996, 1, 1), "1996-01-01"),  # 81 and above count from 1900
        (bytes([58, 59, 23]), "23:59:58"),  # type J: second, minute, hour
        (_f(2027, 3, 15, 13, 45), "2027-03-15T13:45"),
        (bytes([30]) + _f(2027, 3, 15, 13, 45) + bytes([0]), "2027-03-15T13:45:30"),  # type I
        (bytes([59]) + _f(2080, 12, 31, 23, 59) + bytes([0]), "2080-12-31T23:59:59"),  # every field's last
        (bytes([0]) + _f(2000, 1, 1, 0, 0) + bytes([0]), "2000-01-01T00:00:00"),  # ... and first
    ],
)
def test_each_date_type_reads_as_the_meter_means_it(raw: bytes, text: str) -> None:
    assert date(raw) == (text, None, False)


def test_summer_time_and_the_meters_invalid_flag_are_read() -> None:
    assert date(_f(2027, 7, 1, 14, 5, summer=True)) == ("2027-07-01T14:05", None, True)
    assert date(_f(2027, 7, 1, 14, 5, invalid=True, summer=True)) == (
        None,
        "date/time flagged invalid by the meter",
        True,
    )
    with_seconds = bytes([7]) + _f(2027, 7, 1, 14, 5, summer=True) + bytes([0])
    assert date(with_seconds) == ("2027-07-01T14:05:07", None, True)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (_g(2027, 3, 0), "invalid date"),
        (_g(2027, 13, 1), "invalid date"),
        (_g(2027, 0, 1), "invalid date"),
        (bytes([60, 0, 0]), "invalid time"),
        (bytes([0, 60, 0]), "invalid time"),
        (bytes([0, 0, 24]), "invalid time"),
        (_f(2027, 3, 15, 24, 0), "invalid date/time"),
        (_f(2027, 3, 15, 0, 60), "invalid date/time"),
        (_f(2027, 13, 15, 0, 0), "invalid date/time"),
        (bytes([60]) + _f(2027, 3, 15, 0, 0) + bytes([0]), "invalid date/time"),
    ],
)
def test_an_impossible_date_or_time_is_an_error_not_a_date(raw: bytes, error: str) -> None:
    value, said, _ = date(raw)
    assert (value, said) == (None, error)
