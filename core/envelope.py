"""The signed command envelope: its fields, the canonical bytes that are signed, signing and parsing.

    {"v": 1, "id": "...", "type": "read_now", "target": "site/gateway", "nonce": "<32 hex>",
     "issued_at": 1767225600, "expires_at": 1767225900, "args": {...},
     "key_id": "ops-alice", "sig": "<base64 Ed25519 signature>"}

Signed bytes = DOMAIN + the JSON of every field except `sig`, keys sorted at every level, no
whitespace, UTF-8 (what `orjson.dumps(..., option=OPT_SORT_KEYS)` produces). The domain prefix keeps
a signature over a command from being valid for anything else the operator key might sign.

Untrusted bytes are bounded before they are parsed: `check_bounds` refuses a payload over its size
or nesting limit without building anything from it, and `canonical_json` builds the signed bytes
with an explicit stack, so no depth that parses can make the signature input fail to build.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
import uuid
from collections.abc import Iterator
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
# Longest value of each identifying field: an envelope names things, it does not carry data there.
_MAX_LEN: dict[str, int] = {"id": 128, "type": 64, "target": 200, "key_id": 64, "sig": 200}
# An escape sequence, a JSON string once escapes are gone, the innermost bracket pair with nothing
# nested inside: each regex is linear on any input (no overlapping alternatives to backtrack over).
_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")
_BRACKET = re.compile(rb"[\[\]{}]")


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


def nesting_depth_exceeds(payload: bytes, max_depth: int) -> bool:
    """True if brackets in `payload` (outside strings) nest deeper than `max_depth`, judged on the
    raw bytes: strings are cut out, then innermost pairs are removed one level per pass (each pass
    one C-speed regex over the bytes), so the cost is bounded by `max_depth` passes, not by the input."""
    rest = _STRING.sub(b"", _ESCAPE.sub(b"", payload))
    for _ in range(max_depth):
        rest, removed = _INNERMOST.subn(b"", rest)
        if not removed:
            break
    return _BRACKET.search(rest) is not None


def check_bounds(payload: bytes, max_bytes: int, max_depth: int) -> None:
    """Refuse a payload too large or too deeply nested before anything is parsed from it."""
    if len(payload) > max_bytes:
        raise EnvelopeError("too_large", f"{len(payload)} bytes > {max_bytes}")
    if nesting_depth_exceeds(payload, max_depth):
        raise EnvelopeError("too_deep", f"nested deeper than {max_depth} levels")


def _scalar(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError: a value JSON cannot carry
        raise EnvelopeError("malformed", f"value cannot be signed: {exc}") from exc


def _chunks(value: Any) -> Iterator[bytes]:
    """Canonical JSON of `value` in pieces, depth-first with an explicit stack (no recursion)."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        if isinstance(item, _Raw):  # a separator or closing bracket queued below
            yield item
        elif isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                raise EnvelopeError("malformed", "object keys must be strings")
            pairs = sorted(item.items())
            yield b"{"
            stack.append(iter([*_members(pairs), _Raw(b"}")]))
        elif isinstance(item, list):
            yield b"["
            stack.append(iter([*_elements(item), _Raw(b"]")]))
        else:
            yield _scalar(item)


class _Raw(bytes):
    """JSON punctuation already in its final form (never a value from the document)."""


def _members(pairs: list[tuple[str, Any]]) -> Iterator[Any]:
    for i, (key, value) in enumerate(pairs):
        yield _Raw((b"," if i else b"") + _scalar(key) + b":")
        yield value


def _elements(items: list[Any]) -> Iterator[Any]:
    for i, value in enumerate(items):
        if i:
            yield _Raw(b",")
        yield value


_END = object()


def canonical_json(value: Any) -> bytes:
    """`orjson.dumps(value, option=OPT_SORT_KEYS)`, byte for byte, at any nesting depth."""
    return b"".join(_chunks(value))


def signing_input(doc: dict[str, Any]) -> bytes:
    """The exact bytes an operator key signs for `doc` (its `sig` field, if any, left out)."""
    body = {k: v for k, v in doc.items() if k != "sig"}
    return DOMAIN + canonical_json(body)


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
        raise EnvelopeError("malformed", f"unknown fields {sorted(unknown)[:8]}"[:200])
    for name, limit in _MAX_LEN.items():
        if len(doc[name]) > limit:
            raise EnvelopeError("malformed", f"field {name!r} is longer than {limit} characters")
    if doc["v"] != VERSION:
        raise EnvelopeError("malformed", f"unsupported envelope version {doc['v']}")
    if not 16 <= len(doc["nonce"]) <= 128:
        raise EnvelopeError("malformed", "nonce must be 16-128 characters")
    if doc["expires_at"] <= doc["issued_at"]:
        raise EnvelopeError("malformed", "expires_at is not after issued_at")
    try:
        signature = base64.b64decode(doc["sig"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError("malformed", "sig is not base64") from exc
    return Envelope(
        id=doc["id"],
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
