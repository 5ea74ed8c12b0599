"""Register decoding: every type, byte/word order, scale/offset, bits, strings, and robustness."""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from water_edge.drivers.modbus.codec import (
    NOT_A_NUMBER,
    SHORT_RESPONSE,
    Bad,
    BlockLayout,
    compile_tag,
    decode_bits,
    decode_registers,
)
from water_edge.drivers.modbus.config import ModbusTag


def tag(**kw: object) -> ModbusTag:
    return ModbusTag.model_validate({"name": "t", "address": 0, **kw})


def decode_one(t: ModbusTag, registers: list[int], offset: int = 0) -> object:
    layout = BlockLayout.build(len(registers), [(offset, compile_tag(t))])
    return decode_registers(layout, registers)[0]


# 123.456 as float32 is 0x42F6E979: the four orders of the same value (Modbus folklore names).
FLOAT_ORDERS = [
    ("big", "big", [0x42F6, 0xE979]),  # ABCD
    ("big", "little", [0xE979, 0x42F6]),  # CDAB
    ("little", "big", [0xF642, 0x79E9]),  # BADC
    ("little", "little", [0x79E9, 0xF642]),  # DCBA
]


@pytest.mark.parametrize(("byte_order", "word_order", "registers"), FLOAT_ORDERS)
def test_float32_in_every_order(byte_order: str, word_order: str, registers: list[int]) -> None:
    t = tag(type="float32", byte_order=byte_order, word_order=word_order)
    assert decode_one(t, registers) == pytest.approx(123.456, rel=1e-6)


