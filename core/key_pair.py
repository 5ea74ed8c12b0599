"""Loading a certificate and its private key into a TLS context, with why it failed in words.

The uplink's pair is checked by `check-config` and the metrics endpoint's is loaded by the agent:
both must never let OpenSSL prompt for a passphrase (under systemd it would hang or fail), and
both tell a key of another certificate from a file that is no PEM key at all.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal


class KeyPairError(ValueError):
    """Why a certificate and key cannot be used together (`kind`: passphrase, mismatch, not_pem)."""

    def __init__(self, kind: Literal["passphrase", "mismatch", "not_pem"], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class _PassphraseError(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _PassphraseError


def load_key_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """`context.load_cert_chain(cert, key)`; `KeyPairError` for a key locked by a passphrase, a key
    of another certificate, or files that are no PEM pair; OSError for a file that cannot be read."""
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _PassphraseError:
        raise KeyPairError(
            "passphrase", "the key is protected by a passphrase, which the agent cannot enter"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise KeyPairError("mismatch", "the key is not the certificate's") from None
        raise KeyPairError("not_pem", f"not a PEM certificate and key ({exc.reason or exc})") from None
