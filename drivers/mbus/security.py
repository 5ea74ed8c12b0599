"""The transport layer's configuration field (the old "signature") and OMS security modes 5 and 7.

The configuration field's bits 8-12 name the security mode (EN 13757-7, OMS volume 2):

    0 none   2/3 DES (deprecated)   5 AES-128-CBC, IV from the header   7 AES-128-CBC, IV 0,
    key derived per message (KDF-A, AES-CMAC)   8 AES-CTR+CMAC   9 AES-GCM   10 AES-CCM   13 TLS

For modes 5 and 7 bits 4-7 count the encrypted 16-byte blocks, and a decrypted telegram starts with
the check bytes 2F 2F: a wrong key is a clear error, never garbage readings. Old meters put other
values into this field (it was a "signature" before EN 13757-7); a value that is not a defined
mode, or a mode 5/7 field announcing no blocks or more blocks than the telegram has, is read as
plain data with a note.

The check bytes prove the key, not the rest: in CBC a changed ciphertext block alters the same bits
of the next block's plaintext and garbles only its own. So a mode 7 telegram decrypted with a key
is accepted only with an AFL MAC that matches (`AflMac`, EN 13757-7 / OMS volume 2: AES-CMAC with
the KDF-A key Kmac over the AFL's MCL, MCR and ML and the message from the CI after the AFL);
without one, or with one that does not match, it is refused (`MbusMacError`).
"""

from __future__ import annotations

import hmac
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
KDF_MAC_FROM_METER: Final = 0x01
# The AFL MCL's authentication type (its low nibble) -> the length of the truncated AES-CMAC.
AFL_MAC_LENGTHS: Final[dict[int, int]] = {3: 2, 4: 4, 5: 8, 6: 12, 7: 16}
AFL_NO_MAC: Final = 0
AT_NAMES: Final[dict[int, str]] = {8: "8 (AES-GCM)"}


class MbusEncryptedError(MbusDecodeError):
    """Encrypted user data and no key (or a mode this decoder cannot decrypt)."""

    def __init__(self, message: str, mode: int) -> None:
        super().__init__(message)
        self.mode = mode


class MbusMacError(MbusDecodeError):
    """A mode 7 telegram refused for its authentication: its AFL MAC does not match, is missing, or
    cannot be checked. Not a wrong key (that is `MbusKeyError`): the key gave the check bytes."""


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
class AflMac:
    """A telegram's AFL MAC and what it covers: the AFL's MCL, MCR and ML (those present), then every
    byte from the CI after the AFL to the end of the message, as transmitted."""

    authentication_type: int | None  # the MCL's low nibble; None without an MCL
    mac: bytes  # as transmitted (truncated), empty when the AFL carries none
    covered: bytes


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """What decryption needs besides the telegram itself.

    `address`: the 8 bytes M + A (manufacturer, ID, version, device type) as transmitted, for the
    IV when the transport header is short (wireless: the link layer's address). `message_counter`:
    the authentication and fragmentation layer's counter (mode 7's key derivation). `afl_mac`: that
    layer's MAC, which mode 7 must carry (None: no AFL)."""

    key: bytes | None = None
    address: bytes | None = None
    message_counter: int | None = None
    afl_mac: AflMac | None = None


def mode5_iv(address: bytes, access_number: int) -> bytes:
    """Mode 5: M (2) + A (6) as transmitted, then the access number eight times."""
    return address + bytes((access_number,)) * 8


def kdf_a(key: bytes, constant: int, message_counter: int, ident: bytes) -> bytes:
    """KDF-A: CMAC(K, constant | counter (4, LSB first) | ID (4, as transmitted) | 0x07 * 7)."""
    derivation = bytes((constant,)) + message_counter.to_bytes(4, "little") + ident + b"\x07" * 7
    return crypto.cmac_aes(key, derivation)


def mode7_key(key: bytes, message_counter: int, ident: bytes) -> bytes:
    """Kenc, the key mode 7's user data is encrypted with."""
    return kdf_a(key, KDF_ENC_FROM_METER, message_counter, ident)


