"""The transport layer's configuration field (the old "signature") and OMS security modes 5 and 7.

The configuration field's bits 8-12 name the security mode (EN 13757-7, OMS volume 2):

    0 none   2/3 DES (deprecated)   5 AES-128-CBC, IV from the header   7 AES-128-CBC, IV 0,
    key derived per message (KDF-A, AES-CMAC)   8 AES-CTR+CMAC   9 AES-GCM   10 AES-CCM   13 TLS

For modes 5 and 7 bits 4-7 count the encrypted 16-byte blocks, and a decrypted telegram starts with
the check bytes 2F 2F: a wrong key is a clear error, never garbage readings. Old meters put other
values into this field (it was a "signature" before EN 13757-7); a value that is not a defined
mode, or a mode 5/7 field announcing no blocks or more blocks than the telegram has, is read as
plain data with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from water_edge.drivers.mbus import crypto
from water_edge.drivers.mbus.frame import MbusDecodeError

MODE_NAMES: Final[dict[int, str]] = {
    2: "DES-CBC, IV 0",
    3: "DES-CBC",
    5: "AES-128-CBC",
    7: "AES-128-CBC, IV 0, derived key",
    8: "AES-128-CTR with CMAC",
    9: "AES-128-GCM",
    10: "AES-128-CCM",
    13: "TLS",
}
BLOCK_MODES: Final = frozenset({2, 3, 5, 7})  # bits 4-7 count encrypted blocks
DECRYPTABLE: Final = frozenset({5, 7})
CHECK: Final = b"\x2f\x2f"
KDF_ENC_FROM_METER: Final = 0x00


class MbusEncryptedError(MbusDecodeError):
    """Encrypted user data and no key (or a mode this decoder cannot decrypt)."""

    def __init__(self, message: str, mode: int) -> None:
        super().__init__(message)
        self.mode = mode


@dataclass(frozen=True, slots=True)
class ConfigField:
    value: int

    @property
    def mode(self) -> int:
        return (self.value >> 8) & 0x1F

    @property
    def blocks(self) -> int:
        return (self.value >> 4) & 0x0F

    @property
    def defined(self) -> bool:
        return self.mode == 0 or self.mode in MODE_NAMES

    @property
    def extension_bytes(self) -> int:
        """Bytes of configuration field extension that follow it in the header (mode 7: one)."""
        return 1 if self.mode == 7 else 0


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """What decryption needs besides the telegram itself.

    `address`: the 8 bytes M + A (manufacturer, ID, version, device type) as transmitted, for the
    IV when the transport header is short (wireless: the link layer's address). `message_counter`:
    the authentication and fragmentation layer's counter (mode 7's key derivation)."""

    key: bytes | None = None
    address: bytes | None = None
    message_counter: int | None = None


def mode5_iv(address: bytes, access_number: int) -> bytes:
    """Mode 5: M (2) + A (6) as transmitted, then the access number eight times."""
    return address + bytes((access_number,)) * 8


def mode7_key(key: bytes, message_counter: int, ident: bytes) -> bytes:
    """KDF-A: Kenc = CMAC(K, 0x00 | counter (4, LSB first) | ID (4, as transmitted) | 0x07 * 7)."""
    derivation = bytes((KDF_ENC_FROM_METER,)) + message_counter.to_bytes(4, "little") + ident + b"\x07" * 7
    return crypto.cmac_aes(key, derivation)


def plain_note(cf: ConfigField, body_len: int) -> str | None:
    """Why a non-zero configuration field is read as plain data, or None when it means encryption."""
    if not cf.defined:
        return (
            f"configuration field 0x{cf.value:04X} is not a defined security mode (bits 8-12 = "
            f"{cf.mode}); decoded as plain data"
        )
    if cf.mode in BLOCK_MODES and (cf.blocks == 0 or cf.blocks * 16 > body_len):
        return (
            f"configuration field 0x{cf.value:04X} names security mode {cf.mode} but {cf.blocks} "
            f"encrypted block(s) for {body_len} byte(s) of data; decoded as plain data"
        )
    return None


ALREADY_DECRYPTED: Final = "user data already decrypted (it starts with the check bytes 2F 2F)"


def decrypt(
    cf: ConfigField,
    body: bytes,
    security: SecurityContext | None,
    *,
    address: bytes | None,
    access_number: int,
) -> bytes:
    """`body` with its encrypted blocks decrypted and checked; raises MbusEncryptedError without a
    key (or for a mode not supported), MbusKeyError when the check bytes do not come out."""
    mode = cf.mode
    name = f"security mode {mode} ({MODE_NAMES[mode]})"
    key = security.key if security is not None else None
    if key is None and body.startswith(CHECK):
        return body  # a receiver or tool decrypted it already (the header still names the mode)
    if mode not in DECRYPTABLE:
        raise MbusEncryptedError(f"encrypted user data, {name}: not supported by this decoder", mode)
    if key is None:
        raise MbusEncryptedError(f"encrypted user data, {name}: the meter's key is needed", mode)
    size = cf.blocks * 16
    if address is None or len(address) != 8:
        raise MbusDecodeError(f"{name}: the meter's address for the IV is unknown (short header)")
    if mode == 5:
        plain = crypto.cbc_decrypt(key, mode5_iv(address, access_number), body[:size])
    else:
        counter = security.message_counter if security is not None else None
        if counter is None:
            raise MbusDecodeError(f"{name}: no message counter (the AFL that carries it is missing)")
        plain = crypto.cbc_decrypt(mode7_key(key, counter, address[2:6]), bytes(16), body[:size])
    if not plain.startswith(CHECK):
        if body.startswith(CHECK):
            return body  # already decrypted: the key does not apply
        raise crypto.MbusKeyError(
            f"{name}: decrypted data does not start with 2F 2F: wrong key for this meter?"
        )
    return plain + body[size:]
