"""Arbitrary bytes never crash the wireless decoder, its JSON or `edge-agent decode wmbus`."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from water_edge.agent.cli import main
from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.wmbus.compact import FormatStore
from water_edge.drivers.wmbus.telegram import decode_wireless

CIS = [0x72, 0x7A, 0x78, 0x79, 0x8C, 0x8D, 0x8E, 0x8F, 0x90, 0xA2, 0x73, 0x76]
HEADER = bytes.fromhex("442D2C998734761B16")


def _telegram(ci: int, data: bytes) -> bytes:
    body = HEADER + bytes((ci,)) + data
    return bytes((len(body),)) + body


@settings(max_examples=400, deadline=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(MbusDecodeError):
        orjson.dumps(decode_wireless(raw, formats=FormatStore()).to_dict())


@settings(max_examples=600, deadline=1000)
@given(
    st.sampled_from(CIS), st.binary(max_size=200), st.one_of(st.none(), st.binary(min_size=16, max_size=16))
)
def test_arbitrary_payload_behind_a_valid_link_header(ci: int, data: bytes, key: bytes | None) -> None:
    with contextlib.suppress(MbusDecodeError):
        orjson.dumps(decode_wireless(_telegram(ci, data), key=key, formats=FormatStore()).to_dict())


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(CIS), st.binary(max_size=120))
def test_cli_prints_json_or_one_error_line(capsys: pytest.CaptureFixture[str], ci: int, data: bytes) -> None:
    code = main(["decode", "wmbus", _telegram(ci, data).hex(), "--key", "00" * 16])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in err
    if code == 0:
        orjson.loads(out)
    else:
        assert out == ""
        assert err.count("\n") == 1
