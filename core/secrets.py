"""Secrets in the config by reference (`{ file = "..." }` or `{ env = "..." }`), resolved when used.

A secret is resolved when it is used, never stored back into the config model, and never logged
(`core.redact` masks it in status snapshots and log events). Here in the core so that any config
model (the uplink's, a driver's) can take `Secret` for a password field.

A secret file must not be readable by others nor writable by its group: `0600` owned by the
service user, or `0640 root:edge-agent` as `deploy/install.sh` lays out `/etc/edge-agent`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from water_edge.core.errors import ConfigError


class SecretRef(BaseModel):
    """`{ file = "/etc/edge-agent/mqtt.pass" }` or `{ env = "EDGE_MQTT_PASSWORD" }`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret reference takes exactly one of 'file' or 'env'")
        if self.env is not None and not self.env.strip():
            raise ValueError("'env' names no environment variable (it is empty)")
        return self

    def resolve(self) -> str:
        """The secret's value; ConfigError naming the reference (never the value) if unavailable."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError([f"secret: environment variable {self.env} is not set"])
            return value
        if self.file is None:  # excluded by the validator; says so to the type checker
            raise ConfigError(["secret: a reference needs 'file' or 'env'"])
        try:
            mode = self.file.stat().st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError([f"secret: {self.file} is not a regular file (a directory?)"])
            if mode & 0o027:
                raise ConfigError(
                    [f"secret: {self.file} is readable by others or writable by its group; chmod 640 it"]
                )
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError([f"secret: cannot read {self.file}: {exc.strerror}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"secret: {self.file} is not UTF-8 text"]) from exc


Secret = str | SecretRef


def describe_secret(value: Secret | None) -> str | None:
    """What may be shown of a secret setting: where it comes from, never its value."""
    if value is None:
        return None
    if isinstance(value, str):
        return "(set in the config file)"
    return f"(from file {value.file})" if value.file is not None else f"(from ${value.env})"


def resolve_secret(value: Secret | None) -> str | None:
    """A literal stays as it is; a reference is read now."""
    if value is None or isinstance(value, str):
        return value
    return value.resolve()
