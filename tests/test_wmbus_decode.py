"""Wireless M-Bus decoding on real meters' telegrams (tests/data/wmbus): the total volume an
independent decoder found, keys that decrypt and keys that do not, link-layer CRCs, compact frames."""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest

from water_edge.agent.cli import main
from water_edge.drivers.mbus.crypto import MbusKeyError
from water_edge.drivers.mbus.frame import MbusDecodeError, MbusFrameError, parse_hex
from water_edge.drivers.mbus.security import MbusEncryptedError
from water_edge.drivers.wmbus.compact import FormatStore
from water_edge.drivers.wmbus.frame import crc16, link_frame, with_crc_a
from water_edge.drivers.wmbus.telegram import decode_wireless

DATA = Path(__file__).parent / "data" / "wmbus" / "telegrams.txt"
# Application layers that are not OMS: their volume is in a manufacturer's own format.
PROPRIETARY = {"apator08_004444dd", "izar_18001698", "mkradio3_34333231", "mkradio4_02410120",
               "rfmtx1_74737271", "apator162_88888888_aes", "supercom587_77777777_aes",
               # CI A0-A3, B6 (Apator, Diehl IZAR/PRIOS, Techem, Apator's old format)
               "apator172_0014a807", "apator172_0014a807_b", "apator082_00149c06", "apatorna1_04913581",
               "izar_21242472", "izar_66236629", "izar_20481979", "izar_2124589c", "izar_20e4ffde",
               "izar_48500375", "mkradio3a_62560642", "apt_07_05_37373737",
               # OMS frame whose only volume is in Apator's registers after DIF 0F (manufacturer data)
               "apator162_20202020", "apator162_21202020", "apator162_22202020", "apator162_23202020",
               "apator162_24202020", "apator162_25202020", "apator162_26202020", "apator162_26202020_b",
               "apator162_26202020_c", "apator162_03410514", "apator162_27202020", "apator162_00148686",
               "apator162_00148686_b", "apator162_04040404", "apator162_04960212"}  # fmt: skip


class Vector(NamedTuple):
    name: str
    key: bytes | None
    total: float | None
    raw: bytes


def vectors() -> list[Vector]:
    out = []
    for line in DATA.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, key, total, hexs = line.split(";")
        out.append(
            Vector(
                name, bytes.fromhex(key) if key else None, float(total) if total else None, parse_hex(hexs)
            )
        )
    return out


VECTORS = vectors()
STANDARD = [v for v in VECTORS if v.name not in PROPRIETARY]


@pytest.mark.parametrize("v", STANDARD, ids=lambda v: v.name)
def test_total_volume_is_what_the_meter_reported(v: Vector) -> None:
    telegram = decode_wireless(v.raw, key=v.key, formats=FormatStore())
    doc = telegram.to_dict()
    orjson.dumps(doc)
    assert doc.get("total_volume_m3") == pytest.approx(v.total, abs=1e-9)  # None: no total to find


@pytest.mark.parametrize("v", [v for v in VECTORS if v.name in PROPRIETARY], ids=lambda v: v.name)
def test_proprietary_payloads_decode_without_crashing(v: Vector) -> None:
    try:
        doc = decode_wireless(v.raw, key=v.key, formats=FormatStore()).to_dict()
    except MbusDecodeError:
        return
    orjson.dumps(doc)


def test_share_of_meters_whose_total_volume_is_found() -> None:
    with_total = [v for v in VECTORS if v.total is not None]
    found = 0
    for v in with_total:
        try:
            doc = decode_wireless(v.raw, key=v.key, formats=FormatStore()).to_dict()
        except MbusDecodeError:
            continue
        found += doc.get("total_volume_m3") == pytest.approx(v.total, abs=1e-9)
    assert found / len(with_total) >= 0.6


def _vector(name: str) -> Vector:
    return next(v for v in VECTORS if v.name == name)


@pytest.mark.parametrize("name", ["multical21_76348799_aes", "aventieswm_61070071", "waterstarm_20096221"])
def test_encrypted_without_key_is_a_clear_error_and_a_wrong_key_is_caught(name: str) -> None:
    v = _vector(name)
    with pytest.raises(MbusEncryptedError, match="key is needed"):
        decode_wireless(v.raw, formats=FormatStore())
    assert v.key is not None
    wrong = bytes((v.key[0] ^ 1,)) + v.key[1:]
    with pytest.raises(MbusKeyError, match="wrong key"):
        decode_wireless(v.raw, key=wrong, formats=FormatStore())


