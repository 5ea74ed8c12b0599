"""`edge-agent scan modbus`: commissioning Modbus devices, against firmware-sim's PLC on a real
socket (a gateway in front of units 1 and 2: exception 11 for every other unit ID) and on a real
pseudo-terminal (units 1 and 2 on an RTU line; nobody answers for the others). What it prints
must be config the agent takes, reading what the scan read."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support.cli import edge_agent, edge_agent_process
from tests.support.plant import Plant, running_plant
from tests.support.testing import free_port
from water_edge.drivers.modbus.adapter import ExceptionAnswerError
from water_edge.drivers.modbus.rtu import ModbusRtuDriver
from water_edge.drivers.modbus.scan import UnitAnswer, answers_every_unit, identify
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.sim.faults import CommFaults
from water_edge.sim.identification import IDENTITIES
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import POINTS, STATION_UNIT
from water_edge.sim.registers import Plant as RegisterPlant
from water_edge.sim.rtu import RtuComponent
from water_edge.sim.tcp_gateway import TcpGateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=3) as running:
        yield running


def scan(*args: str) -> tuple[int, str, str]:
    run = edge_agent("scan", "modbus", *args)
    return run.returncode, run.stdout, run.stderr


def config_of(out: str) -> dict[str, object]:
    """The `[[devices]]` the scan printed, as the agent's config parser reads them."""
    return tomllib.loads(out[out.index("# For the agent's config") :])


def mapped(unit_id: int, table: str, first: int, last: int) -> list[tuple[int, int]]:
    """The address ranges of `table` the simulated PLC maps for `unit_id` (its documented register
    map), joined where they touch, within first..last."""
    spans = sorted(
        (p.address, p.address + p.width - 1) for p in POINTS if p.unit_id == unit_id and p.table == table
    )
    out: list[tuple[int, int]] = []
    for start, end in spans:
        a, b = max(start, first), min(end, last)
        if a > b:
            continue
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def test_units_behind_a_gateway_are_found_and_the_printed_config_reads_them(plant: Plant) -> None:
    code, out, err = scan("--host", plant.host, "--port", str(plant.port), "--units", "1-20")
    assert code == 0, err
    assert "2 of 20 unit ID(s) answer" in out
    assert "modbus exception 2: illegal data address (a device answers" in out, "unit 2 maps no holding 0"
    assert "18 other unit ID(s): the gateway: modbus exception 11" in out
    for unit_id, (vendor, product, revision) in IDENTITIES.items():  # Read Device Identification
        assert f"[{vendor} {product} {revision}]" in out
        assert f"# unit {unit_id}: {vendor} {product} {revision}" in out
    devices = config_of(out)["devices"]
    assert isinstance(devices, list)
    assert len(devices) == 1, "one connection to the gateway"
    device = devices[0]
    assert (device["kind"], device["unit_id"]) == ("modbus_tcp", 1)
    assert [t["address"] for t in device["tags"]] == [0]
    driver = ModbusTcpDriver.from_config(device)

    async def read() -> list[object]:
        await driver.open()
        try:
            return list(await driver.read())
        finally:
            await driver.aclose()

    (reading,) = asyncio.run(read())
    assert reading.quality == "good", reading.reason  # type: ignore[attr-defined]
    printed = int(out.split("holding 0 = ")[1].split()[0])
    assert reading.value == printed  # type: ignore[attr-defined]  # station.name's first two letters


def test_map_finds_exactly_the_addresses_the_plc_maps(plant: Plant) -> None:
    code, out, err = scan(
        "--host", plant.host, "--port", str(plant.port), "--units", "1,2", "--map", "0-299", "--json"
    )  # fmt: skip
    assert code == 0, err
    found = {d["unit_id"]: d for d in map(json.loads, out.splitlines())}
    assert found[1]["outcome"] == "value"
    assert found[2]["identity"] == " ".join(IDENTITIES[2])
    assert found[2]["code"] == 2
    readable = [tuple(r) for r in found[STATION_UNIT]["map"]["readable"]]
    assert readable == mapped(STATION_UNIT, "holding", 0, 299)
    assert readable, "the station maps holding registers below 300"
    assert found[2]["map"]["readable"] == [[a, b] for a, b in mapped(2, "holding", 0, 299)]
    # Unit 2 maps no holding register: 300 addresses refused cost about one read each (a refused
    # block of fewer than 16 is read an address at a time), not two (halving down to singles).
    assert not mapped(2, "holding", 0, 299)
    assert found[2]["map"]["reads"] <= 1.2 * 300


def test_map_against_a_plc_that_takes_16_registers_a_read_finds_the_same_ranges() -> None:
    with running_plant(seed=4, max_registers=16) as small:
        code, out, err = scan(
            "--host", small.host, "--port", str(small.port), "--units", "1", "--map", "0-140"
        )
    assert code == 0, err
    assert f"{sum(b - a + 1 for a, b in mapped(1, 'holding', 0, 140))} readable" in out
    for a, b in mapped(1, "holding", 0, 140):
        assert f"readable  {a}-{b}" in out


