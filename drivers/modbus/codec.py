"""Turns Modbus registers and bits into tag values; pure Python, no pymodbus, built for speed.

Each tag is compiled once (`compile_tag`) into a `FieldCodec` holding a precompiled
`struct.Struct`; a request's registers are packed once into bytes and every tag is unpacked from
them at its offset. Byte and word order reduce to two cases, with `b0 b1 b2 b3` the bytes on the
wire (register 0 = b0b1):

    byte_order  word_order  bytes read         done as
    big         big         b0 b1 b2 b3        wire bytes, ">"
    little      little      b3 b2 b1 b0        wire bytes, "<"
    little      big         b1 b0 b3 b2        bytes swapped within registers, ">"
    big         little      b2 b3 b0 b1        bytes swapped within registers, "<"

so a tag reads either the wire bytes or the swapped copy (made only when a request needs it).
A value that cannot be produced becomes `Bad(reason)`, never an exception.

An integer register with a scale or offset is exact to the decimals they carry
(`decimal_scaling`, worked out once per tag): raw 219 with `scale = 0.1` is 21.9, not the
binary product 21.900000000000002, which BI tools show as it is. An integer times a decimal of
d places, plus a decimal of d places, is an integer count of 10^-d: it is computed so, in
integers, and divided by 10^d once, which gives the float nearest the exact value (faster than
the float product, where `round()` after it would have tripled the cost). Float registers are
not rounded: their value is already inexact (a float32 of 21.9 is 21.899999618530273) and the
float32 path keeps its digits for `core.units` to show.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from water_edge.core.reading import Value
from water_edge.drivers.modbus.config import ModbusTag, as_float32


@dataclass(frozen=True, slots=True)
class Bad:
    """A value that could not be decoded, with the reason a bad reading carries."""

    reason: str


NOT_A_NUMBER: Final = Bad("not a number")
SHORT_RESPONSE: Final = Bad("short response")

_STRUCT_CODES: Final[dict[str, str]] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
    "bit": "H",
}

Reader = Callable[[bytes, int], Value | Bad]
# More decimals than this in a scale or offset is no decimal a person wrote (1/60 as a float):
# such a tag is scaled in floats, as the product comes out.
MAX_DECIMALS: Final = 12
MAX_FACTOR: Final = 1e15


def decimal_scaling(scale: float, offset: float) -> tuple[int, int, int] | None:
    """(s, o, p), integers with `raw * scale + offset == (raw * s + o) / p` exactly for the scale
    and offset as written (their shortest repr); p is 10 to the decimals of the one with more.
    None when that is more than `MAX_DECIMALS`, or either is so large (or not finite) that a
    64-bit raw value could scale past a float."""
    if not (abs(scale) < MAX_FACTOR and abs(offset) < MAX_FACTOR):
        return None
    exact = [Decimal(repr(x)).normalize() for x in (scale, offset)]
    decimals = max(max(0, -int(d.as_tuple().exponent)) for d in exact)
    if decimals > MAX_DECIMALS:
        return None
    p = 10**decimals
    s, o = (int(d * p) for d in exact)
    return s, o, p


@dataclass(frozen=True, slots=True)
class FieldCodec:
    """How one register tag is read: from which copy of the block, and with which function."""

    swapped: bool
    read: Reader  # (block bytes, byte offset) -> value


def compile_tag(tag: ModbusTag) -> FieldCodec:
    """Precompile the decoder of a register tag (holding/input); bool tags need none."""
    swapped = tag.byte_order != tag.word_order
    endian = ">" if tag.word_order == "big" else "<"
    if tag.type == "string":
        return FieldCodec(tag.byte_order == "little", _string_reader(tag.width * 2))
    if tag.type == "bool":
        raise ValueError(f"tag {tag.name!r}: bool tags are read from coils/discrete inputs")
    fmt = struct.Struct(endian + _STRUCT_CODES[tag.type])
    if tag.type == "bit":
        return FieldCodec(swapped, _bit_reader(fmt, tag.bit or 0))
    reader = _float_reader if tag.type in ("float32", "float64") else _int_reader
    if tag.fault_values:
        # A float32 device sends the float32 nearest the sentinel its programmer wrote (-999.9
        # arrives as -999.9000244140625): compared as float32, as the device holds it.
        faults = [as_float32(v) for v in tag.fault_values] if tag.type == "float32" else tag.fault_values
        exact = decimal_scaling(tag.scale, tag.offset) if reader is _int_reader else None
        return FieldCodec(
            swapped, _fault_checked(reader(fmt, 1.0, 0.0), faults, tag.scale, tag.offset, exact)
        )
    return FieldCodec(swapped, reader(fmt, tag.scale, tag.offset))


def _fault_checked(
    raw: Reader,
    faults: Sequence[int | float],
    scale: float,
    offset: float,
    exact: tuple[int, int, int] | None,
) -> Reader:
    """`raw` (unscaled), bad for the device's fault values, else scaled (for an integer register
    with `exact`, `decimal_scaling`'s integers, as they say)."""
    codes = frozenset(faults)
    plain = scale == 1.0 and offset == 0.0

    def read_checked(buf: bytes, at: int) -> Value | Bad:
        value = raw(buf, at)
        if type(value) is Bad:
            return value
        if value in codes:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            return Bad(f"device reports fault value {shown}")
        if plain:
            return value
        if exact is not None:
            return (value * exact[0] + exact[1]) / exact[2]  # type: ignore[operator]
        scaled: float = value * scale + offset  # type: ignore[operator]
        return scaled if math.isfinite(scaled) else NOT_A_NUMBER

    return read_checked