def mode7_mac_key(key: bytes, message_counter: int, ident: bytes) -> bytes:
    """Kmac, the key of the AFL MAC."""
    return kdf_a(key, KDF_MAC_FROM_METER, message_counter, ident)


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
    key (or for a mode not supported), MbusKeyError when the check bytes do not come out, and
    MbusMacError for a mode 7 telegram whose AFL MAC is missing or does not match."""
    mode = cf.mode
    name = f"security mode {mode} ({MODE_NAMES[mode]})"
    context = security if security is not None else SecurityContext()
    key = context.key
    if key is None and body.startswith(CHECK):
        return body  # a receiver or tool decrypted it already (the header still names the mode)
    if mode not in DECRYPTABLE:
        raise MbusEncryptedError(f"encrypted user data, {name}: not supported by this decoder", mode)
    if key is None:
        raise MbusEncryptedError(f"encrypted user data, {name}: the meter's key is needed", mode)
    size = cf.blocks * 16
    if address is None or len(address) != 8:
        raise MbusDecodeError(f"{name}: the meter's address for the IV is unknown (short header)")
    if mode == 7:
        return _mode7(key, context, ident=address[2:6], body=body, size=size, name=name)
    plain = crypto.cbc_decrypt(key, mode5_iv(address, access_number), body[:size])
    if plain.startswith(CHECK):
        return plain + body[size:]
    if body.startswith(CHECK):
        return body  # already decrypted: the key does not apply
    raise _wrong_key(name)


def _mode7(key: bytes, context: SecurityContext, *, ident: bytes, body: bytes, size: int, name: str) -> bytes:
    """Mode 7 with a key: decrypted, then accepted only if its AFL MAC matches. A wrong key is told
    by the check bytes first, so it is reported as one, not as an altered telegram."""
    afl_mac = _required_mac(context.afl_mac, name)
    counter = context.message_counter
    if counter is None:
        raise MbusDecodeError(f"{name}: no message counter (the AFL that carries it is missing)")
    plain = crypto.cbc_decrypt(mode7_key(key, counter, ident), bytes(16), body[:size])
    if not plain.startswith(CHECK):
        if body.startswith(CHECK):
            # The MAC covers the ciphertext, which a receiver that decrypted it no longer passes on.
            raise MbusMacError(
                f"{name}: user data already decrypted (it starts with 2F 2F), so its AFL MAC cannot "
                "be checked: refused while a key is configured for this meter (a receiver that decrypts "
                "for the agent: configure the meter without a key)"
            )
        raise _wrong_key(name)
    expected = crypto.cmac_aes(mode7_mac_key(key, counter, ident), afl_mac.covered)[: len(afl_mac.mac)]
    if not hmac.compare_digest(expected, afl_mac.mac):
        raise MbusMacError(
            f"{name}: the AFL MAC does not match: the telegram was altered on the way or the key is wrong"
        )
    return plain + body[size:]


def _required_mac(afl_mac: AflMac | None, name: str) -> AflMac:
    """The AFL MAC mode 7 must carry, of a length its authentication type gives."""
    if afl_mac is None or not afl_mac.mac or afl_mac.authentication_type == AFL_NO_MAC:
        # OMS requires it, and stripping it is how an altered telegram would otherwise pass.
        raise MbusMacError(f"{name}: telegram without an AFL MAC: refused")
    kind = afl_mac.authentication_type
    length = AFL_MAC_LENGTHS.get(kind) if kind is not None else None
    if kind is None or length is None:
        what = "not given (the AFL has no MCL)" if kind is None else AT_NAMES.get(kind, f"{kind}, reserved")
        raise MbusMacError(
            f"{name}: AFL authentication type {what}: not supported, the MAC cannot be checked"
        )
    if len(afl_mac.mac) != length:
        raise MbusMacError(
            f"{name}: the AFL MAC has {len(afl_mac.mac)} bytes where its authentication type {kind} "
            f"gives {length}: refused"
        )
    return afl_mac


def _wrong_key(name: str) -> crypto.MbusKeyError:
    return crypto.MbusKeyError(f"{name}: decrypted data does not start with 2F 2F: wrong key for this meter?")
