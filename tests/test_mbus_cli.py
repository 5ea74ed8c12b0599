"""`edge-agent decode mbus`: JSON out for a good telegram, one line and exit 2 for a bad one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from water_edge.agent.cli import main

VECTOR = Path(__file__).parent / "data" / "mbus" / "mbus_doc_example_pad_water.hex"


def test_decode_hex_arguments_as_tools_print_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "mbus", *VECTOR.read_text().split()]) == 0
    doc = json.loads(capsys.readouterr().out)
    header = doc["header"]
    assert (header["manufacturer"], header["id"], header["medium"]) == ("PAD", "12345678", "water")
    assert (header["access_number"], header["status"], header["version"]) == (0x55, 0, 1)
    first = doc["records"][0]
    assert (first["quantity"], first["unit"], first["value"]) == ("volume", "m3", 12.565)
    assert (first["dif"], first["vif"], first["storage"], first["tariff"]) == ("03", "13", 0, 0)
    assert doc["records"][1]["function"] == "maximum"


def test_decode_from_stdin_with_newlines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(VECTOR.read_text()))
    assert main(["decode", "mbus", "-", "--compact"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out)["records"][2]["value"] == 218370


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("68 1F 1F 68 08 02 72 78", "truncated"),
        ("68 05 05 68 08 01 72 00 00 7D 16", "checksum"),
        ("68 zz", "not a hex digit"),
        ("", "no hex digits"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    text: str, fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["decode", "mbus", "-"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert fragment in captured.err
    assert "Traceback" not in captured.err


def _decode(capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str, str]:
    code = main(["decode", "mbus", "--compact", text])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_capture_decodes_each_frame_in_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A sniffer's log of an exchange: the REQ_UD2 the master sent, the answer, the next E5."""
    code, out, err = _decode(capsys, f"10 7B FE 79 16 {VECTOR.read_text()} E5")
    assert (code, err) == (0, "")
    request, answer, ack = json.loads(out)
    assert (request["frame"], request["control"], request["address"]) == ("short", 0x7B, 0xFE)
    assert answer["header"]["manufacturer"] == "PAD"
    assert ack["frame"] == "ack"


def test_bytes_after_a_frame_that_start_none_are_skipped_and_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _decode(capsys, f"{VECTOR.read_text()} 00 FF")
    assert code == 0
    assert json.loads(out)["header"]["id"] == "12345678"
    assert err == "edge-agent decode mbus: warning: 2 byte(s) that start no frame skipped\n"


def test_a_capture_with_a_frame_that_does_not_decode_exits_1_and_names_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _decode(capsys, f"E5 {VECTOR.read_text()} 68 1F 1F 68 08 02")
    assert code == 1
    ack, answer, cut = json.loads(out)
    assert (ack["frame"], answer["header"]["manufacturer"]) == ("ack", "PAD")
    assert "truncated" in cut["error"]
    assert err.startswith("edge-agent decode mbus: frame 3 of 3: truncated")
    assert err.count("\n") == 1


def test_a_capture_that_begins_with_a_wake_up_preamble_decodes_after_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A battery meter is woken with 55h bytes before the master's SND_NKE: a sniffer logs them."""
    code, out, err = _decode(capsys, f"55 55 55 55 10 40 FE 3E 16 E5 {VECTOR.read_text()}")
    assert code == 0
    snd_nke, ack, answer = json.loads(out)
    assert (snd_nke["control"], ack["frame"], answer["header"]["id"]) == (0x40, "ack", "12345678")
    assert err == "edge-agent decode mbus: warning: 4 byte(s) that start no frame skipped\n"


def test_user_data_that_does_not_decode_is_still_one_error_even_with_an_e5_in_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _decode(capsys, "72 00 E5 00")  # no long frame in it: user data, refused as such
    assert (code, out) == (2, "")
    assert err == "edge-agent decode mbus: truncated header: 3 of 12 bytes after CI 0x72\n"


def test_a_binary_capture_on_stdin_decodes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cat /dev/ttyUSB0 > capture.bin` keeps the bytes themselves, not their hex."""
    frame = bytes.fromhex(VECTOR.read_text())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xe5" + frame)))
    assert main(["decode", "mbus", "-", "--compact"]) == 0
    ack, answer = json.loads(capsys.readouterr().out)
    assert (ack["frame"], answer["header"]["id"]) == ("ack", "12345678")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x00\x01\xff")))
    assert main(["decode", "mbus", "-"]) == 2
    assert "nor is it a binary capture" in capsys.readouterr().err