def test_nothing_behind_the_gateway_a_refused_port_and_bad_options_are_said(plant: Plant) -> None:
    code, _, err = scan("--host", plant.host, "--port", str(plant.port), "--units", "9-12")
    assert code == 1
    assert "a gateway answers, but no device behind it" in err
    code, _, err = scan("--host", "127.0.0.1", "--port", str(free_port()))
    assert (code, "connection refused" in err) == (2, True), err
    code, _, err = scan("--host", plant.host, "--units", "5-1")
    assert code == 2
    assert "--units '5-1'" in err
    code, _, err = scan("--serial-port", "/dev/ttyNOPE", "--units", "1")
    assert code == 2
    assert "cannot open /dev/ttyNOPE" in err
    assert "Traceback" not in err


def test_a_device_answering_every_unit_id_is_one_device() -> None:
    every = [UnitAnswer(u, "value", "holding 0 = 7", value=7) for u in (1, 2, 3)]
    assert answers_every_unit(every)
    line = [*every[:2], UnitAnswer(3, "silent", "no answer")]
    assert not answers_every_unit(line)
    assert not answers_every_unit(every[:2]), "two units answering is a line of two"


@pytest.fixture
async def rtu_line(tmp_path: Path) -> AsyncIterator[str]:
    plant = RegisterPlant()
    plant.update(PumpStation(5, tick_s=1.0).state)
    sim = RtuComponent()
    link = sim.open(plant, tmp_path / "ttyRTU", CommFaults(lambda: 0.0)).detail["link"]
    yield str(link)
    await sim.stop()


async def test_an_rtu_line_is_scanned_and_mapped_and_its_config_reads(rtu_line: str) -> None:
    run = await edge_agent_process(
        "scan", "modbus", "--serial-port", rtu_line, "--parity", "none", "--units", "1-4",
        "--timeout", "0.2", "--map", "95-140",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 of 4 unit ID(s) answer" in run.stdout
    assert "2 other unit ID(s): no answer" in run.stdout
    assert f"[{' '.join(IDENTITIES[1])}]" in run.stdout, "function 43 over RTU too"
    for a, b in mapped(1, "holding", 95, 140):
        assert f"readable  {a}-{b}" in run.stdout
    config = config_of(run.stdout)
    devices = config["devices"]
    assert isinstance(devices, list)
    assert [(d["kind"], d["unit_id"]) for d in devices] == [("modbus_rtu", 1)], (
        "unit 2 maps nothing in 95-140: its device is printed commented out"
    )
    assert '# [[devices]]\n# name = "rtu-unit2"' in run.stdout
    assert [t["address"] for t in devices[0]["tags"]] == [a for a, _ in mapped(1, "holding", 95, 140)]
    driver = ModbusRtuDriver.from_config(devices[0])
    await driver.open()
    try:
        readings = list(await driver.read())
    finally:
        await driver.aclose()
    assert readings
    assert all(r.quality == "good" for r in readings), [r.reason for r in readings]


async def test_a_gateway_that_hangs_up_after_every_answer_is_scanned_whole(plant: Plant) -> None:
    gateway = TcpGateway(plant.host, plant.port, close_after_answers=1)
    port = await gateway.start()
    try:
        run = await edge_agent_process(
            "scan", "modbus", "--host", "127.0.0.1", "--port", str(port), "--units", "1-6", "--map", "0-60"
        )  # fmt: skip
    finally:
        await gateway.stop()
    assert run.returncode == 0, run.stderr
    assert "2 of 6 unit ID(s) answer" in run.stdout
    for a, b in mapped(1, "holding", 0, 60):
        assert f"readable  {a}-{b}" in run.stdout
    assert gateway.stats.closed_after_answers >= 6, "every request on a connection of its own"


async def test_identification_strings_are_printable_whatever_the_device_sends() -> None:
    class Answer:
        information: ClassVar = {0: b"ACME\x00\x00\x00", 1: [b"PLC-9", b"rack 2"], 2: b"r\xe9v 3\r\n"}

    async def ask(_unit: int) -> Any:
        return Answer()

    async def refuses(unit: int) -> Any:
        raise ExceptionAnswerError(f"unit {unit}", 1)  # function 43 not implemented

    assert await identify(ask, 1) == "ACME PLC-9 rack 2 rév 3"
    assert await identify(refuses, 1) == ""


def test_a_plc_that_ignores_the_unit_id_is_one_device_mapped_once() -> None:
    with running_plant(seed=5, any_unit=True) as plc:
        code, out, err = scan(
            "--host", plc.host, "--port", str(plc.port), "--units", "1-12", "--map", "0-60"
        )  # fmt: skip
    assert code == 0, err
    assert "12 of 12 unit ID(s) answer" in out
    assert "every unit ID tried answers: one device that ignores the unit ID (use unit_id = 1)" in out
    assert out.count("holding 0-60:") == 1, "mapped once, not once per unit ID"
    assert err.count("mapping unit") == 1
    (device,) = config_of(out)["devices"]  # type: ignore[misc]
    assert device["unit_id"] == 1
    assert [t["address"] for t in device["tags"]] == [a for a, _ in mapped(1, "holding", 0, 60)]
    assert all("unit_id" not in t for t in device["tags"])


async def test_ctrl_c_during_a_long_scan_stops_it_without_a_traceback(rtu_line: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "water_edge.agent.cli", "scan", "modbus", "--serial-port", rtu_line,
        "--parity", "none", "--units", "1-247", "--timeout", "0.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"scanning" in first  # two minutes of unit IDs ahead
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert "edge-agent scan: interrupted" in err.decode()
    assert "Traceback" not in err.decode()
