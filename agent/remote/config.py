"""The `[security]` config section: trusted operator keys and their rights, command limits, audit file."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.sizes import ByteSize
from water_edge.provisioning.config import IdentitySection

CommandType = Literal[
    "read_now",
    "config_update",
    "model_update",
    "pump_calibration",
    "leak_calibration",
    "machine_sound_calibration",
    "restart",
    "write",
    "update",
    "update_chunk",
    "state_restore",
    "state_backup",
]
COMMAND_TYPES: tuple[str, ...] = CommandType.__args__  # type: ignore[attr-defined]
# What a config_update may change beyond the ordinary settings, each only with its own right:
# `security` ([security], operators and their rights, gateway.state_dir), `writes` ([writes] and
# the devices it names), `uplink` (where data goes and with which credentials).
ConfigRight = Literal["security", "writes", "uplink"]
CONFIG_RIGHTS: tuple[str, ...] = ConfigRight.__args__  # type: ignore[attr-defined]


def decode_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its 32 raw bytes; ValueError otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("public_key must be base64 of a 32-byte Ed25519 key") from exc
    if len(raw) != 32:
        raise ValueError(f"public_key must be 32 bytes (got {len(raw)})")
    return Ed25519PublicKey.from_public_bytes(raw)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OperatorKey(_Section):
    """One operator (person or central system) allowed to send the listed command types."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    public_key: str
    commands: list[CommandType] = Field(min_length=1)
    # Sections a config_update from this key may change (see ConfigRight); none by default.
    config_rights: list[ConfigRight] = Field(default_factory=list)
    # Commands a minute from this key; default: [security] max_commands_per_minute.
    max_per_minute: int | None = Field(default=None, ge=1, le=600)

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, value: str) -> str:
        decode_public_key(value)
        return value.strip()


class SecuritySection(_Section):
    """`[security]`: who may command this gateway, and how strictly commands are checked."""

    identity: IdentitySection = IdentitySection()
    operators: list[OperatorKey] = Field(default_factory=list)
    # Commands are refused if they live longer than this (bounds the nonce store) ...
    max_command_ttl_s: int = Field(default=3600, ge=10, le=7 * 86400)
    # ... and tolerate this much clock difference between the centre and the gateway.
    clock_skew_s: int = Field(default=60, ge=0, le=3600)
    # Largest command accepted; the agent announces twice this (plus headers) as its MQTT 5 Maximum
    # Packet Size, so the broker drops anything bigger before it reaches the gateway.
    max_command_bytes: ByteSize = Field(default=512 * 1024, ge=16 * 1024, le=16 * 2**20)
    # Deepest nesting of brackets in a command, checked on the raw bytes before parsing.
    max_command_depth: int = Field(default=32, ge=4, le=128)
    # Per operator key (a key's own max_per_minute overrides it).
    max_commands_per_minute: int = Field(default=30, ge=1, le=600)
    # Refusals audited and answered one by one per minute; beyond it they are counted and summarised.
    max_refusals_per_minute: int = Field(default=60, ge=1, le=6000)
    # Relative paths are taken from gateway.state_dir.
    nonce_db: Path = Path("nonces.sqlite")
    audit_log: Path = Path("audit.log")
    # The audit log is rotated at this size, keeping audit_keep old files.
    audit_max_bytes: ByteSize = Field(default=4 * 2**20, ge=64 * 1024, le=2**30)
    audit_keep: int = Field(default=3, ge=0, le=100)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [op.name for op in self.operators]
        if len(names) != len(set(names)):
            raise ValueError("operator names must be unique")
        return self
