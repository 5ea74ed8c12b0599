"""Arbitrary bytes never crash the M-Bus decoder: a Telegram or one MbusDecodeError, in bounded time."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.mbus.telegram import decode_frame, decode_user_data


def _frame(body: bytes) -> bytes:
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) % 256, 0x16))


@settings(max_examples=400, deadline=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_frame(raw: bytes) -> None:
    with contextlib.suppress(MbusDecodeError):
        decode_frame(raw)


@settings(max_examples=600, deadline=1000)
@given(st.sampled_from([0x72, 0x7A, 0x78]), st.binary(max_size=249))
def test_arbitrary_user_data_in_a_valid_frame(ci: int, data: bytes) -> None:
    # A valid link layer around random user data reaches the record parser every time.
    try:
        telegram = decode_frame(_frame(bytes((0x08, 0x01, ci)) + data))
    except MbusDecodeError:
        return
    for record in telegram.records:
        assert len(record.data) <= len(data)
        record.to_dict()


@settings(max_examples=300, deadline=1000)
@given(
    st.lists(
        st.sampled_from([0x04, 0x84, 0x0D, 0x2F, 0xFD, 0xFB, 0xFC, 0x7F, 0x13, 0x6D, 0xC4, 0x80]),
        max_size=120,
    )
)
def test_structure_bytes_dense_user_data(parts: list[int]) -> None:
    # Bytes that open DIFE/VIFE chains, LVARs and plain text are the likeliest to trip a parser.
    with contextlib.suppress(MbusDecodeError):
        decode_user_data(0x78, bytes(parts))
