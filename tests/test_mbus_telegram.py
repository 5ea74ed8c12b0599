"""M-Bus decoding: real meters' telegrams (tests/data/mbus) and hand-built records, value by value."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson
import pytest

from water_edge.drivers.mbus.frame import MbusDecodeError, MbusFrameError, parse_frame, parse_hex
from water_edge.drivers.mbus.telegram import (
    Record,
    Telegram,
    decode_frame,
    decode_user_data,
    manufacturer_code,
)

DATA = Path(__file__).parent / "data" / "mbus"


def vector(name: str) -> Telegram:
    return decode_frame(parse_hex((DATA / name).read_text()))


def find(t: Telegram, quantity: str, *, storage: int = 0, function: str = "instantaneous") -> Record:
    hits = [r for r in t.records if (r.quantity, r.storage, r.function) == (quantity, storage, function)]
    assert len(hits) == 1, (quantity, storage, function, [r.to_dict() for r in t.records])
    return hits[0]


def frame(user_data: str, address: int = 1) -> bytes:
    """A long frame around user data, built the simple way (length and checksum by hand)."""
    body = bytes((0x08, address)) + bytes.fromhex(user_data)
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) % 256, 0x16))


HEADER = "72 78563412 2440 01 07 55 00 0000"  # ID 12345678, PAD, version 1, water, access 0x55


def records(data: str) -> list[Record]:
    return decode_frame(frame(HEADER + data)).records


def test_documentation_example_decodes_to_its_published_values() -> None:
    t = vector("mbus_doc_example_pad_water.hex")
    assert t.header is not None
    assert (t.header.id, t.header.manufacturer, t.header.version) == ("12345678", "PAD", 1)
    assert t.header.medium_name == "water"
    assert (t.header.access_number, t.header.status, t.address) == (0x55, 0, 2)
    volume = find(t, "volume")
    assert volume.value == pytest.approx(12.565)
    assert volume.unit == "m3"
    flow = find(t, "volume_flow", storage=5, function="maximum")
    assert flow.value == pytest.approx(0.113)
    assert flow.unit == "m3/h"
    energy = find(t, "energy")
    assert energy.value == 218370
    assert energy.unit == "Wh"
    assert (energy.tariff, energy.subunit) == (2, 1)
    assert not t.more_follows


def test_elvaco_room_sensor_plain_text_unit_and_more_follows() -> None:
    t = vector("elvaco_cma10_room_sensor.hex")
    assert t.header is not None
    assert (t.header.manufacturer, t.header.id, t.header.access_number) == ("ELV", "00000001", 0x18)
    humidity = find(t, "plain_text_unit")
    assert humidity.unit == "%RH"
    assert humidity.value == pytest.approx(33.96)  # 0x0D44 * 1e-2 (VIFE 0x74)
    assert find(t, "plain_text_unit", function="maximum").value == pytest.approx(44.51)
    temp = find(t, "external_temperature")
    assert temp.value == pytest.approx(24.84)
    assert temp.unit == "degC"
    assert find(t, "external_temperature", function="minimum").value == pytest.approx(24.38)
    assert find(t, "external_temperature", function="error", storage=2).dif.hex() == "b201"
    assert find(t, "fabrication_no").value == 56
    assert find(t, "digital_input").value == 0
    assert t.more_follows  # DIF 1F: the meter has another telegram


def test_itron_water_meter_volume_date_time_versions_and_manufacturer_data() -> None:
    t = vector("itron_acw_cold_water.hex")
    assert t.header is not None
    assert (t.header.manufacturer, t.header.id, t.header.version) == ("ACW", "11490378", 0x0E)
    assert t.header.medium_name == "cold water"
    assert find(t, "fabrication_no").value == 11490378
    volume = find(t, "volume")
    assert volume.value == pytest.approx(54.321)
    assert volume.unit == "m3"
    assert find(t, "volume", storage=1).value == 0
    due = find(t, "date", storage=1)
    assert due.value is None
    assert due.error == "invalid date"
    assert find(t, "date_time").value == "2014-03-13T11:11"
    assert (find(t, "operating_time").value, find(t, "operating_time").unit) == (0, "d")
    assert find(t, "firmware_version").value == 2
    assert find(t, "software_version").value == 6
    assert t.manufacturer_data == bytes.fromhex("00017513")


def test_manufacturer_code_packing() -> None:
    assert manufacturer_code(0x2C2D) == "KAM"
    assert manufacturer_code(0x4024) == "PAD"
    assert manufacturer_code(0x1596) == "ELV"


def test_data_field_types() -> None:
    real = struct.pack("<f", 12.5).hex()
    recs = records(
        "01 13 FE"  # int8 -2 l
        " 07 13 0100000000000080"  # int64 most negative
        f" 05 13 {real}"  # real32 12.5 l
        " 09 13 42"  # BCD2 42 l
        " 0E 13 563412000000"  # BCD12 123456 l
        " 0C 13 010000F0"  # BCD8 negative: F in the top nibble
        " 0A 13 1A00"  # BCD with A-F digits: invalid
    )
    values = [r.value for r in recs]
    assert values[0] == pytest.approx(-0.002)
    assert values[1] == pytest.approx(-(2**63) / 1000 + 0.001)
    assert values[2] == pytest.approx(0.0125)
    assert values[3] == pytest.approx(0.042)
    assert values[4] == pytest.approx(123.456)
    assert values[5] == pytest.approx(-0.001)
    assert values[6] is None
    assert recs[6].error is not None
    assert "BCD" in recs[6].error


def test_variable_length_string_bcd_and_binary() -> None:
    recs = records("0D FD 0C 05 31 32 48 46 57  0D 13 C2 3412  0D 13 D1 05  0D 13 E2 3412")
    assert recs[0].quantity == "model_version"
    assert recs[0].value == "WFH21"
    assert recs[1].value == pytest.approx(1.234)
    assert recs[2].value == pytest.approx(-0.005)
    assert recs[3].value == pytest.approx(0x1234 / 1000)


def test_dife_chain_storage_tariff_subunit() -> None:
    # DIF C4: storage bit 1, ext; DIFE 93: storage 3 <<1, tariff 1, ext; DIFE 40: subunit 1 << 1
    (r,) = records("C4 93 40 13 01000000")
    assert r.storage == 1 | (3 << 1)
    assert r.tariff == 1
    assert r.subunit == 2


def test_date_time_types_invalid_bit_and_summer_time() -> None:
    # Type F 2024-06-15 13:45 with SU set; the same with IV set; type G 2023-12-31; type I
    f = bytes((45, 13 | 0x80, 15 | ((24 & 7) << 5), 6 | ((24 & 0x78) << 1))).hex()
    iv = bytes((45 | 0x80, 13, 15 | ((24 & 7) << 5), 6 | ((24 & 0x78) << 1))).hex()
    g = bytes((31 | ((23 & 7) << 5), 12 | ((23 & 0x78) << 1))).hex()
    i = bytes((7, 45, 13, 15 | ((24 & 7) << 5), 6 | ((24 & 0x78) << 1), 0)).hex()
    recs = records(f"04 6D {f} 04 6D {iv} 02 6C {g} 06 6D {i}")
    assert recs[0].value == "2024-06-15T13:45"
    assert "summer time" in recs[0].modifiers
    assert recs[1].value is None
    assert recs[1].error is not None
    assert "invalid" in recs[1].error
    assert recs[2].value == "2023-12-31"
    assert recs[3].value == "2024-06-15T13:45:07"


def test_units_normalised_and_extension_tables() -> None:
    recs = records(
        "02 5A 7B00"  # flow temperature 0.1 degC: 12.3
        " 02 61 3200"  # temperature difference 0.01 K: 0.5
        " 02 69 2C01"  # pressure 0.01 bar: 3.0
        " 02 43 0A00"  # volume flow 1e-4 m3/min = 10 * 6e-3 m3/h
        " 02 2B E803"  # power W: 1000
        " 02 FB 11 0200"  # FB: volume 1e3 m3
        " 02 FD 48 E600"  # FD: volts 1e-1: 23.0 V
        " 02 FD 59 0F00"  # FD: amperes 1e-3: 0.015 A
        " 01 FD 17 05"  # FD: error flags
        " 01 FD 1C 60"  # FD: baud rate code
    )
    got = [(r.quantity, r.unit) for r in recs]
    assert got[:8] == [
        ("flow_temperature", "degC"), ("temperature_difference", "K"), ("pressure", "bar"),
        ("volume_flow", "m3/h"), ("power", "W"), ("volume", "m3"), ("voltage", "V"), ("current", "A"),
    ]  # fmt: skip
    assert [r.value for r in recs[:8]] == pytest.approx([12.3, 0.5, 3.0, 0.06, 1000, 2000, 23.0, 0.015])
    assert (recs[8].quantity, recs[8].value) == ("error_flags", 5)
    assert recs[9].quantity == "baud_rate"


def test_vife_per_time_correction_error_and_unknown() -> None:
    recs = records(
        "02 93 22 0500"  # volume per hour (VIFE 22)
        " 02 93 7A 0500"  # volume + additive correction 1e-1 * unit of VIF
        " 02 93 15 0000"  # record error: no data available
        " 02 93 3D 0100"  # reserved VIFE: kept raw, quantity unknown
        " 02 93 3B 0700"  # accumulation only if positive contributions
    )
    assert (recs[0].quantity, recs[0].unit) == ("volume_per_h", "m3/h")  # a rate, not the register
    assert "per hour" in recs[0].modifiers
    assert recs[1].value == pytest.approx(0.005 + 0.1 * 0.001)
    assert recs[2].error is not None
    assert "no data available" in recs[2].error
    assert recs[3].quantity == "unknown"
    assert recs[3].vif.hex() == "933d"
    assert "accumulation only if positive contributions" in recs[4].modifiers


def test_bit_fields_are_unsigned() -> None:
    """Error flags and digital inputs/outputs are bit fields (type D): the top bit is a flag."""
    recs = records("02 FD 17 0080 01 FD 17 80 04 FD 17 00000080 02 FD 1B 0180 02 FD 1A 00C0")
    assert [r.value for r in recs] == [0x8000, 0x80, 0x80000000, 0x8001, 0xC000]


def test_per_minute_and_per_second_flows_are_the_decimal_they_mean() -> None:
    """12345 x 1e-6 m3/min is 0.7407 m3/h, not 0.7406999999999999."""
    recs = records("04 41 39300000 04 44 39300000 04 49 39300000 04 4C 39300000 04 93 7A D2300000")
    assert [r.value for r in recs] == [0.7407, 740.7, 0.44442, 444.42, 12.4981]


def test_manufacturer_specific_vif_and_filler_kept_raw() -> None:
    recs = records("2F 2F 04 FF 81 02 DEADBEEF 0F 0102")
    assert len(recs) == 1
    assert recs[0].quantity == "manufacturer_specific"
    assert recs[0].value == "DEADBEEF"
    t = decode_frame(frame(HEADER + "0F 0102"))
    assert t.manufacturer_data == b"\x01\x02"
    assert not t.more_follows


def test_short_header_and_application_error() -> None:
    t = decode_user_data(0x7A, bytes.fromhex("11 08 0000 0413 0A000000"))
    assert t.header is not None
    assert t.header.access_number == 0x11
    assert "permanent error" in t.header.status_flags
    assert t.records[0].value == pytest.approx(0.01)
    assert decode_user_data(0x70, b"\x02").application_error == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("68 1F 1E 68 08", "length bytes differ"),
        ("68 05 05 68 08 01 72 00 00 7D 16", "checksum"),
        ("68 05 05 68 08 01 72 00 00", "truncated"),
        ("10 5B 01 5C 15", "stop byte"),
        ("42", "does not start"),
    ],
)
def test_link_layer_faults_are_named(raw: str, message: str) -> None:
    with pytest.raises(MbusFrameError, match=message):
        parse_frame(bytes.fromhex(raw))


def test_short_frame_and_ack() -> None:
    f = parse_frame(bytes.fromhex("10 7B 05 80 16"))
    assert (f.kind, f.address, f.fcb) == ("short", 5, True)
    assert parse_frame(b"\xe5").kind == "ack"


@pytest.mark.parametrize(
    ("user_data", "message"),
    [
        ("72 7856", "truncated header"),
        ("51 00", "not a variable-data response"),
        ("73 78563412 0A 00 E97E 01000000", "fixed data structure is 16 bytes"),
    ],
)
def test_application_layer_faults_are_named(user_data: str, message: str) -> None:
    with pytest.raises(MbusDecodeError, match=message):
        decode_frame(frame(user_data))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("0C 7B 02030000", "VIF 0x7B without its extension byte"),
        ("0C 7D 02030000", "VIF 0x7D without its extension byte"),
        ("8B 60 84" + " 84" * 10 + " 04 371802", "more than 10 VIFEs"),
        ("84" + " 80" * 11 + " 00 13 00000000", "more than 10 DIFEs"),
    ],
)
def test_a_record_that_cannot_be_placed_is_unknown_and_the_rest_decodes(bad: str, reason: str) -> None:
    recs = records(f"04 13 39300000 {bad} 02 5A 7B00")
    assert recs[0].quantity == "volume"
    assert recs[0].value == pytest.approx(12.345)
    assert recs[1].quantity == "unknown"
    assert recs[1].error is not None
    assert reason in recs[1].error
    assert recs[2].quantity == "flow_temperature"
    assert recs[2].value == pytest.approx(12.3)


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        ("04 13 0100", "needs 4 data byte(s), 2 left"),
        ("3F 0102", "reserved special DIF 0x3F"),
        ("0D 13 F7 00", "reserved LVAR 0xF7"),
        ("04", "truncated before its VIF"),
        ("84 80", "truncated in its DIFEs"),
    ],
)
def test_a_record_whose_length_is_unknowable_keeps_the_rest_raw(tail: str, reason: str) -> None:
    recs = records(f"02 5A 7B00 {tail}")
    assert recs[0].quantity == "flow_temperature"
    assert len(recs) == 2
    assert recs[1].quantity == "unknown"
    assert recs[1].data == bytes.fromhex(tail)
    assert recs[1].error is not None
    assert reason in recs[1].error


def test_undefined_configuration_field_is_plain_data_with_a_note() -> None:
    # An old meter's "signature" 0xB627: bits 8-12 are 22, no security mode.
    t = decode_frame(frame("72 78563412 2440 01 07 55 00 27B6 0413 39300000"))
    assert t.records[0].value == pytest.approx(12.345)
    assert any("not a defined security mode" in note for note in t.notes)
    assert "notes" in t.to_dict()


def test_mode5_field_without_room_for_its_blocks_is_plain_data() -> None:
    t = decode_frame(frame("72 78563412 2440 01 07 55 00 0005 0413 39300000"))  # mode 5, 0 blocks
    assert t.records[0].value == pytest.approx(12.345)
    assert any("0 encrypted block" in note for note in t.notes)


def test_mode2_most_significant_byte_first() -> None:
    # CI 76: header and values MSB first; the same meter and values as the LSB-first telegram.
    lsb = decode_frame(frame("72 78563412 2440 01 07 55 00 0000 04 13 39300000 02 5A 7B00"))
    msb = decode_frame(frame("76 12345678 4024 01 07 55 00 0000 04 13 00003039 02 5A 007B"))
    assert msb.header == lsb.header
    assert [(r.quantity, r.value) for r in msb.records] == [(r.quantity, r.value) for r in lsb.records]


def test_fixed_data_structure_bcd_counters() -> None:
    # CI 73 (EN 1434-3): ID 90919293, access 16, BCD counters 6531 kWh and 69 l (medium heat).
    t = decode_frame(frame("73 93929190 10 00 05 69 31650000 69000000"))
    assert t.header is not None
    assert (t.header.id, t.header.access_number, t.header.medium_name) == ("90919293", 16, "heat")
    assert [(r.quantity, r.unit, r.value) for r in t.records] == [
        ("energy", "Wh", 6531000),
        ("volume", "m3", pytest.approx(0.069)),
    ]


def test_binary_wider_than_64_bits_is_hex_most_significant_first() -> None:
    value = bytes(range(1, 17))
    recs = records("0D 13 F0 " + value.hex())  # LVAR F0: 16-byte binary number
    assert recs[0].value == value[::-1].hex().upper()
    assert "value wider than 64 bits, shown as hex" in recs[0].modifiers
    orjson.dumps(decode_frame(frame(HEADER + "0D 13 F0 " + value.hex())).to_dict())


def test_lvar_binary_lengths_follow_the_standard() -> None:
    recs = records("0D 13 F5 " + "01" * 48 + " 0D 13 F6 " + "02" * 64 + " 02 5A 7B00")
    assert [len(r.data) for r in recs] == [48, 64, 2]
    assert recs[2].value == pytest.approx(12.3)


def test_plain_text_unit_before_or_after_its_vifes() -> None:
    after = records("03 FC 20 03 434241 153100")  # EN 13757-3: text after the VIFEs
    before = records("02 FC 03 485225 74 4408")  # Elvaco: text before them
    assert (after[0].unit, after[0].value) == ("ABC", 12565)
    assert before[0].unit == "%RH"
    assert before[0].value == pytest.approx(21.16)


def test_backflow_volume_has_its_direction() -> None:
    recs = records("04 93 3C 39300000 04 93 3B 10270000")
    assert [(r.quantity, r.direction) for r in recs] == [("volume", "backward"), ("volume", "forward")]


def test_two_digit_years_as_libmbus_reads_them() -> None:
    recs = records("04 6D 1009 05C5")  # type F, year 96 -> 1996
    assert recs[0].value == "1996-05-05T09:16"


def test_hex_input_forms() -> None:
    assert parse_hex("68 1f\n1F:68 0x08") == bytes.fromhex("681f1f6808")
    with pytest.raises(MbusDecodeError, match="odd number"):
        parse_hex("681")
    with pytest.raises(MbusDecodeError, match="not a hex digit"):
        parse_hex("68 zz")