def test_format_a_crcs_are_checked_and_stripped() -> None:
    v = _vector("flowiq2200_52525252")
    on_air = with_crc_a(v.raw)
    assert len(on_air) > len(v.raw)
    frame = link_frame(on_air)
    assert (frame.frame_format, frame.ident, frame.manufacturer) == ("A", "52525252", "KAW")
    spoiled = bytearray(on_air)
    spoiled[20] ^= 0xFF
    with pytest.raises(MbusFrameError):
        link_frame(bytes(spoiled[: len(v.raw) - 1]))


def test_format_b_crc_is_checked_and_stripped() -> None:
    v = _vector("iperl_33225544")
    body = bytes((len(v.raw) + 1,)) + v.raw[1:]  # L counts the CRC in format B
    frame_b = body + crc16(body).to_bytes(2, "big")
    frame = link_frame(frame_b)
    assert frame.frame_format == "B"
    assert decode_wireless(frame_b).to_dict()["total_volume_m3"] == pytest.approx(123.529)


def test_receiver_trailer_is_ignored_with_a_note() -> None:
    v = _vector("iperl_33225544")
    doc = decode_wireless(v.raw + b"\xc4").to_dict()  # e.g. an RSSI byte after the frame
    assert doc["total_volume_m3"] == pytest.approx(123.529)
    assert any("ignored" in note for note in doc["notes"])


def test_compact_frame_of_an_unknown_format_is_a_clear_error_until_a_full_frame_teaches_it() -> None:
    full = _vector("multical21_44556677_full")
    comp = _vector("multical21_44556677_compact")
    store = FormatStore()
    store._known.clear()  # only what this store learns
    with pytest.raises(MbusDecodeError, match="format is not known yet"):
        decode_wireless(comp.raw, formats=store)
    decode_wireless(full.raw, formats=store)
    assert decode_wireless(comp.raw, formats=store).to_dict()["total_volume_m3"] == pytest.approx(20.015)


def test_a_compact_frame_carrying_the_previous_full_frame_s_crc_is_decoded_with_a_note() -> None:
    """A flowIQ 2200 (real capture): a full frame with flow 0, then, one access number later, a
    compact frame with 35 l/h whose full-frame CRC is that of flow 0. The decoder refused it, and
    with it every compact frame of such a meter whose values had changed since its last full frame."""
    full = _vector("flowiq2200_23813076")
    comp = _vector("flowiq2200_23813076_compact")
    store = FormatStore()
    store._known.clear()  # the format as learnt from the meter's own full frame
    assert "notes" not in decode_wireless(full.raw, formats=store).to_dict()
    doc = decode_wireless(comp.raw, formats=store).to_dict()
    assert doc["total_volume_m3"] == pytest.approx(3.871)
    flows = [r["value"] for r in doc["records"] if r["quantity"] == "volume_flow"]
    assert flows == [0.0, pytest.approx(0.035)]  # the maximum of the last period, and now
    assert any("full-frame CRC" in note for note in doc["notes"])


