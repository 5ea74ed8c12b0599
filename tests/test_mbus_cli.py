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
