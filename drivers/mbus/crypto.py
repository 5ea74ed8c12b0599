"""The one place the meters' AES is computed: `cryptography`'s AES-128 in CBC and CTR mode and
AES-CMAC, with its errors translated into the driver's error tree.

Meters encrypt with AES-128 only (OMS security modes 5 and 7, and the wireless extended link
layer's AES-CTR); a key of another length is a configuration mistake, refused before any byte is
decrypted.
"""

from __future__ import annotations

import string
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from water_edge.drivers.mbus.frame import MbusDecodeError

BLOCK: Final = 16


class MbusKeyError(MbusDecodeError):
    """A key that cannot be used, or that does not decrypt the telegram (its check failed)."""


def parse_key(text: str) -> bytes:
    """A meter key as printed on its delivery note: 32 hex digits (spaces and colons allowed)."""
    digits = "".join(ch for ch in text if not ch.isspace() and ch not in ":-")
    if any(ch not in string.hexdigits for ch in digits):  # which ones is not said: it is a secret
        raise MbusKeyError("a meter key is 32 hex digits (AES-128); it has other characters")
    if len(digits) != 2 * BLOCK:  # a digit left out copying it is the usual mistake: say how many
        raise MbusKeyError(f"a meter key is 32 hex digits (AES-128), got {len(digits)}")
    return bytes.fromhex(digits)


def _check(key: bytes, iv: bytes) -> None:
    if len(key) != BLOCK:
        raise MbusKeyError(f"an AES-128 key is 16 bytes, got {len(key)}")
    if len(iv) != BLOCK:
        raise MbusKeyError(f"an AES initialisation vector is 16 bytes, got {len(iv)}")


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CBC without padding; `data` is whole 16-byte blocks."""
    _check(key, iv)
    if len(data) % BLOCK:
        raise MbusDecodeError(f"{len(data)} encrypted bytes are not whole 16-byte blocks")
    try:
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        return decryptor.update(data) + decryptor.finalize()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MbusKeyError(f"AES-CBC failed: {exc}") from exc


def ctr(key: bytes, counter: bytes, data: bytes) -> bytes:
    """AES-128-CTR (encryption and decryption are the same); `counter` is the first counter block."""
    _check(key, counter)
    try:
        cipher = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
        return cipher.update(data) + cipher.finalize()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MbusKeyError(f"AES-CTR failed: {exc}") from exc


def cmac_aes(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (RFC 4493), the OMS key-derivation and MAC function."""
    _check(key, bytes(BLOCK))
    try:
        mac = cmac.CMAC(algorithms.AES(key))
        mac.update(data)
        return mac.finalize()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MbusKeyError(f"AES-CMAC failed: {exc}") from exc
