"""The `[[devices]]` schema of Modbus TCP and RTU devices and their tags (pydantic; no I/O).

Everything here is checked at `check-config` time: a tag that cannot be read as configured (a
bool in a holding register, a float32 running past address 65535, a bit tag without `bit`) is an
error naming the tag, not a surprise on site.
"""

from __future__ import annotations

import struct
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.hosts import Host, host_port
from water_edge.core.names import NAME_PATTERN
from water_edge.drivers.base import DeviceConfig

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "bit",
    "string",
    "bool",
]
Order = Literal["big", "little"]

REGISTER_TABLES: Final = frozenset({"holding", "input"})
BIT_TABLES: Final = frozenset({"coil", "discrete"})

# Registers each fixed-width type occupies; strings take `length`, bools one bit.
TYPE_REGISTERS: Final[dict[str, int]] = {
    "int16": 1,
    "uint16": 1,
    "bit": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
    "bool": 1,
}

ADDRESS_SPACE: Final = 65536
INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def as_float32(value: float) -> float:
    """`value` rounded to the nearest float32 (OverflowError when float32 cannot hold it)."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


class ModbusTag(BaseModel):
    """One value read from a Modbus device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    # Overrides the device's unit_id: several slaves behind one TCP gateway.
    unit_id: int | None = Field(default=None, ge=0, le=255)
    table: Table = "holding"
    address: int = Field(ge=0, le=ADDRESS_SPACE - 1)
    type: DataType = "uint16"
    bit: int | None = Field(default=None, ge=0, le=15)
    # String length in registers (two characters per register).
    length: int | None = Field(default=None, ge=1, le=125)
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = Field(default="", max_length=32)
    # Raw values (before scale and offset) the device sends in place of a measurement: a Siemens
    # analog input's 32767 ("overflow": a broken 4-20 mA loop) and -32768, a meter's 0xFFFF. Such a
    # reading is bad, "device reports fault value 32767", instead of 3276.7 bar.
    fault_values: tuple[int | float, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check_fault_values(self) -> Self:
        if not self.fault_values:
            return self
        if self.type in ("bool", "bit", "string"):
            raise ValueError(f"tag {self.name!r}: fault_values only apply to numeric types")
        if self.type in INTEGER_RANGES:
            lo, hi = INTEGER_RANGES[self.type]
            for value in self.fault_values:
                if isinstance(value, bool) or not (isinstance(value, int) and lo <= value <= hi):
                    raise ValueError(
                        f"tag {self.name!r}: fault value {value!r} cannot come from {self.type} "
                        f"registers ({lo}..{hi}; a raw value, before scale and offset)"
                    )
        if self.type == "float32":
            for value in self.fault_values:
                try:
                    as_float32(value)
                except OverflowError:
                    raise ValueError(
                        f"tag {self.name!r}: fault value {value!r} cannot come from float32 "
                        "registers (beyond ±3.4e38)"
                    ) from None
        return self

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        is_bit_table = self.table in BIT_TABLES
        if (self.type == "bool") != is_bit_table:
            raise ValueError(
                f"tag {self.name!r}: type 'bool' goes with table 'coil' or 'discrete' and those "
                f"tables only hold type 'bool' (got type {self.type!r} in table {self.table!r}); "
                "for one bit of a register use type 'bit' with 'bit = 0..15'"
            )
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError(
                f"tag {self.name!r}: 'bit' (0..15) is required for type 'bit' and only allowed with it"
            )
        if (self.type == "string") != (self.length is not None):
            raise ValueError(
                f"tag {self.name!r}: 'length' (registers) is required for type 'string' and only "
                "allowed with it"
            )
        if self.type in ("bool", "bit", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"tag {self.name!r}: scale/offset only apply to numeric types")
        end = self.address + self.width
        if end > ADDRESS_SPACE:
            raise ValueError(
                f"tag {self.name!r}: address {self.address} + {self.width} register(s) of "
                f"{self.type} runs past the last address 65535"
            )
        return self

    @property
    def width(self) -> int:
        """Registers (or bits, for bool) the tag occupies."""
        if self.type == "string":
            return self.length or 1  # length is required for strings (checked above)
        return TYPE_REGISTERS[self.type]


class ModbusDeviceConfig(DeviceConfig):
    """Keys every Modbus device has, whatever the transport."""

    unit_id: int = Field(default=1, ge=0, le=255)
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)
    retries: int = Field(default=1, ge=0, le=10)
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    max_bits_per_request: int = Field(default=2000, ge=1, le=2000)
    # Unused registers tolerated between two tags merged into one request. Reading 8 spare
    # registers (16 bytes on the wire) costs far less than one more round trip, yet stays small
    # enough that a block rarely straddles a hole the device refuses (exception 2).
    max_gap: int = Field(default=8, ge=0, le=124)
    tags: list[ModbusTag] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_tags(self) -> Self:
        seen: set[str] = set()
        dupes: list[str] = []
        for tag in self.tags:
            if tag.name in seen:
                dupes.append(tag.name)
            seen.add(tag.name)
        if dupes:
            raise ValueError(f"duplicate tag names: {', '.join(sorted(set(dupes)))}")
        for tag in self.tags:
            if tag.table in REGISTER_TABLES and tag.width > self.max_registers_per_request:
                raise ValueError(
                    f"tag {tag.name!r}: {tag.width} registers do not fit in one request "
                    f"(max_registers_per_request = {self.max_registers_per_request})"
                )
        return self

    def point_count(self) -> int:
        return len(self.tags)

    def tag_names(self) -> frozenset[str]:
        return frozenset(tag.name for tag in self.tags)

    def unit_of(self, tag: ModbusTag) -> int:
        """The unit ID a tag is read from."""
        return self.unit_id if tag.unit_id is None else tag.unit_id


