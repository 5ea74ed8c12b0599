"""The receivers' framing: what an iM871A, an AMB8465 and rtl_wmbus send, byte by byte, split
anywhere, with line noise and broken checksums counted and skipped."""

from __future__ import annotations

from functools import reduce

import pytest

from water_edge.drivers.wmbus.receivers import Received, Receiver, build
from water_edge.drivers.wmbus.receivers.im871a import crc_ccitt

TELEGRAM = bytes.fromhex("1844AE4C4455223368077A55000000041389E20100023B0000")  # iPerl, L first


def hci_ind(telegram: bytes, rssi_raw: int) -> bytes:
    """iM871A WMBUSMSG_IND with RSSI and CRC, built from the HCI specification's layout."""
    head = bytes((0x80 | 0x40 | 0x02, 0x03, len(telegram) - 1)) + telegram[1:] + bytes((rssi_raw,))
    crc = crc_ccitt(head)
    return b"\xa5" + head + crc.to_bytes(2, "little")


def amber_ind(telegram: bytes, rssi_raw: int) -> bytes:
    head = b"\xff\x03" + bytes((len(telegram),)) + telegram[1:] + bytes((rssi_raw,))
    return head + bytes((reduce(lambda a, b: a ^ b, head, 0),))


def feed_in_pieces(receiver: Receiver, data: bytes, size: int) -> list[Received]:
    out: list[Received] = []
    for i in range(0, len(data), size):
        out += receiver.feed(data[i : i + size])
    return out


def test_crc_ccitt_check_value() -> None:
    # CRC-16/X-25 (reflected CCITT, init FFFF, complemented) of "123456789" is 0x906E.
    assert crc_ccitt(b"123456789") == 0x906E


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_im871a_indications_split_anywhere(size: int) -> None:
    stick = build("im871a")
    data = b"\x00\x13" + hci_ind(TELEGRAM, 150) + b"junk" + hci_ind(TELEGRAM, 100)
    got = feed_in_pieces(stick, data, size)
    assert [r.raw for r in got] == [TELEGRAM, TELEGRAM]
    assert got[0].rssi == pytest.approx(150 * 80 / 150 - 100 - 4000 / 150, abs=0.1)
    assert stick.counters.frames == 2
    assert stick.counters.garbage_bytes == 6


def test_im871a_broken_crc_is_counted_and_the_next_frame_still_arrives() -> None:
    stick = build("im871a")
    bad = bytearray(hci_ind(TELEGRAM, 150))
    bad[8] ^= 0xFF
    got = stick.feed(bytes(bad) + hci_ind(TELEGRAM, 150))
    assert [r.raw for r in got] == [TELEGRAM]
    assert stick.counters.crc_errors == 1


def test_im871a_setup_sets_the_link_mode_in_ram() -> None:
    (command,) = build("im871a").setup(("C1",))
    assert command[:4] == bytes((0xA5, 0x81, 0x03, 4))
    assert command[4:8] == bytes((0x00, 0x03, 0x00, 0x06))
    assert crc_ccitt(command[1:-2]) == int.from_bytes(command[-2:], "little")


@pytest.mark.parametrize("status", [0, 1])
def test_the_sticks_answers_to_their_set_up_are_read(status: int) -> None:
    im871a = build("im871a")
    head = bytes((0x80 | 0x01, 0x04, 1, status))  # DEVMGMT SET_CONFIG_RSP, CRC attached
    assert im871a.feed(b"\xa5" + head + crc_ccitt(head).to_bytes(2, "little") + hci_ind(TELEGRAM, 99))
    assert im871a.setup_status == status
    amber = build("amb8465")
    confirmation = bytes((0xFF, 0x84, 1, status))  # SET_MODE_CNF
    amber.feed(confirmation + bytes((reduce(lambda a, b: a ^ b, confirmation, 0),)))
    assert amber.setup_status == status
    assert amber.counters.frames == 0
    assert build("rtlwmbus").setup_status is None


def test_amber_data_indications_with_rssi_and_bad_checksum() -> None:
    stick = build("amb8465")
    bad = bytearray(amber_ind(TELEGRAM, 0x20))
    bad[-1] ^= 1
    got = feed_in_pieces(stick, bytes(bad) + b"\x00" + amber_ind(TELEGRAM, 0xF0), 5)
    assert [r.raw for r in got] == [TELEGRAM]
    assert got[0].rssi == pytest.approx((0xF0 - 256) / 2 - 74)
    assert stick.counters.crc_errors == 1


def test_rtl_wmbus_lines() -> None:
    sdr = build("rtlwmbus")
    text = (
        f"T1;1;1;2021-12-29 13:50:57.000;97;148;33225544;0x{TELEGRAM.hex()}\n"
        "T1;0;0;2021-12-29 13:50:57.000;8;101;91625359;0x2944685059\n"
        "not a telegram line\n"
        f"C1;1;1;2021-12-29 13:50:58.000;96;87;33225544;0x{TELEGRAM.hex()}"
    )
    got = feed_in_pieces(sdr, text.encode(), 11)
    assert [(r.raw, r.link_mode, r.rssi) for r in got] == [(TELEGRAM, "T1", 97.0)]
    got = sdr.feed(b"\n")
    assert [r.link_mode for r in got] == ["C1"]
    assert (sdr.counters.frames, sdr.counters.crc_errors) == (2, 1)
    assert sdr.counters.garbage_bytes == len("not a telegram line\n")
