"""Every wired frame of libmbus's test suite decodes (or, with a broken link layer, is refused in
one line) and writes as JSON, through the library and through `edge-agent decode mbus`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from water_edge.agent.cli import main
from water_edge.drivers.mbus.frame import MbusDecodeError, parse_hex
from water_edge.drivers.mbus.telegram import decode_frame

CORPUS = Path(__file__).parent / "data" / "mbus" / "corpus"
FRAMES = sorted(p.stem for p in CORPUS.glob("*.hex"))
BROKEN_LINK = {"invalid_length", "invalid_length2"}


def test_the_corpus_is_the_libmbus_suite() -> None:
    assert len(FRAMES) >= 80


@pytest.mark.parametrize("name", FRAMES)
def test_frame_decodes_and_serialises(name: str) -> None:
    raw = parse_hex((CORPUS / f"{name}.hex").read_text())
    if name in BROKEN_LINK:
        with pytest.raises(MbusDecodeError, match=r"length|16 bytes"):
            decode_frame(raw)
        return
    telegram = decode_frame(raw)
    assert telegram.header is not None
    orjson.dumps(telegram.to_dict())


def test_share_decoded_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    decoded = 0
    for name in FRAMES:
        code = main(["decode", "mbus", "--compact", (CORPUS / f"{name}.hex").read_text()])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        if code == 0:
            orjson.loads(out)
            decoded += 1
    assert decoded / len(FRAMES) >= 0.95
