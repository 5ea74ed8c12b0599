"""EN 13757-4 data link layer: frame formats A and B with their CRCs, and the link header.

    format A  block 1: L C M(2) A(6) CRC | blocks of 16 data bytes + CRC | last block + CRC
              L counts every byte after itself except the CRCs
    format B  block 1: L C M(2) A(6) | block 2: up to 116 bytes + CRC (covering blocks 1 and 2)
              | block 3: the rest + CRC; L counts the CRCs too

The CRC is EN 13757's CRC-16 (polynomial 0x3D65, initial 0, complemented), sent most significant
byte first. Receivers differ in what they hand over: USB sticks and rtl_wmbus strip the CRCs (L + 1
bytes), a raw capture keeps them; `link_frame` accepts all three and says which it found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from water_edge.drivers.mbus.frame import MbusFrameError
from water_edge.drivers.mbus.telegram import manufacturer_code
from water_edge.drivers.mbus.values import bcd_digits

POLY: Final = 0x3D65
BLOCK1: Final = 10  # L C M A
BLOCK: Final = 16
FORMAT_B_BLOCK2_END: Final = 128  # block 1 + block 2 with its CRC
HEADER: Final = 10  # L C M(2) A(6)
MAX_RECEIVER_TRAILER: Final = 2  # what receivers append after a frame: an RSSI byte, an LQI byte

Format = Literal["A", "B", "none"]


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE: Final = _table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc ^ 0xFFFF


def _crc_ok(block: bytes, crc: bytes) -> bool:
    return len(crc) == 2 and crc16(block) == int.from_bytes(crc, "big")


def format_a_size(length: int) -> int:
    """Bytes on air of a format A frame whose L field is `length` (CRCs included)."""
    rest = max(0, length - (BLOCK1 - 1))
    return 1 + length + 2 * (1 + (rest + BLOCK - 1) // BLOCK)


def strip_format_a(raw: bytes) -> bytes | None:
    """The frame without its CRCs if `raw` is a format A frame whose CRCs all verify."""
    if not raw or len(raw) != format_a_size(raw[0]):
        return None
    out = bytearray()
    pos = 0
    size = BLOCK1 + 2
    while pos < len(raw):
        block = raw[pos : pos + size]
        if len(block) < 3 or not _crc_ok(block[:-2], block[-2:]):
            return None
        out += block[:-2]
        pos += size
        size = BLOCK + 2
    return bytes(out)


def strip_format_b(raw: bytes) -> bytes | None:
    """The frame without its CRCs if `raw` is a format B frame whose CRCs all verify."""
    if not raw or len(raw) != raw[0] + 1 or len(raw) < BLOCK1 + 2:
        return None
    if len(raw) <= FORMAT_B_BLOCK2_END:
        return raw[:-2] if _crc_ok(raw[:-2], raw[-2:]) else None
    first, crc1 = raw[: FORMAT_B_BLOCK2_END - 2], raw[FORMAT_B_BLOCK2_END - 2 : FORMAT_B_BLOCK2_END]
    rest = raw[FORMAT_B_BLOCK2_END:]
    if len(rest) < 3 or not _crc_ok(first, crc1) or not _crc_ok(rest[:-2], rest[-2:]):
        return None
    return first + rest[:-2]


@dataclass(frozen=True, slots=True)
class LinkFrame:
    """The link header and the payload from the CI field on (CRCs removed)."""

    length: int
    control: int
    manufacturer_field: int
    ident_raw: bytes  # 4 bytes, BCD, least significant first
    version: int
    device_type: int
    payload: bytes
    frame_format: Format
    trailer: bytes = b""  # bytes after the frame (a receiver's RSSI, a second telegram), ignored

    @property
    def trailing(self) -> int:
        return len(self.trailer)

    @property
    def trailer_is_a_telegram(self) -> bool:
        """The bytes after the frame hold a whole telegram by their own L field (with or without
        format A CRCs): two telegrams run together, not a receiver's trailer."""
        t = self.trailer
        return len(t) > HEADER and len(t) in (t[0] + 1, format_a_size(t[0]))

    @property
    def ident(self) -> str:
        return bcd_digits(self.ident_raw)

    @property
    def manufacturer(self) -> str:
        return manufacturer_code(self.manufacturer_field)

    @property
    def address(self) -> bytes:
        """M (2) + A (6) as transmitted: what IVs are built from."""
        return (
            self.manufacturer_field.to_bytes(2, "little")
            + self.ident_raw
            + bytes((self.version, self.device_type))
        )


