"""Arbitrary bytes never crash the M-Bus decoder, its JSON writer or `edge-agent decode mbus`: a
telegram that serialises, or one clear error, in bounded time."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from water_edge.agent.cli import main
from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.mbus.telegram import decode_frame, decode_user_data

STRUCTURE = [0x04, 0x84, 0x0D, 0x2F, 0xFD, 0xFB, 0xFC, 0x7C, 0x7F, 0x13, 0x6D, 0xC4, 0x80, 0xF0, 0xF6, 0xE8]


def _frame(body: bytes) -> bytes:
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) % 256, 0x16))


@settings(max_examples=400, deadline=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_frame(raw: bytes) -> None:
    with contextlib.suppress(MbusDecodeError):
        orjson.dumps(decode_frame(raw).to_dict())


@settings(max_examples=600, deadline=1000)
@given(st.sampled_from([0x72, 0x76, 0x7A, 0x78, 0x73, 0x77]), st.binary(max_size=249))
def test_arbitrary_user_data_in_a_valid_frame_serialises(ci: int, data: bytes) -> None:
    # A valid link layer around random user data reaches the record parser every time.
    try:
        telegram = decode_frame(_frame(bytes((0x08, 0x01, ci)) + data))
    except MbusDecodeError:
        return
    for record in telegram.records:
        assert len(record.data) <= len(data)
    orjson.dumps(telegram.to_dict())


@settings(max_examples=300, deadline=1000)
@given(st.lists(st.sampled_from(STRUCTURE), max_size=120))
def test_structure_bytes_dense_user_data(parts: list[int]) -> None:
    # Bytes that open DIFE/VIFE chains, LVARs and plain text are the likeliest to trip a parser.
    orjson.dumps(decode_user_data(0x78, bytes(parts)).to_dict())


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=120), st.lists(st.sampled_from(STRUCTURE), max_size=60).map(bytes)))
def test_cli_prints_json_or_one_error_line(capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    raw = _frame(bytes((0x08, 0x01, 0x72)) + bytes(12) + data) if len(data) % 3 else data
    code = main(["decode", "mbus", raw.hex() or "00"])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2)
    assert "Traceback" not in err
    if code == 0:
        orjson.loads(out)
    elif code == 1:  # a capture of several frames, some of which do not decode: each named
        assert any("error" in frame for frame in orjson.loads(out))
        assert all(line.startswith("edge-agent decode mbus: ") for line in err.splitlines())
    else:
        assert out == ""
        assert err.count("\n") == 1