def wire(value: int | float, code: str, byte_order: str, word_order: str) -> list[int]:
    """Registers carrying `value`, built independently of the codec from the documented rules."""
    raw = struct.pack(">" + code, value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


INT_CASES = [
    ("int16", "h", -12345),
    ("uint16", "H", 54321),
    ("int32", "i", -123456789),
    ("uint32", "I", 3_000_000_000),
    ("int64", "q", -(2**62) + 17),
    ("uint64", "Q", 2**64 - 3),
    ("float64", "d", -98765.4321),
]


@pytest.mark.parametrize(("type_", "code", "value"), INT_CASES)
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_every_type_and_order(type_: str, code: str, value: float, byte_order: str, word_order: str) -> None:
    t = tag(type=type_, byte_order=byte_order, word_order=word_order)
    decoded = decode_one(t, wire(value, code, byte_order, word_order))
    assert decoded == value
    assert type(decoded) is type(value)  # ints stay ints without scale/offset


def test_scale_and_offset() -> None:
    t = tag(type="int16", scale=0.1, offset=-40.0)
    assert decode_one(t, [wire(655, "h", "big", "big")[0]]) == pytest.approx(25.5)
    f = tag(type="float32", scale=2.0, offset=1.0)
    assert decode_one(f, wire(1.5, "f", "big", "big")) == pytest.approx(4.0)


@given(
    raw=st.integers(-32768, 32767),
    scale=st.sampled_from([0.1, 0.01, 0.001, 0.25, 0.5, 1.5, 10.0, 0.0001]),
    offset=st.sampled_from([0.0, -40.0, 273.15, -0.5, 0.1]),
    faults=st.booleans(),
)
def test_a_scaled_integer_is_the_decimal_its_scale_and_offset_make(
    raw: int, scale: float, offset: float, faults: bool
) -> None:
    # raw 219 with scale 0.1 arrived as 21.900000000000002 (the binary product), in the JSON and in
    # BI tools. An integer times a decimal of d places, plus one of d places, has d places: the
    # value is the float nearest that decimal, whose shortest repr is it, fault check or not.
    t = tag(type="int16", scale=scale, offset=offset, fault_values=[32767] if faults and raw != 32767 else [])
    got = decode_one(t, [raw & 0xFFFF])
    exact = Decimal(raw) * Decimal(repr(scale)) + Decimal(repr(offset))
    assert got == float(exact)
    assert type(got) is float
    assert Decimal(repr(got)) == exact


def test_219_times_0_1_is_21_9_and_a_scale_no_person_wrote_is_applied_as_it_is() -> None:
    assert repr(decode_one(tag(type="int16", scale=0.1), [219])) == "21.9"
    assert repr(decode_one(tag(type="uint32", scale=0.001, offset=-40.0), [0x0001, 0x0000])) == "25.536"
    assert decode_one(tag(type="int16", scale=1 / 60), [60]) == 60 * (1 / 60)
    assert decode_one(tag(type="float32", scale=0.1), wire(219.0, "f", "big", "big")) == 219.0 * 0.1


def test_an_offset_alone_is_applied_with_or_without_fault_values() -> None:
    """A transmitter in kelvin read as °C (`offset = -273.15`, scale left at 1): every path that
    decodes a value applies it, the fault-value check included."""
    kelvin = wire(300.0, "f", "big", "big")
    assert decode_one(tag(type="float32", offset=-273.15), kelvin) == pytest.approx(26.85)
    checked = tag(type="float32", offset=-273.15, fault_values=[-1.0])
    assert decode_one(checked, kelvin) == pytest.approx(26.85)
    assert decode_one(checked, wire(-1.0, "f", "big", "big")) == Bad("device reports fault value -1")
    assert decode_one(tag(type="int16", offset=-40.0, fault_values=[32767]), [65]) == pytest.approx(25.0)
    assert decode_one(tag(type="int16", scale=0.5, offset=-40.0, fault_values=[32767]), [130]) == 25.0


def test_tag_at_an_offset_inside_the_block() -> None:
    t = tag(type="uint32")
    regs = [0xFFFF, 0xFFFF, *wire(70000, "I", "big", "big"), 0]
    assert decode_one(t, regs, offset=2) == 70000


@pytest.mark.parametrize("bit", range(16))
def test_bit_in_register(bit: int) -> None:
    t = tag(type="bit", bit=bit)
    assert decode_one(t, [1 << bit]) is True
    assert decode_one(t, [0xFFFF ^ (1 << bit)]) is False


def test_bit_honours_byte_order() -> None:
    t = tag(type="bit", bit=0, byte_order="little")
    assert decode_one(t, [0x0100]) is True  # low byte first on the wire


def test_string_strips_nuls_and_trailing_spaces() -> None:
    t = tag(type="string", length=4)
    assert decode_one(t, list(struct.unpack(">4H", b"PS-1  \x00\x00"))) == "PS-1"
    assert decode_one(t, list(struct.unpack(">4H", b"AB\x00CDEFG"))) == "AB"
    # its registers and no more: the next tag's registers in the same read are not part of it
    assert decode_one(tag(type="string", length=2), list(struct.unpack(">3H", b"PS-1XY"))) == "PS-1"


def test_string_little_byte_order() -> None:
    t = tag(type="string", length=2, byte_order="little")
    assert decode_one(t, list(struct.unpack(">2H", b"SPTA"))) == "PSAT"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_not_a_number_is_a_bad_reading(value: float) -> None:
    assert decode_one(tag(type="float32"), wire(value, "f", "big", "big")) == NOT_A_NUMBER
    assert decode_one(tag(type="float64"), wire(value, "d", "big", "big")) == NOT_A_NUMBER


def test_scaling_into_infinity_is_bad() -> None:
    t = tag(type="float32", scale=1e300)
    assert decode_one(t, wire(3e38, "f", "big", "big")) == NOT_A_NUMBER


def test_short_response_is_bad_for_every_tag() -> None:
    layout = BlockLayout.build(
        4, [(0, compile_tag(tag(type="float32"))), (2, compile_tag(tag(type="float32")))]
    )
    assert decode_registers(layout, [1, 2, 3]) == [SHORT_RESPONSE, SHORT_RESPONSE]


def test_bits() -> None:
    assert decode_bits([0, 2, 9], [True, False, True, False, False, False, False, False]) == [
        True, True, SHORT_RESPONSE,
    ]  # fmt: skip


TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@st.composite
def layouts(draw: st.DrawFn) -> BlockLayout:
    fields = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from([*TYPES, "bit", "string"]))
        extra: dict[str, object] = {}
        if kind == "bit":
            extra["bit"] = draw(st.integers(0, 15))
        if kind == "string":
            extra["length"] = draw(st.integers(1, 8))
        if kind not in ("bit", "string"):
            extra["scale"] = draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
        t = tag(
            type=kind,
            byte_order=draw(st.sampled_from(["big", "little"])),
            word_order=draw(st.sampled_from(["big", "little"])),
            **extra,
        )
        fields.append((draw(st.integers(0, 10)), compile_tag(t)))
    count = max(off + 8 for off, _ in fields)
    return BlockLayout.build(count, fields)