def link_frame(raw: bytes) -> LinkFrame:
    """Split a received frame, with or without its CRCs; MbusFrameError when it cannot be one."""
    if len(raw) < HEADER + 1:
        raise MbusFrameError(f"a wireless M-Bus frame is at least {HEADER + 1} bytes, got {len(raw)}")
    length = raw[0]
    trailer = b""
    frame_format: Format
    if len(raw) == length + 1:
        plain = strip_format_b(raw)  # format B with CRCs has L = len - 1 too
        frame_format = "none" if plain is None else "B"
        if plain is None:
            plain = raw
    elif (plain_a := strip_format_a(raw)) is not None:
        plain, frame_format = plain_a, "A"
    elif len(raw) > length + 1:
        plain_a = strip_format_a(raw[: format_a_size(length)])
        if plain_a is not None:
            plain, frame_format = plain_a, "A"
            trailer = raw[format_a_size(length) :]
        elif _format_a_by_its_look(raw):
            # Not a frame without CRCs and a trailer of 4 bytes or more: read as that, a CRC byte
            # became the CI field and the rest records, a good reading from a telegram that failed
            # its checksum.
            raise MbusFrameError(
                f"format A frame with a CRC error in block {_bad_block(raw[: format_a_size(length)])}"
            )
        else:
            plain, frame_format = raw[: length + 1], "none"
            trailer = raw[length + 1 :]
    else:
        raise MbusFrameError(
            f"truncated frame: L field says {length} bytes follow, {len(raw) - 1} did"
            " (and it is not a format A frame with CRCs)"
        )
    if frame_format == "B":
        length = len(plain) - 1
    if len(plain) < HEADER + 1:
        raise MbusFrameError("the frame ends before its CI field")
    return LinkFrame(
        length=length,
        control=plain[1],
        manufacturer_field=plain[2] | plain[3] << 8,
        ident_raw=plain[4:8],
        version=plain[8],
        device_type=plain[9],
        payload=plain[HEADER:],
        frame_format=frame_format,
        trailer=bytes(trailer),
    )


def _format_a_by_its_look(raw: bytes) -> bool:
    """Whether `raw`, whose CRCs do not all verify, is still a format A frame: its first block's CRC
    holds, or it is as long as a format A frame of its L field (and a receiver's trailer)."""
    extra = len(raw) - format_a_size(raw[0])
    return 0 <= extra <= MAX_RECEIVER_TRAILER or _crc_ok(raw[:BLOCK1], raw[BLOCK1 : BLOCK1 + 2])


def _bad_block(raw: bytes) -> int:
    """The number (from 1) of the first block of a format A frame whose CRC does not verify."""
    pos, size, number = 0, BLOCK1 + 2, 1
    while pos < len(raw):
        block = raw[pos : pos + size]
        if len(block) < 3 or not _crc_ok(block[:-2], block[-2:]):
            return number
        pos, size, number = pos + size, BLOCK + 2, number + 1
    return number


def with_crc_a(frame: bytes) -> bytes:
    """A frame (L field first, no CRCs) with format A CRCs inserted: what a radio sends."""
    if not frame or frame[0] != len(frame) - 1:
        raise ValueError("the L field must count the bytes after it")
    out = bytearray()
    blocks = [frame[:BLOCK1]] + [frame[i : i + BLOCK] for i in range(BLOCK1, len(frame), BLOCK)]
    for block in blocks:
        out += block + crc16(block).to_bytes(2, "big")
    return bytes(out)
