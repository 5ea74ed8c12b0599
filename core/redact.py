"""Redaction of secrets in what the agent shows or logs: status snapshots and every structlog event.

`redact()` masks secret-looking keys and every known secret value in a structure, and
`RedactingProcessor` does the same to every log event before it is rendered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from pydantic import BaseModel

MASK = "***"
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|secret|token|private|credential|api_?key", re.I)


def is_secret_key(name: object) -> bool:
    """True for a key whose value is a secret (password, token, private key, ...)."""
    return isinstance(name, str) and _SECRET_KEY.search(name) is not None


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of `obj` with secret-named keys masked and known secret values cut out of strings."""
    values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    return _redact(obj, values)


def _redact(obj: Any, values: list[str]) -> Any:
    if isinstance(obj, dict):
        return {
            k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None else _redact(v, values)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(_redact(v, values) for v in obj)
    if isinstance(obj, str):
        for value in values:
            obj = obj.replace(value, MASK)
        return obj
    if isinstance(obj, BaseModel):
        return _redact(obj.model_dump(mode="json"), values)
    return obj


class RedactingProcessor:
    """structlog processor: put it before the renderer in `core.logs.configure`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 4 and secret not in self._values:
            self._values = sorted([*self._values, secret], key=len, reverse=True)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        redacted: dict[str, Any] = _redact(dict(event), self._values)
        return redacted
