"""The layers between the wireless link header and the application data: the extended link layer
(ELL, CI 8Ch-8Fh) with its AES-128-CTR encryption, and the authentication and fragmentation layer
(AFL, CI 90h) that carries mode 7's message counter and MAC.

    ELL I   8C  CC ACC
    ELL II  8D  CC ACC SN(4) | PayloadCRC(2) payload...      (encrypted from PayloadCRC on)
    ELL III 8E  CC ACC M(2) A(6)
    ELL IV  8F  CC ACC M(2) A(6) SN(4) | PayloadCRC(2) payload...
    AFL     90  AFLL FCL(2) [MCL] [KI(2)] [MCR(4)] [MAC] [ML(2)]

The ELL counter block is M A CC SN FN(0) BC(0), the CC field as the meter sent it (a repeater sets
the hop counter bit H when it relays and cannot re-encrypt: a relayed telegram is decrypted with H
clear); the decrypted payload starts with the CRC-16 of the rest, so a wrong key is caught, never
decoded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Final

from water_edge.drivers.mbus import crypto
from water_edge.drivers.mbus.crypto import MbusKeyError
from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.mbus.security import AflMac, MbusEncryptedError
from water_edge.drivers.wmbus.frame import crc16

# CI -> (has the meter's address, has a session number and payload CRC)
ELL_CI: Final = {0x8C: (False, False), 0x8D: (False, True), 0x8E: (True, False), 0x8F: (True, True)}
AFL_CI: Final = 0x90
ELL_ENCRYPTION_AES_CTR: Final = 1
HOP_COUNTER_BIT: Final = 0x10  # CC field H: 0 from the meter, 1 once a repeater relayed it
# AFL fragmentation control field: which of the AFL's fields are present
FCL_MORE_FRAGMENTS: Final = 0x4000
FCL_MCL: Final = 0x2000
FCL_ML: Final = 0x1000
FCL_MCR: Final = 0x0800
FCL_MAC: Final = 0x0400
FCL_KI: Final = 0x0200
MCL_AUTHENTICATION_TYPE: Final = 0x0F


@dataclass(frozen=True, slots=True)
class Ell:
    ci: int
    communication_control: int
    access_number: int
    address: bytes | None  # ELL III/IV: M + A of the meter the telegram is about
    session: int | None
    encrypted: bool

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ci": self.ci,
            "cc": self.communication_control,
            "access_number": self.access_number,
            "encrypted": self.encrypted,
        }
        if self.session is not None:
            out["session_number"] = self.session
        return out


@dataclass(frozen=True, slots=True)
class Afl:
    fragment_control: int
    message_control: int | None
    message_counter: int | None
    mac: bytes
    mac_covers: bytes = b""  # MCL, MCR and ML as transmitted (those present): the MAC's first bytes

    @property
    def more_fragments(self) -> bool:
        return bool(self.fragment_control & FCL_MORE_FRAGMENTS)

    @property
    def authentication_type(self) -> int | None:
        return None if self.message_control is None else self.message_control & MCL_AUTHENTICATION_TYPE

    def authentication(self, message: bytes) -> AflMac:
        """The MAC and what it covers; `message` is every byte from the CI after the AFL to the end
        of the message, as transmitted."""
        return AflMac(self.authentication_type, self.mac, self.mac_covers + message)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fcl": self.fragment_control, "more_fragments": self.more_fragments}
        if self.message_counter is not None:
            out["message_counter"] = self.message_counter
        if self.mac:
            out["mac"] = self.mac.hex().upper()
        return out


def ell(payload: bytes, link_address: bytes, key: bytes | None) -> tuple[Ell, bytes]:
    """Parse (and decrypt) an ELL; returns it and the payload that follows (from its CI)."""
    ci = payload[0]
    has_address, has_session = ELL_CI[ci]
    need = 3 + (8 if has_address else 0) + (6 if has_session else 0)
    if len(payload) < need:
        raise MbusDecodeError(f"extended link layer CI {ci:02X} needs {need} bytes, got {len(payload)}")
    cc, acc = payload[1], payload[2]
    pos = 3
    address = None
    if has_address:
        address = payload[3:11]
        pos = 11
    if not has_session:
        return Ell(ci, cc, acc, address, None, False), payload[pos:]
    sn_raw = payload[pos : pos + 4]
    session = int.from_bytes(sn_raw, "little")
    encryption = session >> 29
    rest = payload[pos + 4 :]
    info = Ell(ci, cc, acc, address, session, encryption != 0)
    if encryption == 0:
        # Without encryption the payload CRC is optional in practice: strip it only when it is one.
        crc_ok = len(rest) >= 3 and crc16(rest[2:]) == int.from_bytes(rest[:2], "little")
        return info, rest[2:] if crc_ok else rest
    if encryption != ELL_ENCRYPTION_AES_CTR:
        raise MbusEncryptedError(f"extended link layer encryption {encryption} is not defined", 0)
    plain_already = len(rest) >= 3 and crc16(rest[2:]) == int.from_bytes(rest[:2], "little")
    if key is None:
        if plain_already:  # decrypted by the receiver or a tool; the CRC proves it
            return Ell(ci, cc, acc, address, session, False), rest[2:]
        raise MbusEncryptedError("encrypted extended link layer (AES-128-CTR): the meter's key is needed", 0)
    # A repeater sets the hop counter bit when it relays, and cannot re-encrypt: a relayed telegram
    # decrypts with the CC field its meter sent, the bit clear.
    for sent_cc in dict.fromkeys((cc, cc & ~HOP_COUNTER_BIT)):
        counter = (address or link_address) + bytes((sent_cc,)) + sn_raw + b"\x00\x00\x00"
        with contextlib.suppress(MbusKeyError):
            return info, _checked(crypto.ctr(key, counter, rest), "AES-128-CTR")
    if plain_already:
        return Ell(ci, cc, acc, address, session, False), rest[2:]
    raise MbusKeyError("AES-128-CTR: payload CRC does not match after decryption: wrong key for this meter?")


def _checked(data: bytes, what: str) -> bytes:
    if len(data) < 3:
        raise MbusDecodeError(f"{what}: payload too short for its CRC")
    if crc16(data[2:]) != int.from_bytes(data[:2], "little"):
        raise MbusKeyError(f"{what}: payload CRC does not match after decryption: wrong key for this meter?")
    return data[2:]


def afl(payload: bytes) -> tuple[Afl, bytes]:
    """Parse an AFL (CI 90h); returns it and the payload that follows its length."""
    if len(payload) < 4:
        raise MbusDecodeError("authentication and fragmentation layer too short")
    length = payload[1]
    body = payload[2 : 2 + length]
    if len(body) != length or length < 2:
        raise MbusDecodeError(f"AFL announces {length} bytes, {len(payload) - 2} follow")
    fcl = int.from_bytes(body[0:2], "little")
    pos = 2
    mcl = None
    covers = b""
    counter = None
    if fcl & FCL_MCL:
        mcl = body[pos] if pos < length else None
        covers += body[pos : pos + 1]
        pos += 1
    if fcl & FCL_KI:
        pos += 2
    if fcl & FCL_MCR:
        if pos + 4 > length:
            raise MbusDecodeError("AFL ends before its message counter")
        covers += body[pos : pos + 4]
        counter = int.from_bytes(body[pos : pos + 4], "little")
        pos += 4
    mac_end = length - (2 if fcl & FCL_ML else 0)
    mac = body[pos:mac_end] if fcl & FCL_MAC else b""
    covers += body[mac_end:length] if fcl & FCL_ML else b""
    return Afl(fcl, mcl, counter, mac, covers), payload[2 + length :]
