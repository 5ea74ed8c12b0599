"""Telegrams captured from real meters decode to what libmbus reports.

The expected values are libmbus's own normalised decodes of the same frames (see
tests/data/mbus/libmbus/README.md, and the `.norm.xml` files in tests/data/mbus/corpus/), an
implementation independent of ours. Names and units are mapped; every numeric value is compared
after converting our unit to libmbus's.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from water_edge.drivers.mbus.frame import parse_hex
from water_edge.drivers.mbus.telegram import decode_frame

DATA = Path(__file__).parent / "data" / "mbus" / "libmbus"
FRAMES = sorted(p.stem for p in DATA.glob("*.hex"))
CORPUS = Path(__file__).parent / "data" / "mbus" / "corpus"
NORM_XML = sorted(p.name.removesuffix(".norm.xml") for p in CORPUS.glob("*.norm.xml"))

FUNCTIONS = {
    "Instantaneous value": "instantaneous",
    "Maximum value": "maximum",
    "Minimum value": "minimum",
    "Value during error state": "error",
}
QUANTITIES = {
    "Volume": "volume",
    "Energy": "energy",
    "Volume flow": "volume_flow",
    "Power": "power",
    "Flow temperature": "flow_temperature",
    "Return temperature": "return_temperature",
    "Temperature difference": "temperature_difference",
    "On time": "on_time",
    "Fabrication No": "fabrication_no",
    "Error flags": "error_flags",
    "Time point (date & time)": "date_time",
    "Time point (date)": "date",
    "Customer location": "customer_location",
    "Digital Input": "digital_input",
    "Averaging Duration": "averaging_duration",
    "Software version": "software_version",
    "External temperature": "external_temperature",
}
# (our unit, libmbus unit) -> factor taking our value to libmbus's
FACTORS = {
    ("m3", "m^3"): 1.0,
    ("m3/h", "m^3/h"): 1.0,
    ("Wh", "Wh"): 1.0,
    ("kWh", "Wh"): 1e3,
    ("MWh", "Wh"): 1e6,
    ("W", "W"): 1.0,
    ("kW", "W"): 1e3,
    ("degC", "°C"): 1.0,
    ("K", "K"): 1.0,
    ("s", "s"): 1.0,
    ("min", "s"): 60.0,
    ("h", "s"): 3600.0,
    ("d", "s"): 86400.0,
    ("", ""): 1.0,
    ("Wh", "kWh"): 1e-3,
    ("m3", "l"): 1e3,
}
MEDIA = {"Water": "water", "Warm water (30-90°C)": "warm water", "Heat: Outlet": "heat (outlet)"}


def decoded(name: str) -> dict[str, Any]:
    return decode_frame(parse_hex((DATA / f"{name}.hex").read_text())).to_dict()


def expected(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DATA / f"{name}.expected.json").read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize("name", FRAMES)
def test_header_matches_libmbus(name: str) -> None:
    ours, theirs = decoded(name)["header"], expected(name)
    assert int(ours["id"]) == int(theirs["id"])
    assert ours["manufacturer"] == theirs["manufacturer"]
    assert ours["version"] == theirs["version"]
    assert ours["medium"] == MEDIA[theirs["medium"]]
    assert ours["access_number"] == theirs["access_number"]
    assert ours["status"] == int(theirs.get("status", "00"), 16)


@pytest.mark.parametrize("name", FRAMES)
def test_records_match_libmbus(name: str) -> None:
    ours = decoded(name)
    theirs = [row for row in expected(name)["records"] if row[0] != "Manufacturer specific"]
    records = ours["records"]
    assert len(records) == len(theirs)
    for index, (record, row) in enumerate(zip(records, theirs, strict=True)):
        function, storage, tariff, device, unit, quantity, value = row
        where = f"{name} record {index} ({quantity})"
        assert record["function"] == FUNCTIONS[function], where
        assert record["storage"] == storage, where
        assert record["tariff"] == (tariff or 0), where
        assert record["subunit"] == (device or 0), where
        if quantity in QUANTITIES:
            assert record["quantity"] == QUANTITIES[quantity], where
        else:  # a plain-text VIF: libmbus shows the meter's own text as the quantity
            assert (record["quantity"], record["unit"]) == ("plain_text_unit", quantity), where
            unit = record["unit"]
        if isinstance(value, str):
            # dates: libmbus appends seconds and Z; the meter sends minutes
            assert len(str(record["value"])) >= 10, where
            assert value.startswith(str(record["value"]).removesuffix(":00")), where
        else:
            factor = FACTORS.get((record["unit"], unit), 1.0 if unit == record["unit"] else None)
            assert factor is not None, f"{where}: unit {record['unit']!r} vs libmbus {unit!r}"
            assert float(record["value"]) * factor == pytest.approx(value, rel=1e-9, abs=1e-9), where


@pytest.mark.parametrize("name", FRAMES)
def test_manufacturer_data_and_more_follows_are_kept(name: str) -> None:
    ours, theirs = decoded(name), expected(name)
    raw = [row[-1] for row in theirs["records"] if row[0] == "Manufacturer specific"]
    if raw:
        assert (ours["manufacturer_data"] or "").upper() == raw[0].replace(" ", "")
    assert bool(ours["more_follows"]) == bool(theirs.get("more_follows", False))


def norm_xml(name: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """libmbus's `.norm.xml`: the slave information and the data records (an empty element for a
    record libmbus could not place)."""
    root = ET.fromstring((CORPUS / f"{name}.norm.xml").read_bytes())
    slave = {child.tag: (child.text or "") for child in root.find("SlaveInformation") or []}
    rows = [{child.tag: (child.text or "") for child in rec} for rec in root.findall("DataRecord")]
    return slave, rows


@pytest.mark.parametrize("name", NORM_XML)
def test_corpus_frames_match_libmbus_norm_xml(name: str) -> None:
    ours = decode_frame(parse_hex((CORPUS / f"{name}.hex").read_text())).to_dict()
    slave, rows = norm_xml(name)
    assert int(ours["header"]["id"]) == int(slave["Id"])
    assert ours["header"]["access_number"] == int(slave["AccessNumber"])
    assert ours["header"]["status"] == int(slave["Status"], 16)
    rows = [r for r in rows if r.get("Function") not in ("More records follow", "Manufacturer specific")]
    assert len(ours["records"]) == len(rows)
    for index, (record, row) in enumerate(zip(ours["records"], rows, strict=True)):
        where = f"{name} record {index}"
        if not row:  # libmbus skipped it: ours is kept as an unknown record with a reason
            assert (record["quantity"], bool(record.get("error"))) == ("unknown", True), where
            continue
        quantity = row.get("Quantity")
        if quantity in QUANTITIES:
            assert record["quantity"] == QUANTITIES[quantity], where
        elif quantity:  # plain-text unit
            assert (record["quantity"], record["unit"]) == ("plain_text_unit", quantity), where
        value, unit = row["Value"], row["Unit"]
        if quantity and quantity.startswith("Time point"):
            assert value.startswith(str(record["value"]).removesuffix(":00")), where
        elif isinstance(record["value"], str):  # binary wider than 64 bits: hex, most significant first
            assert record["value"] == value.replace(" ", ""), where
        else:
            factor = FACTORS.get((record["unit"], unit), 1.0 if unit in ("-", record["unit"]) else None)
            assert factor is not None, f"{where}: unit {record['unit']!r} vs libmbus {unit!r}"
            assert float(record["value"]) * factor == pytest.approx(float(value), rel=1e-6), where