def _int_reader(fmt: struct.Struct, scale: float, offset: float) -> Reader:
    unpack = fmt.unpack_from
    if scale == 1.0 and offset == 0.0:

        def read_int(buf: bytes, at: int) -> Value | Bad:
            return unpack(buf, at)[0]  # type: ignore[no-any-return]

        return read_int
    exact = decimal_scaling(scale, offset)
    if exact is None:

        def read_scaled(buf: bytes, at: int) -> Value | Bad:
            # A scale too large for a decimal (1e300) can take a 64-bit raw value past a float.
            value: float = unpack(buf, at)[0] * scale + offset
            return value if math.isfinite(value) else NOT_A_NUMBER

        return read_scaled
    s, o, p = exact

    def read_exact(buf: bytes, at: int) -> Value | Bad:
        return (unpack(buf, at)[0] * s + o) / p  # type: ignore[no-any-return]

    return read_exact


def _float_reader(fmt: struct.Struct, scale: float, offset: float) -> Reader:
    unpack = fmt.unpack_from
    isfinite = math.isfinite
    plain = scale == 1.0 and offset == 0.0

    def read_float(buf: bytes, at: int) -> Value | Bad:
        value: float = unpack(buf, at)[0]
        if not plain:
            value = value * scale + offset
        return value if isfinite(value) else NOT_A_NUMBER

    return read_float


def _bit_reader(fmt: struct.Struct, bit: int) -> Reader:
    unpack = fmt.unpack_from
    mask = 1 << bit

    def read_bit(buf: bytes, at: int) -> Value | Bad:
        return bool(unpack(buf, at)[0] & mask)

    return read_bit


def _string_reader(n_bytes: int) -> Reader:
    def read_string(buf: bytes, at: int) -> Value | Bad:
        # C-string semantics: text ends at the first NUL; trailing blanks are padding.
        chunk = buf[at : at + n_bytes].split(b"\x00", 1)[0].rstrip(b" ")
        return chunk.decode("utf-8", "replace")

    return read_string


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """A request's registers as the codec needs them: count, and which tags read where."""

    count: int
    fields: tuple[tuple[int, FieldCodec], ...]  # (register offset, codec)
    needs_swapped: bool
    pack_wire: struct.Struct
    pack_swapped: struct.Struct

    @classmethod
    def build(cls, count: int, fields: Sequence[tuple[int, FieldCodec]]) -> BlockLayout:
        return cls(
            count,
            tuple(fields),
            any(codec.swapped for _, codec in fields),
            struct.Struct(f">{count}H"),
            struct.Struct(f"<{count}H"),
        )


def decode_registers(
    layout: BlockLayout, registers: Sequence[int], wire: bytes | None = None
) -> list[Value | Bad]:
    """One value (or `Bad`) per field of `layout`, in field order. `wire`, when the answer kept
    them, is the registers' bytes as received (big-endian), so they need not be packed again."""
    if len(registers) < layout.count:
        return [SHORT_RESPONSE] * len(layout.fields)
    try:
        regs = registers[: layout.count] if len(registers) > layout.count else registers
        if wire is None or len(wire) != 2 * len(registers):
            wire = layout.pack_wire.pack(*regs)
        elif len(registers) > layout.count:
            wire = wire[: 2 * layout.count]
        swapped = layout.pack_swapped.pack(*regs) if layout.needs_swapped else wire
    except struct.error:
        # Only a value outside 0..65535 gets here; a real response cannot carry one.
        return [Bad("malformed response")] * len(layout.fields)
    return [codec.read(swapped if codec.swapped else wire, offset * 2) for offset, codec in layout.fields]


def decode_bits(offsets: Sequence[int], bits: Sequence[bool]) -> list[Value | Bad]:
    """The bool at each offset of a coil/discrete-input response."""
    n = len(bits)
    return [bool(bits[i]) if i < n else SHORT_RESPONSE for i in offsets]
