"""The signed command envelope: its fields, the canonical bytes that are signed, signing and parsing.

    {"v": 1, "id": "...", "type": "read_now", "target": "site/gateway", "nonce": "<32 hex>",
     "issued_at": 1767225600, "expires_at": 1767225900, "args": {...},
     "key_id": "ops-alice", "sig": "<base64 Ed25519 signature>"}

Signed bytes = DOMAIN + the JSON of every field except `sig`, keys sorted at every level, no
whitespace, UTF-8 (what `orjson.dumps(..., option=OPT_SORT_KEYS)` produces). The domain prefix keeps
a signature over a command from being valid for anything else the operator key might sign.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DOMAIN = b"water-edge-agent/command/v1\n"
VERSION = 1
_FIELDS: dict[str, type] = {
    "v": int, "id": str, "type": str, "target": str, "nonce": str,
    "issued_at": int, "expires_at": int, "args": dict, "key_id": str, "sig": str,
}  # fmt: skip


class EnvelopeError(ValueError):
    """The payload is not a well-formed command envelope; `code` is the refusal reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Envelope:
    id: str
    type: str
    target: str
    nonce: str
    issued_at: int
    expires_at: int
    args: dict[str, Any]
    key_id: str
    signature: bytes
    signed_bytes: bytes


def signing_input(doc: dict[str, Any]) -> bytes:
    """The exact bytes an operator key signs for `doc` (its `sig` field, if any, left out)."""
    body = {k: v for k, v in doc.items() if k != "sig"}
    return DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign(
    key: Ed25519PrivateKey,
    key_id: str,
    command_type: str,
    target: str,
    args: dict[str, Any] | None = None,
    *,
    ttl_s: int = 300,
    now: int | None = None,
    command_id: str | None = None,
    nonce: str | None = None,
) -> bytes:
    """A complete signed envelope, ready to publish on `{prefix}/{site}/{gateway}/cmd/{type}`."""
    issued = int(time.time()) if now is None else now
    doc: dict[str, Any] = {
        "v": VERSION,
        "id": command_id or str(uuid.uuid4()),
        "type": command_type,
        "target": target,
        "nonce": nonce or secrets.token_hex(16),
        "issued_at": issued,
        "expires_at": issued + ttl_s,
        "args": args or {},
        "key_id": key_id,
    }
    doc["sig"] = base64.b64encode(key.sign(signing_input(doc))).decode()
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def parse(payload: bytes) -> Envelope:
    """Check the shape (not the signature); raise EnvelopeError('malformed', ...) naming the problem."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError("malformed", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EnvelopeError("malformed", "not a JSON object")
    for name, kind in _FIELDS.items():
        value = doc.get(name)
        # bool is an int subclass; a `true` timestamp is not a timestamp.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EnvelopeError("malformed", f"field {name!r} missing or not {kind.__name__}")
    unknown = set(doc) - set(_FIELDS)
    if unknown:
        raise EnvelopeError("malformed", f"unknown fields {sorted(unknown)}")
    if doc["v"] != VERSION:
        raise EnvelopeError("malformed", f"unsupported envelope version {doc['v']}")
    if not 16 <= len(doc["nonce"]) <= 128:
        raise EnvelopeError("malformed", "nonce must be 16-128 characters")
    try:
        signature = base64.b64decode(doc["sig"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError("malformed", "sig is not base64") from exc
    return Envelope(
        id=doc["id"][:128],
        type=doc["type"],
        target=doc["target"],
        nonce=doc["nonce"],
        issued_at=doc["issued_at"],
        expires_at=doc["expires_at"],
        args=doc["args"],
        key_id=doc["key_id"],
        signature=signature,
        signed_bytes=signing_input(doc),
    )
