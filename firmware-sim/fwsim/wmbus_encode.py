"""How the simulated wireless meters put their values on air: EN 13757-4 link header, OMS
transport layer, records, and the encryption real water meters use — AES-128-CTR in the extended
link layer (Kamstrup-style compact meters), OMS security mode 5 (AES-CBC, IV from the header) and
mode 7 (AES-CBC, IV 0, per-message key from KDF-A, with its AFL and CMAC).

Written from the standards, independently of the agent's decoder, so that each checks the other.
Telegrams are returned from the L field on without the link layer's CRCs (as receivers deliver
them); `with_crcs` adds format A CRCs for what is actually on air.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CRC_POLY: Final = 0x3D65
C_SND_NR: Final = 0x44
FILLER: Final = 0x2F


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc ^ 0xFFFF


def with_crcs(frame: bytes) -> bytes:
    """Format A on air: a CRC after the first 10 bytes and after every 16 bytes that follow."""
    out = bytearray()
    for block in [frame[:10]] + [frame[i : i + 16] for i in range(10, len(frame), 16)]:
        out += block + crc16(block).to_bytes(2, "big")
    return bytes(out)


def manufacturer_field(code: str) -> int:
    return ((ord(code[0]) - 64) << 10) | ((ord(code[1]) - 64) << 5) | (ord(code[2]) - 64)


def bcd(value: int, nbytes: int) -> bytes:
    return bytes.fromhex(f"{value:0{nbytes * 2}d}"[-nbytes * 2 :])[::-1]


def address(manufacturer: str, ident: int, version: int, device_type: int) -> bytes:
    """M (2) + A (6) as transmitted."""
    return (
        manufacturer_field(manufacturer).to_bytes(2, "little") + bcd(ident, 4) + bytes((version, device_type))
    )


def frame(addr: bytes, payload: bytes) -> bytes:
    body = bytes((C_SND_NR,)) + addr + payload
    return bytes((len(body),)) + body


def _aes(key: bytes) -> algorithms.AES:
    return algorithms.AES(key)


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(_aes(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def ctr(key: bytes, counter: bytes, data: bytes) -> bytes:
    cipher = Cipher(_aes(key), modes.CTR(counter)).encryptor()
    return cipher.update(data) + cipher.finalize()


def cmac_aes(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(_aes(key))
    mac.update(data)
    return mac.finalize()


def pad_blocks(data: bytes) -> bytes:
    """2F fillers up to whole 16-byte blocks (the OMS way of padding encrypted records)."""
    return data + bytes((FILLER,)) * (-len(data) % 16)


def ell_ctr(addr: bytes, key: bytes, access: int, session: int, application: bytes) -> bytes:
    """ELL II (CI 8D): CC, ACC, SN, then PayloadCRC + application layer, AES-128-CTR encrypted.
    SN's top three bits say "AES-CTR" (001)."""
    cc = 0x20
    sn = ((1 << 29) | (session & 0x1FFFFFFF)).to_bytes(4, "little")
    plain = crc16(application).to_bytes(2, "little") + application
    counter = addr + bytes((cc,)) + sn + b"\x00\x00\x00"
    return bytes((0x8D, cc, access)) + sn + ctr(key, counter, plain)


def tpl_mode5(addr: bytes, key: bytes, access: int, status: int, records: bytes) -> bytes:
    """Short transport header (CI 7A) + OMS mode 5: 2F 2F check bytes, records, fillers, CBC."""
    plain = pad_blocks(b"\x2f\x2f" + records)
    blocks = len(plain) // 16
    config = (5 << 8) | (blocks << 4)
    iv = addr + bytes((access,)) * 8
    head = bytes((0x7A, access, status)) + config.to_bytes(2, "little")
    return head + cbc_encrypt(key, iv, plain)


def tpl_mode7(addr: bytes, key: bytes, access: int, status: int, *, counter: int, records: bytes) -> bytes:
    """AFL (CI 90: counter and an 8-byte CMAC) + short header + OMS mode 7 (KDF-A key, IV 0)."""
    ident = addr[2:6]
    derive = counter.to_bytes(4, "little") + ident + b"\x07" * 7
    k_enc = cmac_aes(key, b"\x00" + derive)
    k_mac = cmac_aes(key, b"\x01" + derive)
    plain = pad_blocks(b"\x2f\x2f" + records)
    blocks = len(plain) // 16
    config = (7 << 8) | (blocks << 4)
    tpl = bytes((0x7A, access, status)) + config.to_bytes(2, "little") + b"\x10"
    tpl += cbc_encrypt(k_enc, bytes(16), plain)
    mcl = 0x25  # counter in the MAC, 8-byte AES-CMAC
    mcr = counter.to_bytes(4, "little")
    mac = cmac_aes(k_mac, bytes((mcl,)) + mcr + tpl)[:8]
    fcl = 0x2000 | 0x0800 | 0x0400  # MCL, counter and MAC present
    afl = fcl.to_bytes(2, "little") + bytes((mcl,)) + mcr + mac
    return bytes((0x90, len(afl))) + afl + tpl


def tpl_plain(access: int, status: int, records: bytes) -> bytes:
    return bytes((0x7A, access, status, 0, 0)) + records
