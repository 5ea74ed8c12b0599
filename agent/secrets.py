"""Secrets in the config by reference (`{ file = "..." }` or `{ env = "..." }`), and their redaction.

A secret is resolved when it is used, never stored back into the config model, and never logged:
`redact()` masks secret-looking keys and every known secret value in a structure (status snapshots),
and `RedactingProcessor` does the same to every structlog event before it is rendered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

from agent.errors import ConfigError

MASK = "***"
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|secret|token|private|credential|api_?key", re.I)


class SecretRef(BaseModel):
    """`{ file = "/etc/edge-agent/mqtt.pass" }` or `{ env = "EDGE_MQTT_PASSWORD" }`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret reference takes exactly one of 'file' or 'env'")
        return self

    def resolve(self) -> str:
        """The secret's value; ConfigError naming the reference (never the value) if unavailable."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError([f"secret: environment variable {self.env} is not set"])
            return value
        assert self.file is not None
        try:
            if self.file.stat().st_mode & 0o077:
                raise ConfigError([f"secret: {self.file} is readable by others; chmod 600 it"])
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError([f"secret: cannot read {self.file}: {exc.strerror}"]) from exc


Secret = str | SecretRef


def resolve_secret(value: Secret | None) -> str | None:
    """A literal stays as it is; a reference is read now."""
    if value is None or isinstance(value, str):
        return value
    return value.resolve()


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of `obj` with secret-named keys masked and known secret values cut out of strings."""
    values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    return _redact(obj, values)


def _redact(obj: Any, values: list[str]) -> Any:
    if isinstance(obj, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None
                else _redact(v, values) for k, v in obj.items()}  # fmt: skip
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
    """structlog processor: put it before the renderer in `agent.logs.configure`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 4 and secret not in self._values:
            self._values = sorted([*self._values, secret], key=len, reverse=True)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        redacted: dict[str, Any] = _redact(dict(event), self._values)
        return redacted
