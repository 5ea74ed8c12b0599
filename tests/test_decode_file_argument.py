"""`edge-agent decode mbus|wmbus FILE`: a file named where hex is expected is read — hex text, a
receiver's log or (mbus) the raw bytes a serial sniffer kept — as `-` reads stdin; a path that
names no file says so, not `not a hex digit: '/'` (found by a user walkthrough)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from water_edge.agent.cli import main

VECTOR = Path(__file__).parent / "data" / "mbus" / "mbus_doc_example_pad_water.hex"
# docs/drivers/wmbus.md's example: a mode 5 telegram and its key
WMBUS = "2A442D2C998734761B168D2091D37CAC21E1D68CDAFFCD3DC452BD802913FF7B1706CA9E355D6C2701CC24"
WMBUS_KEY = "28F64A24988064A079AA2C807D6102AE"


def decode(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["decode", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_binary_capture_file_decodes_as_its_hex_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = bytes.fromhex(VECTOR.read_text())
    capture = tmp_path / "capture.bin"
    capture.write_bytes(b"\xe5" + frame)  # what `cat /dev/ttyUSB0 > capture.bin` keeps
    code, out, err = decode(capsys, "mbus", "--compact", str(capture))
    assert (code, err) == (0, "")
    expected = decode(capsys, "mbus", "--compact", "E5", *VECTOR.read_text().split())[1]
    assert out == expected
    ack, answer = json.loads(out)
    assert (ack["frame"], answer["header"]["id"]) == ("ack", "12345678")


def test_a_hex_text_file_decodes_as_the_hex_given_as_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "telegram.hex"
    text.write_text(VECTOR.read_text())
    code, out, err = decode(capsys, "mbus", str(text))
    assert (code, err) == (0, "")
    assert out == decode(capsys, "mbus", *VECTOR.read_text().split())[1]


def test_a_wmbus_telegram_in_a_file_decodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "air.log"
    log.write_text(WMBUS + "\n")
    code, out, err = decode(capsys, "wmbus", str(log), "--key", WMBUS_KEY)
    assert (code, err) == (0, "")
    assert out == decode(capsys, "wmbus", WMBUS, "--key", WMBUS_KEY)[1]


def test_a_path_that_names_no_file_says_so_and_how_to_give_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "capture.bin"
    code, out, err = decode(capsys, "mbus", str(missing))
    assert (code, out) == (2, "")
    assert err == (
        f"edge-agent decode mbus: no file {str(missing)!r}, nor hex (not a hex digit: '/'): give hex "
        "bytes, a file of hex or a raw binary capture, or - to read stdin\n"
    )
    code, _, err = decode(capsys, "wmbus", "air.log")
    assert code == 2
    assert "no file 'air.log'" in err
    assert "a file of hex, or - to read stdin" in err


def test_a_file_of_neither_hex_nor_a_frame_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"\x00\x01\xff")
    code, out, err = decode(capsys, "mbus", str(noise))
    assert (code, out) == (2, "")
    assert err.startswith(f"edge-agent decode mbus: {noise}: not a hex digit")
    assert "nor is it a binary capture with a whole M-Bus frame in it" in err
    code, _, err = decode(capsys, "mbus", str(tmp_path))
    assert code == 2
    assert err == f"edge-agent decode mbus: {tmp_path}: cannot read: Is a directory\n"


def test_hex_stays_hex_and_a_typo_in_hex_is_still_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "E5").write_bytes(b"not this")  # a file of that name: the argument is still hex
    code, out, _ = decode(capsys, "mbus", "--compact", "E5")
    assert code == 0
    assert json.loads(out)["frame"] == "ack"
    code, _, err = decode(capsys, "mbus", "68" * 300 + "zz")  # too long for a file name: no traceback
    assert (code, err) == (2, "edge-agent decode mbus: not a hex digit: 'z'\n")
