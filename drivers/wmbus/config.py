"""The `[[devices]]` schema of a wireless M-Bus receiver and the meters it should report; validated
without I/O (a key given by reference is only read when the driver opens)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.names import NAME_PATTERN
from water_edge.core.patterns import explained
from water_edge.core.secrets import SecretRef
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.mbus.config import RecordSelector

ReceiverKind = Literal["im871a", "amb8465", "rtlwmbus"]
LinkMode = Literal["T1", "C1", "S1"]
AlarmName = Literal["leak", "burst", "backflow", "dry", "tamper", "battery", "error", "alarm"]
DEFAULT_BAUD = {"im871a": 57600, "amb8465": 9600, "rtlwmbus": None}


class AlarmBit(BaseModel):
    """A manufacturer-specific flag the meter's data sheet documents: bit `bit` of the record
    `record` (a quantity, e.g. `error_flags`) or of the header `status` byte means `alarm`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record: str = Field(default="error_flags", pattern=r"^[a-z_]+$", max_length=64)
    bit: int = Field(ge=0, le=63)
    alarm: AlarmName


class WmbusMeter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    # The 8-digit identification printed on the meter (the link address), as the meter sends it.
    id: str = Field(pattern=explained(r"^[0-9A-Fa-f]{8}$", "the 8-digit ID printed on the meter"))
    manufacturer: str | None = Field(
        default=None, pattern=explained(r"^[A-Z]{3}$", "a manufacturer code of 3 capital letters (e.g. KAM)")
    )
    # AES-128 key, 32 hex digits, or a secret reference ({ file = ... } / { env = ... }).
    key: str | SecretRef | None = None
    records: Literal["all"] | list[RecordSelector] = "all"
    alarm_bits: list[AlarmBit] = Field(default_factory=list, max_length=64)
    # A meter not heard for this long gets a bad `<meter>.status` reading ("not heard for ...").
    silent_after_s: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @field_validator("key")
    @classmethod
    def _key_form(cls, value: str | SecretRef | None) -> str | SecretRef | None:
        if isinstance(value, str):
            digits = "".join(ch for ch in value if not ch.isspace() and ch not in ":-")
            if len(digits) != 32 or any(ch not in "0123456789abcdefABCDEF" for ch in digits):
                raise ValueError("a meter key is 32 hex digits (AES-128), or { file = ... } / { env = ... }")
        return value


class WmbusConfig(DeviceConfig):
    """One receiver: a USB stick on a serial port, or rtl_wmbus's lines from a FIFO or TCP."""

    kind: Literal["wmbus"]
    receiver: ReceiverKind
    port: str | None = Field(default=None, min_length=1, max_length=255)  # serial device or FIFO
    host: str | None = Field(default=None, min_length=1, max_length=255)  # rtl_wmbus over TCP
    tcp_port: int | None = Field(default=None, ge=1, le=65535)
    baudrate: int | None = Field(default=None, ge=1200, le=921_600)
    link_modes: list[LinkMode] = Field(
        default_factory=lambda: list[LinkMode](["T1"]), min_length=1, max_length=3
    )
    # Report every meter heard (id, manufacturer, RSSI, encrypted, key known) as readings.
    listen: bool = False
    # A telegram heard again within this many seconds (through a repeater, or decoded twice) is
    # dropped; 0 keeps every copy. Keep it well under 256 send intervals (the access number wraps).
    duplicate_window_s: float = Field(default=30.0, ge=0, le=3600)
    meters: list[WmbusMeter] = Field(default_factory=list)

    def endpoint_text(self) -> str:
        where = self.port if self.port is not None else f"{self.host}:{self.tcp_port}"
        return f"{self.receiver} {where}"

    def point_count(self) -> int:
        return len(self.meters)

    @model_validator(mode="after")
    def _source(self) -> Self:
        if (self.port is None) == (self.host is None):
            raise ValueError("give exactly one of 'port' (serial device or FIFO) or 'host' + 'tcp_port'")
        if self.host is not None and self.tcp_port is None:
            raise ValueError("'host' needs 'tcp_port'")
        if self.host is not None and self.receiver != "rtlwmbus":
            raise ValueError(f"receiver {self.receiver!r} is a USB stick: give its serial 'port'")
        if self.receiver != "rtlwmbus" and len(self.link_modes) > 1:
            raise ValueError(f"an {self.receiver} listens on one link mode at a time; give one")
        if not self.meters and not self.listen:
            raise ValueError("configure 'meters', or set 'listen = true' to report every meter heard")
        names = [m.name for m in self.meters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate meter names: {', '.join(dupes)}")
        ids = [m.id.upper() for m in self.meters]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"meter id {twice[0]} is configured twice")
        return self

    @property
    def serial_baudrate(self) -> int | None:
        return self.baudrate if self.baudrate is not None else DEFAULT_BAUD[self.receiver]
