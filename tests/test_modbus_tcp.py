"""The Modbus TCP driver against the real firmware-sim PLC, as a subprocess on a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.support.plant import Plant, running_plant, start_plant
from tests.support.testing import eventually, free_port
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.drivers.registry import load

pytestmark = pytest.mark.slow

STATION_TAGS: list[dict[str, Any]] = [
    {"name": "station_name", "address": 0, "type": "string", "length": 8},
    {"name": "map_version", "address": 8, "type": "uint16"},
    {"name": "pump_count", "address": 9, "type": "uint16"},
    {"name": "ticks", "address": 12, "type": "uint64"},
    {"name": "tank_level", "address": 16, "type": "float64", "unit": "m"},
    {"name": "demand", "address": 20, "type": "float32", "unit": "m3/h"},
    {"name": "net_inflow", "address": 28, "type": "int32", "unit": "L/h"},
    {"name": "demand_cdab", "address": 30, "type": "float32", "word_order": "little"},
    {"name": "demand_badc", "address": 32, "type": "float32", "byte_order": "little"},
    {"name": "demand_dcba", "address": 34, "type": "float32", "byte_order": "little",
     "word_order": "little"},
    {"name": "energy", "address": 36, "type": "int64", "unit": "Wh"},
    {"name": "p1_flow", "address": 100, "type": "float32", "unit": "m3/h"},
    {"name": "p1_suction", "address": 102, "type": "float32", "unit": "bar"},
    {"name": "p1_discharge", "address": 104, "type": "float32", "unit": "bar"},
    {"name": "p1_current", "address": 106, "type": "float32", "unit": "A"},
    {"name": "p1_vib_x", "address": 108, "type": "float32", "unit": "mm/s"},
    {"name": "p1_vib_y", "address": 110, "type": "float32", "unit": "mm/s"},
    {"name": "p1_temp", "address": 112, "type": "float32", "unit": "degC"},
    {"name": "p1_speed", "address": 114, "type": "float32", "unit": "rpm"},
    {"name": "p1_running", "address": 116, "type": "bit", "bit": 0},
    {"name": "p1_fault", "address": 116, "type": "bit", "bit": 1},
    {"name": "p1_current_x10", "address": 117, "type": "int16", "scale": 0.1, "unit": "A"},
    {"name": "p1_run_cmd", "table": "coil", "address": 0, "type": "bool"},
    {"name": "p1_running_di", "table": "discrete", "address": 0, "type": "bool"},
    {"name": "meter_flow", "unit_id": 2, "table": "input", "address": 0, "type": "float32"},
    {"name": "meter_litres", "unit_id": 2, "table": "input", "address": 2, "type": "uint32"},
    {"name": "meter_serial", "unit_id": 2, "table": "input", "address": 10, "type": "string",
     "length": 8},
]  # fmt: skip


def driver_for(plant: Plant, tags: list[dict[str, Any]] = STATION_TAGS, **kw: Any) -> ModbusTcpDriver:
    cfg = {
        "name": "ps",
        "kind": "modbus_tcp",
        "host": plant.host,
        "port": plant.port,
        "timeout_ms": 500,
        "tags": tags,
        **kw,
    }
    return ModbusTcpDriver.from_config(ModbusTcpConfig.model_validate(cfg))


async def read_until_it_fails(driver: ModbusTcpDriver) -> None:
    """Read until a read raises (the drop may land between two polls); re-raise that error."""

    async def failed() -> DriverIOError | None:
        try:
            await driver.read()
        except DriverIOError as exc:
            return exc
        return None

    raise await eventually(failed, 3.0, every_s=0.05, what="a read failing after the drop")


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=7) as p:
        yield p


def test_entry_point_finds_the_driver() -> None:
    assert load("modbus_tcp") is ModbusTcpDriver


async def test_values_in_documented_ranges_and_changing(plant: Plant) -> None:
    driver = driver_for(plant)
    await driver.open()
    try:
        first = by_tag(await driver.read())

        async def moved_on() -> dict[str, Reading] | None:
            again = by_tag(await driver.read())
            ticked = again["ticks"].value != first["ticks"].value
            return again if ticked and again["demand"].value != first["demand"].value else None

        second = await eventually(moved_on, every_s=0.05, what="the model ticking on, demand changing")
    finally:
        await driver.aclose()
    assert all(r.quality == "good" for r in first.values()), [
        r for r in first.values() if r.quality != "good"
    ]
    v = {k: r.value for k, r in second.items()}
    num = cast(dict[str, float], v)  # the numeric tags, compared by range below
    assert v["station_name"] == "PS-NORTH"
    assert v["meter_serial"] == "FM-00042"
    assert (v["map_version"], v["pump_count"]) == (2, 3)
    assert 0.5 <= num["tank_level"] <= 6.0
    assert 30 <= num["demand"] <= 250
    assert v["demand_cdab"] == v["demand_badc"] == v["demand_dcba"] == v["demand"]
    assert v["p1_running"] is True
    assert v["p1_fault"] is False
    assert v["p1_run_cmd"] is True
    assert v["p1_running_di"] is True
    assert 20 <= num["p1_flow"] <= 150
    assert 0.3 <= num["p1_suction"] < num["p1_discharge"] <= 7.0
    assert 5 <= num["p1_current"] <= 50
    assert v["p1_current_x10"] == pytest.approx(v["p1_current"], abs=0.06)
    assert 0 < num["p1_vib_x"] < 10
    assert 0 < num["p1_vib_y"] < 10
    assert 10 <= num["p1_temp"] <= 100
    assert 1500 <= num["p1_speed"] <= 2950
    assert 20 <= num["meter_flow"] <= 3 * 150  # unit 2 answers a separate request, maybe a tick later
    assert isinstance(v["energy"], int)
    assert isinstance(v["net_inflow"], int)
    assert second["p1_flow"].unit == "m3/h"
    assert second["p1_current"].unit == "A"
    assert second["ticks"].value > first["ticks"].value  # type: ignore[operator]
    assert second["demand"].value != first["demand"].value
    assert second["ticks"].ts_ns > first["ticks"].ts_ns
    health = driver.health()
    assert health.requests > 0
    assert health.errors == 0
    assert health.last_ok_ns


async def test_unmapped_address_is_exception_2_and_others_stay_good(plant: Plant) -> None:
    tags = [*STATION_TAGS[:3], {"name": "hole", "address": 60}, {"name": "ghost", "unit_id": 9, "address": 0}]
    driver = driver_for(plant, tags)
    await driver.open()
    try:
        readings = by_tag(await driver.read())
    finally:
        await driver.aclose()
    assert readings["hole"].quality == "bad"
    assert readings["hole"].reason == "modbus exception 2: illegal data address"
    assert readings["ghost"].reason is not None
    assert readings["ghost"].reason.startswith("modbus exception 11")
    assert all(readings[t["name"]].quality == "good" for t in STATION_TAGS[:3])
    assert driver.health().exceptions == 2


async def test_a_scaled_integer_arrives_as_the_decimal_it_is(plant: Plant) -> None:
    # pump_count is 3: with scale 0.1 it was 0.30000000000000004 in the JSON (3 * 0.1 in floats).
    tags = [
        {"name": "pumps_tenths", "address": 9, "type": "uint16", "scale": 0.1},
        {"name": "version_offset", "address": 8, "type": "int16", "scale": 0.1, "offset": 0.1,
         "fault_values": [-1]},
    ]  # fmt: skip
    driver = driver_for(plant, tags)
    await driver.open()
    try:
        readings = by_tag(await driver.read())
    finally:
        await driver.aclose()
    assert repr(readings["pumps_tenths"].value) == "0.3"
    assert repr(readings["version_offset"].value) == "0.3"


async def test_closed_port_raises_from_open() -> None:
    cfg = {
        "name": "nobody",
        "kind": "modbus_tcp",
        "host": "127.0.0.1",
        "port": free_port(),
        "timeout_ms": 500,
        "tags": [{"name": "a", "address": 0}],
    }
    driver = ModbusTcpDriver.from_config(cfg)
    with pytest.raises(DriverIOError, match="cannot connect"):
        await driver.open()
    with pytest.raises(DriverIOError):
        await driver.read()
    assert driver.health().connected is False


async def test_sim_killed_mid_run_then_restarted(tmp_path: Any) -> None:
    plant = start_plant(seed=3, workdir=tmp_path)
    driver = driver_for(plant, STATION_TAGS[:12])
    try:
        await driver.open()
        assert all(r.quality == "good" for r in await driver.read())
        plant.kill()
        with pytest.raises(DriverIOError):
            await read_until_it_fails(driver)
        assert driver.health().connected is False
        with pytest.raises(DriverIOError):
            await driver.open()
        plant = start_plant(seed=3, port=plant.port, workdir=tmp_path)
        await driver.open()
        assert all(r.quality == "good" for r in await driver.read())
    finally:
        await driver.aclose()
        plant.stop()


async def test_the_sample_config_reads_the_sim(plant: Plant) -> None:
    import tomllib
    from pathlib import Path

    sample = Path(__file__).parents[1] / "deploy" / "samples" / "modbus_tcp.toml"
    device = tomllib.loads(sample.read_text(encoding="utf-8"))["devices"][0]
    driver = ModbusTcpDriver.from_config({**device, "port": plant.port, "host": plant.host})
    await driver.open()
    try:
        readings = await driver.read()
    finally:
        await driver.aclose()
    assert len(readings) == len(device["tags"])
    assert all(r.quality == "good" for r in readings), [r for r in readings if r.quality != "good"]
