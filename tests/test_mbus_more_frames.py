"""Wired frames from other open-source M-Bus decoders' test suites (pyMeterBus, jMBus,
Valley.Net.Protocols.MeterBus, libmbus's error frames) decode, write as JSON and give what those
suites assert; the frames they call malformed are refused with one clear error.

The frames and their expectations are in tests/data/mbus/more/frames.txt (its header says how an
expectation reads; README.md beside it gives the sources).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from water_edge.drivers.mbus.frame import MbusDecodeError, parse_hex
from water_edge.drivers.mbus.telegram import CI_ALARM, CI_APPLICATION_ERROR, CI_NO_HEADER, decode_frame

FRAMES_FILE = Path(__file__).parent / "data" / "mbus" / "more" / "frames.txt"
# (our unit, the unit a source states) -> factor taking our value to the source's
FACTORS = {
    ("min", "s"): 60.0,
    ("h", "s"): 3600.0,
    ("Wh", "kWh"): 1e-3,
    ("m3", "l"): 1e3,
}
HEADERLESS = {CI_APPLICATION_ERROR, CI_ALARM, CI_NO_HEADER}
# Frames whose source's expectation we do not meet yet, each with why (see README.md here).
PENDING: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class MoreFrame:
    name: str
    source: str
    expect: str
    hex: str

    def expectations(self) -> dict[str, str]:
        if not self.expect or self.expect == "broken":
            return {}
        return dict(item.split("=", 1) for item in self.expect.split(","))


def load_frames() -> list[MoreFrame]:
    frames = []
    for line in FRAMES_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, source, expect, hex_text = line.split(";", 3)
            frames.append(MoreFrame(name, source, expect, hex_text))
    return frames


FRAMES = load_frames()


def frame_params() -> list[Any]:
    params = []
    for frame in FRAMES:
        marks = []
        if frame.name in PENDING:
            marks.append(pytest.mark.xfail(raises=MbusDecodeError, strict=True, reason=PENDING[frame.name]))
        params.append(pytest.param(frame, id=frame.name, marks=marks))
    return params


def test_the_file_is_a_second_corpus_of_known_origin() -> None:
    names = [frame.name for frame in FRAMES]
    assert len(names) >= 50
    assert len(set(names)) == len(names)
    assert all(frame.source.count(":") == 1 and "/" in frame.source for frame in FRAMES)
    assert set(PENDING) <= set(names)


def same(ours: Any, expected: str) -> bool:
    """A value of ours equals a source's, written as text: numbers to 1 part in a million (sources
    print six decimals of a real), words exactly."""
    if isinstance(ours, bool) or expected in ("true", "false"):
        return ours is (expected == "true")
    if isinstance(ours, int | float):
        try:
            number = float(expected)
        except ValueError:
            return False
        return math.isclose(ours, number, rel_tol=1e-6, abs_tol=1e-9)
    return str(ours) == expected


def record_value(record: dict[str, Any], unit: str | None) -> Any:
    """The record's value in `unit` (converted from ours), or as it is when no unit is stated."""
    value = record["value"]
    if unit is None:
        assert record["unit"] == "", f"the source states no unit, ours is {record['unit']!r}"
        return value
    if record["unit"] == unit:
        return value
    factor = FACTORS.get((record["unit"], unit))
    assert factor is not None, f"no conversion from our {record['unit']!r} to {unit!r}"
    assert isinstance(value, int | float), f"{value!r} is not a number to convert"
    return value * factor


def check(doc: dict[str, Any], key: str, expected: str) -> None:
    header = doc["header"] or {}
    records = doc["records"]
    if key.startswith("r") and key[1:2].isdigit():
        index, _, unit = key[1:].partition(".")
        assert int(index) < len(records), f"no record {index}: {len(records)} decoded"
        ours = record_value(records[int(index)], unit or None)
    elif key == "records":
        ours = len(records)
    elif key == "record_errors":
        ours = sum(1 for record in records if record.get("error"))
    elif key == "id":
        assert header.get("id") is not None, "no identification decoded"
        assert header["id"].lstrip("0") == expected.lstrip("0"), f"id {header['id']}, source {expected}"
        return
    elif key in ("manufacturer", "version", "access_number"):
        ours = header.get(key)
    elif key in ("address", "more_follows", "application_error"):
        ours = doc.get(key)
    elif key == "manufacturer_data":
        ours = doc.get("manufacturer_data", "")
    else:
        raise AssertionError(f"unknown expectation key {key!r}")
    assert same(ours, expected), f"{key}: ours {ours!r}, the source's {expected!r}"


@pytest.mark.parametrize("frame", frame_params())
def test_frame_decodes_as_its_source_says(frame: MoreFrame) -> None:
    raw = parse_hex(frame.hex)
    if frame.expect == "broken":
        with pytest.raises(MbusDecodeError) as refused:
            decode_frame(raw)
        assert str(refused.value)  # one error that says what is wrong
        return
    telegram = decode_frame(raw)
    assert telegram.header is not None or telegram.ci in HEADERLESS
    doc = orjson.loads(orjson.dumps(telegram.to_dict()))
    for key, expected in frame.expectations().items():
        check(doc, key, expected)


@pytest.mark.parametrize(
    ("name", "index", "quantity", "unit"),
    [
        ("pymeterbus_weptech_wep_indoor", 4, "relative_humidity", "%"),  # FB 1A (EN 13757-3 table 14)
        ("pymeterbus_weptech_wep_indoor", 5, "error_flags", ""),  # FD 17 + VIFE 1D (EN 13757-3:2018)
        ("valley_piigab_900s_2", 5, "error_flags", ""),
        ("jmbus_kamstrup_electricity", 2, "reactive_energy", "varh"),  # FB 02 (EN 13757-3 table 14)
        ("jmbus_kamstrup_electricity", 3, "reactive_energy", "varh"),
    ],
)
def test_standard_codes_these_frames_use_are_known(name: str, index: int, quantity: str, unit: str) -> None:
    """Codes of the standard's tables that only these frames use: each record is placed, not kept
    as an unknown one (what it means is the standard's, the sources assert none of it)."""
    frame = next(frame for frame in FRAMES if frame.name == name)
    record = decode_frame(parse_hex(frame.hex)).records[index]
    assert (record.quantity, record.unit, record.error) == (quantity, unit, None)
