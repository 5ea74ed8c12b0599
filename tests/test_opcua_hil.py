"""`edge-sim run --components opcua` in its own process: the OPC UA view of the plant equals its
Modbus view, and an independent client (asyncua's `uaread`/`uals`) reads the documented nodes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.plant import Plant, running_plant
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.drivers.opcua.config import OpcUaConfig
from water_edge.drivers.opcua.driver import OpcUaDriver
from water_edge.sim.opcua_server import browse_path
from water_edge.sim.registers import POINTS

UA_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    workdir = tmp_path_factory.mktemp("plant")
    # One model tick every 2 s: a Modbus poll, an OPC UA read and a second Modbus poll fit in
    # one tick even on a loaded CI machine (at the real 0.1 s tick, CI once never managed it).
    # OPC UA on a free port, beside a demo on 4840.
    with running_plant(seed=3, components="opcua", workdir=workdir, speed=0.05, opcua_port=0) as p:
        yield p


def _overlapping() -> set[str]:
    """Points whose registers another point also writes (a map error: the Modbus view is garbage)."""
    owner: dict[tuple[int, str, int], str] = {}
    clash: set[str] = set()
    for p in POINTS:
        for address in range(p.address, p.address + p.width):
            other = owner.setdefault((p.unit_id, p.table, address), p.name)
            if other != p.name:
                clash |= {other, p.name}
    return clash


def _modbus_driver(plant: Plant) -> ModbusTcpDriver:
    tags = []
    for p in POINTS:
        tag: dict[str, object] = {
            "name": p.name,
            "unit_id": p.unit_id,
            "table": p.table,
            "address": p.address,
            "type": p.encoding,
            "unit": p.unit,
        }
        if p.encoding == "string":
            tag["length"] = p.length
        if p.scale != 1.0:
            tag["scale"] = p.scale
        tag["byte_order"], tag["word_order"] = p.byte_order, p.word_order
        tags.append(tag)
    cfg = ModbusTcpConfig.model_validate(
        {"name": "mb", "kind": "modbus_tcp", "host": plant.host, "port": plant.port, "tags": tags}
    )
    return ModbusTcpDriver(cfg)


async def test_opcua_values_equal_the_modbus_view_of_the_same_tick(plant: Plant) -> None:
    url = str(plant.endpoints["opcua"]["url"])
    ua_drv = OpcUaDriver.from_config(OpcUaConfig.model_validate({
        "name": "ua", "kind": "opcua", "endpoint": url, "mode": "poll",
        "tags": [{"name": p.name, "path": browse_path(p.name)} for p in POINTS],
    }))  # fmt: skip
    mb_drv = _modbus_driver(plant)
    await ua_drv.open()
    await mb_drv.open()
    try:
        # The two views agree exactly when both were read within one model tick: the Modbus poll
        # takes several requests, so its tick must be the same before and after too.
        for _ in range(100):
            mb = {r.tag: r for r in await mb_drv.read()}
            ua = {r.tag: r for r in await ua_drv.read()}
            after = {r.tag: r for r in await mb_drv.read()}
            if mb["station.ticks"].value == ua["station.ticks"].value == after["station.ticks"].value:
                break
        else:
            pytest.fail("never read both views within one model tick")
    finally:
        await ua_drv.aclose()
        await mb_drv.aclose()
    assert all(r.quality == "good" for r in ua.values()), [r for r in ua.values() if r.quality != "good"]
    registers = {p.name for p in POINTS if p.table in ("holding", "input")}
    assert all(mb[name].quality == "good" for name in registers)
    # (coil/discrete blocks may straddle unmapped bits the Modbus planner cannot skip: those the
    # Modbus view could not read are left out of the comparison)
    compared = [name for name in mb if mb[name].quality == "good" and name not in _overlapping()]
    assert registers - _overlapping() <= set(compared)
    mismatched = {n: (mb[n].value, ua[n].value) for n in compared if mb[n].value != ua[n].value}
    assert not mismatched
    units = {name: ua[name].unit for name in ua if mb[name].unit}
    assert units == {name: mb[name].unit for name in units}  # EngineeringUnits → the map's units


def test_independent_client_reads_documented_nodes(plant: Plant) -> None:
    url = str(plant.endpoints["opcua"]["url"])
    out = subprocess.run(
        [str(UA_BIN / "uaread"), "-u", url, "-n", "ns=2;s=station.name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "PS-NORTH"
    out = subprocess.run(
        [str(UA_BIN / "uaread"), "-u", url, "-n", "ns=2;s=station.pump_count"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "3"
    listing = subprocess.run(
        [str(UA_BIN / "uals"), "-u", url, "-n", "ns=2;s=PumpStation.Pump1", "-l", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for leaf in ("Flow", "DischargePressure", "MotorCurrent", "VibrationX", "WindingTemp", "Speed"):
        assert f"Text='{leaf}')" in listing.stdout