@given(layouts(), st.lists(st.integers(-(2**17), 2**17), max_size=40))
def test_arbitrary_registers_never_crash(layout: BlockLayout, registers: list[int]) -> None:
    values = decode_registers(layout, registers)
    assert len(values) == len(layout.fields)
    for value in values:
        assert isinstance(value, Bad | int | float | str | bool)
        if isinstance(value, float):
            assert math.isfinite(value)


@given(layouts(), st.data())
def test_valid_registers_always_decode(layout: BlockLayout, data: st.DataObject) -> None:
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=layout.count, max_size=layout.count))
    for value in decode_registers(layout, registers):
        assert value is not SHORT_RESPONSE
        assert not isinstance(value, Bad) or value == NOT_A_NUMBER


@given(layouts(), st.data())
def test_values_from_the_wire_bytes_are_the_values_from_the_registers(
    layout: BlockLayout, data: st.DataObject
) -> None:
    # What the driver decodes from an answer's bytes as received (responses.py keeps them) must be
    # exactly what it decodes from the register list, for every type, order and answer length.
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=layout.count + 4))
    wire = struct.pack(f">{len(registers)}H", *registers)
    # (No NaN can come out to compare: a non-finite value is the `NOT_A_NUMBER` bad reading.)
    assert decode_registers(layout, registers, wire) == decode_registers(layout, registers)


def test_a_fault_value_the_device_sends_is_a_bad_reading_before_scaling() -> None:
    """A Siemens analog input reads 32767 ("overflow") for a broken 4-20 mA loop; scaled by 0.1 it
    was stored as a good 3276.7 bar."""
    pressure = tag(type="int16", scale=0.1, fault_values=[32767, -32768])
    assert decode_one(pressure, [32767]) == Bad("device reports fault value 32767")
    assert decode_one(pressure, [0x8000]) == Bad("device reports fault value -32768")
    assert decode_one(pressure, [452]) == pytest.approx(45.2)
    assert decode_one(tag(type="int16", scale=0.1), [32767]) == pytest.approx(3276.7)  # without: kept
    sentinel = tag(type="float32", fault_values=[-9999.0])
    assert decode_one(sentinel, list(struct.unpack(">2H", struct.pack(">f", -9999.0)))) == Bad(
        "device reports fault value -9999"
    )
    assert decode_one(tag(type="uint64", fault_values=[2**64 - 1]), [0xFFFF] * 4) == Bad(
        f"device reports fault value {2**64 - 1}"
    )


@pytest.mark.parametrize("sentinel", [-999.9, 3.0e38, 0.1])
def test_a_float32_fault_value_matches_the_float32_the_device_sends(sentinel: float) -> None:
    """A PLC programmed with -999.9 sends the float32 nearest it, -999.9000244140625."""
    on_the_wire = list(struct.unpack(">2H", struct.pack(">f", sentinel)))
    assert decode_one(tag(type="float32", fault_values=[sentinel]), on_the_wire) == Bad(
        f"device reports fault value {sentinel:g}"
    )
    # A float64 tag holds -999.9 exactly: its neighbour is a measurement, not the sentinel.
    near = list(struct.unpack(">4H", struct.pack(">d", struct.unpack(">f", struct.pack(">f", sentinel))[0])))
    assert decode_one(tag(type="float64", fault_values=[sentinel]), near) == pytest.approx(sentinel, rel=1e-7)


@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        (
            {"type": "uint16", "fault_values": [-32768]},
            "fault value -32768 cannot come from uint16 registers",
        ),
        ({"type": "int16", "fault_values": [1.5]}, "fault value 1.5 cannot come from int16 registers"),
        ({"type": "string", "length": 2, "fault_values": [0]}, "fault_values only apply to numeric types"),
        (
            {"type": "float32", "fault_values": [1e39]},
            "fault value 1e\\+39 cannot come from float32 registers",
        ),
    ],
)
def test_a_fault_value_that_cannot_occur_is_a_config_error(kw: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        tag(**kw)


def test_an_integer_scaled_past_a_float_is_bad_not_infinite() -> None:
    # Found by fuzzing the RTU framer and codec: uint64 raw 2**64 - 1 with scale 1e300 was a good
    # reading of `inf`, which no historian takes; float registers were already checked.
    t = tag(type="uint64", scale=1e300)
    assert decode_one(t, wire(2**64 - 1, "Q", "big", "big")) == NOT_A_NUMBER
    assert decode_one(t, wire(2, "Q", "big", "big")) == 2e300