class ModbusTcpConfig(ModbusDeviceConfig):
    """A Modbus TCP device (a PLC or a TCP-to-RTU gateway with several unit IDs behind it)."""

    kind: Literal["modbus_tcp"]
    host: Host = Field(min_length=1, max_length=253)
    port: int = Field(default=502, ge=1, le=65535)

    def endpoint_text(self) -> str:
        return host_port(self.host, self.port)


Parity = Literal["none", "even", "odd"]
BAUD_RATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _serial_unit(tag: ModbusTag) -> ModbusTag:
    # A TCP gateway may route any unit id; on the serial line itself only 1..247 are slaves.
    if tag.unit_id is not None and not 1 <= tag.unit_id <= 247:
        raise ValueError(
            f"unit_id {tag.unit_id} on a serial line: expected 1..247 (0 is broadcast: nobody "
            "answers a read; 248..255 are reserved)"
        )
    return tag


class ModbusRtuConfig(ModbusDeviceConfig):
    """A Modbus RTU slave on a serial line; devices naming the same `port` share it.

    Devices on one port must agree on the line settings (baudrate, parity, stopbits, bytesize);
    timeout, retries and everything about tags are per device.
    """

    kind: Literal["modbus_rtu"]
    port: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00]+$")
    unit_id: int = Field(default=1, ge=1, le=247)  # 0 is broadcast: nobody answers a read
    tags: list[Annotated[ModbusTag, AfterValidator(_serial_unit)]] = Field(min_length=1)
    baudrate: int = 19200
    parity: Parity = "even"  # the Modbus spec's default (8E1)
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    # Silence kept between two frames; default 3.5 character times (fixed 1.75 ms above
    # 19200 baud, as the Modbus serial-line spec says).
    inter_frame_ms: float | None = Field(default=None, ge=0, le=1000)
    # A 2-wire RS-485 adapter that hears its own transmission hands every request back before the
    # answer; pymodbus drops that echo (`handle_local_echo`). A property of the port's adapter.
    local_echo: bool = False

    def endpoint_text(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity[0].upper()}{self.stopbits}"

    @field_validator("stopbits", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        # `true` equals 1, and a Literal takes it even in strict mode.
        if isinstance(value, bool):
            raise ValueError("expected 1 or 2")
        return value

    @model_validator(mode="after")
    def _check_line(self) -> Self:
        if self.baudrate not in BAUD_RATES:
            raise ValueError(f"baudrate {self.baudrate} is not one of {', '.join(map(str, BAUD_RATES))}")
        return self

    def serial_line(self) -> tuple[str, str]:
        echo = ", local echo" if self.local_echo else ""
        return self.port, f"Modbus RTU {self.endpoint_text().removeprefix(self.port + ' ')}{echo}"

    @property
    def char_time_s(self) -> float:
        bits = 1 + self.bytesize + (0 if self.parity == "none" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def inter_frame_s(self) -> float:
        if self.inter_frame_ms is not None:
            return self.inter_frame_ms / 1000
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time_s

    @property
    def line_settings(self) -> tuple[int, str, int, int, bool]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize, self.local_echo)


__all__ = [
    "ADDRESS_SPACE",
    "BIT_TABLES",
    "REGISTER_TABLES",
    "TYPE_REGISTERS",
    "DataType",
    "ModbusDeviceConfig",
    "ModbusRtuConfig",
    "ModbusTag",
    "ModbusTcpConfig",
    "Order",
    "Table",
]