def test_cli_decode_wmbus_with_key_and_its_errors(capsys: pytest.CaptureFixture[str]) -> None:
    v = _vector("aventieswm_61070071")
    assert v.key is not None
    assert main(["decode", "wmbus", v.raw.hex(), "--key", v.key.hex()]) == 0
    out, _ = capsys.readouterr()
    assert orjson.loads(out)["total_volume_m3"] == pytest.approx(466.472)
    assert v.key.hex() not in out.lower()
    assert main(["decode", "wmbus", v.raw.hex()]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert "key is needed" in err
    assert main(["decode", "wmbus", v.raw.hex(), "--key", "1234"]) == 2
    _, err = capsys.readouterr()
    assert "32 hex digits" in err
    # One digit left out copying the key off the delivery note: an odd count, not "other characters".
    assert main(["decode", "wmbus", v.raw.hex(), "--key", v.key.hex()[:-1]]) == 2
    _, err = capsys.readouterr()
    assert err == "edge-agent decode wmbus: a meter key is 32 hex digits (AES-128), got 31\n"
    assert main(["decode", "wmbus", v.raw.hex(), "--key", v.key.hex()[:-1] + "g"]) == 2
    _, err = capsys.readouterr()
    assert "it has other characters" in err


@pytest.mark.parametrize(
    "form",
    [
        "T1;1;1;2019-04-03 19:00:42.000;97;148;33225544;0x{hex}",
        "telegram=|{head}_{tail}|",
        "|{hex}|+0",
    ],
)
def test_cli_accepts_the_capture_forms_tools_print(form: str, capsys: pytest.CaptureFixture[str]) -> None:
    v = _vector("iperl_33225544")
    text = form.format(hex=v.raw.hex(), head=v.raw[:15].hex(), tail=v.raw[15:].hex())
    assert main(["decode", "wmbus", text]) == 0
    assert orjson.loads(capsys.readouterr().out)["total_volume_m3"] == pytest.approx(123.529)


def test_cli_decodes_a_receivers_log_line_by_line_in_order(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log of a receiver, a telegram a line, piped in whole: each line is decoded, and a compact
    frame after its meter's full frame finds the format that frame gave. Before, the first telegram
    was decoded and the others were 'bytes after the frame ignored'."""
    full, comp = _vector("multical21_44556677_full"), _vector("multical21_44556677_compact")
    store = FormatStore()
    store._known.clear()  # nothing shipped: only what the log teaches
    monkeypatch.setattr("water_edge.drivers.wmbus.telegram._SHARED_FORMATS", store)
    log = "\n".join(
        [
            comp.raw.hex(),
            f"T1;1;1;2019-04-03 19:00:42.000;97;148;44556677;0x{full.raw.hex()}",
            f"telegram=|{comp.raw.hex()}|",
            "",
        ]
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(log))
    assert main(["decode", "wmbus", "-", "--compact"]) == 1
    out, err = capsys.readouterr()
    first, second, third = orjson.loads(out)
    assert "format is not known yet" in first["error"]
    assert second["total_volume_m3"] == third["total_volume_m3"] == pytest.approx(20.015)
    assert err.startswith("edge-agent decode wmbus: line 1: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("v", STANDARD, ids=lambda v: v.name)
def test_the_access_number_read_in_the_clear_is_the_decoders(v: Vector) -> None:
    from water_edge.drivers.wmbus.reception import access_number

    telegram = decode_wireless(v.raw, key=v.key, formats=FormatStore())
    header = telegram.application.header if telegram.application is not None else None
    if telegram.ell is not None:
        expected = telegram.ell.access_number
    elif telegram.ci == 0x78:  # no transport header: no access number to read
        assert header is None
        expected = None
    else:
        assert header is not None
        expected = header.access_number
    assert access_number(link_frame(v.raw)) == expected


def test_a_format_a_frame_with_a_crc_error_is_refused_not_read_without_its_crcs() -> None:
    # Found by fuzzing (atheris): a frame with format A CRCs, one byte spoiled past its first
    # block, was read as a frame without CRCs: the first block's CRC byte A8 became its CI field
    # ("manufacturer-specific, kept raw"), the last 10 bytes a "receiver trailer", and the driver
    # gave the meter a good status reading from a telegram that failed its checksum.
    wire = bytes.fromhex(
        "41442d2c785634121b16a85cad9e21170000000000000000000000001efa0000000000000000009d0000c200"
        "00c2698c0000c800801779eda80000d10000007e2d770019081900007f13b449"
    )
    with pytest.raises(MbusFrameError, match="format A frame with a CRC error in block 4"):
        decode_wireless(wire, formats=FormatStore())
    v = _vector("flowiq2200_52525252")
    for spoilt_at in (3, 30, -1):  # in the first block, a later one, the last CRC
        spoiled = bytearray(with_crc_a(v.raw) + b"\xc4")  # with a receiver's RSSI byte after it
        spoiled[spoilt_at - 1 if spoilt_at < 0 else spoilt_at] ^= 0x10
        with pytest.raises(MbusFrameError, match="CRC error"):
            link_frame(bytes(spoiled))


def test_a_second_telegram_after_the_first_is_named_not_taken_for_a_receiver_trailer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = _vector("iperl_33225544"), _vector("flowiq2200_52525252")
    for after in (second.raw, with_crc_a(second.raw)):
        doc = decode_wireless(first.raw + after, formats=FormatStore()).to_dict()
        assert doc["total_volume_m3"] == pytest.approx(123.529)
        assert doc["notes"] == [
            f"{len(after)} byte(s) after the frame ignored: another telegram (L field "
            f"{second.raw[0]:02X}), not decoded; give each telegram a line of its own"
        ]
    assert main(["decode", "wmbus", (first.raw + second.raw).hex()]) == 0
    assert "another telegram" in capsys.readouterr().out
    # An RSSI byte is still a receiver's trailer.
    assert decode_wireless(first.raw + b"\xc4").to_dict()["notes"] == [
        "1 byte(s) after the frame ignored (receiver trailer)"
    ]
