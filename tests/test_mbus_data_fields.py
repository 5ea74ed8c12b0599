"""M-Bus data fields (EN 13757-3): every DIF data code takes exactly its bytes and reads as the
number it holds, so the record after it starts where it should; LVAR lengths at each range's ends."""

from __future__ import annotations

import math
import struct

import pytest

from water_edge.drivers.mbus.records import parse_records
from water_edge.drivers.mbus.values import lvar_size

VOLUME_L = 0x13  # VIF: volume, 10^-3 m3
NEXT = bytes([0x01, VOLUME_L, 0x05])  # an 8-bit record after the one under test: 0.005 m3


@pytest.mark.parametrize(
    ("code", "data", "counts"),
    [
        (0x1, bytes([0xFE]), -2),
        (0x2, bytes([0x34, 0x12]), 0x1234),
        (0x3, bytes([0x56, 0x34, 0x12]), 0x123456),
        (0x4, bytes([0x78, 0x56, 0x34, 0x12]), 0x12345678),
        (0x5, struct.pack("<f", 12.5), 12.5),
        (0x6, (0x123456789ABC).to_bytes(6, "little"), 0x123456789ABC),
        (0x7, (-5).to_bytes(8, "little", signed=True), -5),
        (0x9, bytes([0x12]), 12),
        (0xA, bytes([0x34, 0x12]), 1234),
        (0xB, bytes([0x56, 0x34, 0x12]), 123456),
        (0xC, bytes([0x78, 0x56, 0x34, 0x12]), 12345678),
        (0xE, bytes([0x90, 0x78, 0x56, 0x34, 0x12, 0x00]), 1234567890),
    ],
)
def test_each_data_code_takes_its_bytes_and_reads_its_number(code: int, data: bytes, counts: float) -> None:
    records, rest, more = parse_records(bytes([code, VOLUME_L]) + data + NEXT)
    assert (rest, more) == (b"", False)
    assert [r.error for r in records] == [None, None]
    assert records[0].data == data
    assert records[0].value == pytest.approx(counts / 1000)
    assert records[0].unit == records[1].unit == "m3"
    assert records[1].value == pytest.approx(0.005)


@pytest.mark.parametrize("code", [0x0, 0x8])
def test_no_data_and_selection_for_readout_take_no_bytes(code: int) -> None:
    records, rest, _ = parse_records(bytes([code, VOLUME_L]) + NEXT)
    assert rest == b""
    assert records[-1].value == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("lvar", "size"),
    [
        (0x00, 0), (0xBF, 191),  # text
        (0xC0, 0), (0xC9, 9), (0xCA, None),  # positive BCD
        (0xD0, 0), (0xD9, 9), (0xDA, None),  # negative BCD
        (0xE0, 0), (0xEF, 15),  # binary number
        (0xF0, 16), (0xF4, 32), (0xF5, 48), (0xF6, 64), (0xF7, None), (0xFF, None),
    ],
)  # fmt: skip
def test_lvar_sizes_at_each_range_end(lvar: int, size: int | None) -> None:
    assert lvar_size(lvar) == size


@pytest.mark.parametrize(
    ("lvar", "data", "counts"),
    [
        (0xC2, bytes([0x34, 0x12]), 1234),  # positive BCD
        (0xC9, bytes([0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00, 0x00]), 123456789),
        (0xD2, bytes([0x34, 0x12]), -1234),  # negative BCD
        (0xD9, bytes([0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00, 0x00]), -123456789),
        (0xE2, bytes([0x34, 0x12]), 0x1234),  # binary number
    ],
)
def test_a_variable_length_number_reads_as_its_lvar_says(lvar: int, data: bytes, counts: int) -> None:
    records, rest, _ = parse_records(bytes([0x0D, VOLUME_L, lvar]) + data + NEXT)
    assert rest == b""
    assert [r.error for r in records] == [None, None]
    assert records[0].value == pytest.approx(counts / 1000)
    assert records[1].value == pytest.approx(0.005)


@pytest.mark.parametrize("real", [math.nan, math.inf, -math.inf])
def test_a_real_that_is_not_a_number_reads_as_no_value(real: float) -> None:
    # A NaN or an infinity would break every JSON writer downstream: no value, not a wrong one.
    records, _, _ = parse_records(bytes([0x05, VOLUME_L]) + struct.pack("<f", real) + NEXT)
    assert records[0].value is None
    assert records[1].value == pytest.approx(0.005)


def test_scaled_integers_stay_exact() -> None:
    # 10^3 Wh steps (VIF 0x06) stay an integer; 10^-3 m3 steps (VIF 0x13) are the nearest float
    # to the decimal, not 9 x 0.001 = 0.009000000000000001.
    (energy, _), _, _ = parse_records(bytes([0x04, 0x06]) + (12345).to_bytes(4, "little") + NEXT)
    assert energy.value == 12_345_000
    assert isinstance(energy.value, int)
    (volume, _), _, _ = parse_records(bytes([0x04, VOLUME_L]) + (9).to_bytes(4, "little") + NEXT)
    assert volume.value == 0.009
