"""`edge-agent scan modbus`: commissioning Modbus devices, against firmware-sim's PLC on a real
socket (a gateway in front of units 1 and 2: exception 11 for every other unit ID) and on a real
pseudo-terminal (units 1 and 2 on an RTU line; nobody answers for the others), and against small
misbehaving Modbus TCP devices written here (`device`). What it prints must be config the agent
takes, reading what the scan read."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import struct
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from tests.support.cli import CliRun, edge_agent, edge_agent_process
from tests.support.plant import Plant, running_plant
from tests.support.signals import ctrl_c_delivered
from tests.support.testing import free_port
from water_edge.agent.commands._scan_modbus import config_blocks
from water_edge.drivers.modbus.adapter import ExceptionAnswerError
from water_edge.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from water_edge.drivers.modbus.rtu import ModbusRtuDriver
from water_edge.drivers.modbus.scan import UnitAnswer, all_answer_alike, identify
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.sim.faults import CommFault, CommFaults
from water_edge.sim.identification import IDENTITIES
from water_edge.sim.pty_link import PtyLink
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import POINTS, STATION_UNIT
from water_edge.sim.registers import Plant as RegisterPlant
from water_edge.sim.rtu import RtuComponent, crc16, expected_length, frame
from water_edge.sim.tcp_gateway import TcpGateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=3) as running:
        yield running


def scan(*args: str) -> tuple[int, str, str]:
    run = edge_agent("scan", "modbus", *args)
    return run.returncode, run.stdout, run.stderr


def config_of(out: str) -> dict[str, Any]:
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


def test_the_map_example_in_modbus_tcp_md_is_what_the_scan_prints(plant: Plant) -> None:
    # The doc showed 401 and 597 reads where the scan prints 273 and 337 (the reads a refused block
    # costs went down since the example was written, the ranges did not change).
    doc = (Path(__file__).parents[1] / "docs" / "drivers" / "modbus_tcp.md").read_text()
    example = doc[doc.index("--units 1,2 --map 0-299") : doc.index("# For the agent's config")]
    code, out, err = scan("--host", plant.host, "--port", str(plant.port), "--units", "1,2", "--map", "0-299")
    assert code == 0, err
    printed = out[out.index("\nunit 1 holding") : out.index("# For the agent's config")]
    assert [line for line in printed.splitlines() if line] == [
        line for line in example[example.index("\nunit 1 holding") :].splitlines() if line
    ]


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


def test_only_unit_ids_that_all_answer_the_same_may_be_one_device() -> None:
    every = [UnitAnswer(u, "value", "holding 0 = 7", value=7) for u in (1, 2, 3)]
    assert all_answer_alike(every)
    line = [*every[:2], UnitAnswer(3, "silent", "no answer")]
    assert not all_answer_alike(line)
    assert not all_answer_alike(every[:2]), "two units answering is a line of two"
    assert not all_answer_alike([*every[:2], UnitAnswer(3, "value", "holding 0 = 8", value=8)])


def _station_plant() -> RegisterPlant:
    plant = RegisterPlant()
    plant.update(PumpStation(5, tick_s=1.0).state)
    return plant


async def _rtu_link(plant: RegisterPlant, tmp_path: Path) -> AsyncIterator[str]:
    """firmware-sim's RTU face serving `plant` on a pseudo-terminal: its path."""
    sim = RtuComponent()
    link = sim.open(plant, tmp_path / "ttyRTU", CommFaults(lambda: 0.0)).detail["link"]
    yield str(link)
    await sim.stop()


@pytest.fixture
async def rtu_line(tmp_path: Path) -> AsyncIterator[str]:
    async for link in _rtu_link(_station_plant(), tmp_path):
        yield link


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
    assert '# [[devices]]\n# name = "rtu-ttyRTU-unit2"' in run.stdout
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
            "--host", plc.host, "--port", str(plc.port), "--units", "5-16", "--map", "0-60"
        )  # fmt: skip
    assert code == 0, err
    assert "12 of 12 unit ID(s) answer" in out
    assert "every unit ID tried answers: one device that ignores the unit ID (use unit_id = 1)" in out
    assert out.count("holding 0-60:") == 1, "mapped once, not once per unit ID"
    assert err.count("mapping unit") == 1
    (device,) = config_of(out)["devices"]
    assert device["unit_id"] == 1, "as the line above says, whatever unit IDs were tried"
    assert [t["address"] for t in device["tags"]] == [a for a, _ in mapped(1, "holding", 0, 60)]
    assert all("unit_id" not in t and t["name"].startswith("unit1.") for t in device["tags"])


async def test_ctrl_c_during_a_long_scan_stops_it_without_a_traceback(rtu_line: str) -> None:
    with ctrl_c_delivered():  # a scan started with SIGINT ignored (`make test &`) rightly ignores it
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


# -- small misbehaving Modbus TCP devices on real sockets ---------------------------------------------

Answer = Callable[
    [int, bytes], Awaitable[bytes | None]
]  # (unit ID, request PDU) -> answer PDU; None hangs up
READ_DEVICE_ID = 0x2B


def mbap(transaction: int, unit_id: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit_id) + pdu


def registers(pdu: bytes, value: int, count: int | None = None) -> bytes:
    """The answer to a register read: `value` in each of the registers asked for (or `count`)."""
    n = struct.unpack(">H", pdu[3:5])[0] if count is None else count
    return bytes([pdu[0], 2 * n]) + struct.pack(f">{n}H", *[value] * n)


def refused(pdu: bytes, code: int) -> bytes:
    return bytes([pdu[0] | 0x80, code])


def identity(vendor: bytes, product: bytes) -> bytes:
    """An answer to Read Device Identification (43/14), basic objects."""
    objects = [(0, vendor), (1, product), (2, b"1.0")]
    body = b"".join(bytes([i, len(text)]) + text for i, text in objects)
    return bytes([READ_DEVICE_ID, 0x0E, 1, 0x81, 0, 0, len(objects)]) + body


@contextlib.asynccontextmanager
async def device(answer: Answer, *, transaction_ids: bool = True) -> AsyncIterator[asyncio.Server]:
    """A Modbus TCP device on 127.0.0.1 whose answers `answer` gives, each request answered in a
    task of its own (an answer may wait for a later request). `transaction_ids=False`: its answers
    carry transaction ID 0, as some devices' and gateways' do."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(transaction: int, unit_id: int, pdu: bytes) -> None:
            pdu = await answer(unit_id, pdu) or b""
            if not pdu:
                writer.close()
            elif not writer.is_closing():
                writer.write(mbap(transaction if transaction_ids else 0, unit_id, pdu))

        replies: set[asyncio.Task[None]] = set()
        try:
            while True:
                transaction, _, length, unit_id = struct.unpack(">HHHB", await reader.readexactly(7))
                task = asyncio.create_task(reply(transaction, unit_id, await reader.readexactly(length - 1)))
                replies.add(task)
                task.add_done_callback(replies.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            for task in list(replies):
                task.cancel()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.close()


@contextlib.asynccontextmanager
async def rtu_device(answer: Answer, link: Path, *, cut_short: Collection[int] = ()) -> AsyncIterator[str]:
    """A Modbus RTU device on a pseudo-terminal (its path: `link`) whose answers `answer` gives, each
    request answered in a task of its own, as `device` on TCP; a `None` answer is silence. The
    answers for the unit IDs in `cut_short` lose their last 3 bytes (noise, a loose wire)."""
    pty = PtyLink(link)
    pty.plug()
    received = bytearray()
    replies: set[asyncio.Task[None]] = set()

    async def reply(unit_id: int, pdu: bytes) -> None:
        if (pdu := await answer(unit_id, pdu) or b"") and pty.plugged:
            whole = frame(unit_id, pdu)
            os.write(pty.master_fd, whole[:-3] if unit_id in cut_short else whole)

    def on_readable() -> None:
        received.extend(os.read(pty.master_fd, 4096))
        while length := expected_length(received) or (7 if received[1:2] == bytes([READ_DEVICE_ID]) else 0):
            if len(received) < length:
                return
            request = bytes(received[:length])
            del received[:length]
            if crc16(request[:-2]) == struct.unpack("<H", request[-2:])[0]:
                task = asyncio.create_task(reply(request[0], request[1:-2]))
                replies.add(task)
                task.add_done_callback(replies.discard)

    loop = asyncio.get_running_loop()
    loop.add_reader(pty.master_fd, on_readable)
    try:
        yield str(link)
    finally:
        loop.remove_reader(pty.master_fd)
        for task in list(replies):
            task.cancel()
        pty.close()


async def scan_of(server: asyncio.Server, *args: str) -> CliRun:
    port = server.sockets[0].getsockname()[1]
    return await edge_agent_process("scan", "modbus", "--host", "127.0.0.1", "--port", str(port), *args)


async def test_units_that_hang_up_or_answer_unreadably_do_not_stop_the_scan() -> None:
    async def answer(unit_id: int, pdu: bytes) -> bytes | None:
        if unit_id == 2:  # its answer does not decode: more registers announced than sent
            return bytes([pdu[0], 4]) + struct.pack(">H", 7)
        if unit_id != 1 or pdu[0] == READ_DEVICE_ID:
            return None  # hangs up on a unit ID it does not have, and on a function it does not know
        return registers(pdu, 7)

    async with device(answer) as server:
        run = await scan_of(server, "--units", "1-4")
    assert run.returncode == 0, run.stderr
    assert "2 of 4 unit ID(s) answer" in run.stdout
    assert "1  holding 0 = 7" in run.stdout
    assert "2  answers, but not readably: the answer does not decode" in run.stdout
    assert "2 other unit ID(s): closes the connection instead of answering" in run.stdout
    assert "Traceback" not in run.stderr


async def test_a_device_that_closes_every_connection_or_goes_away_is_said_in_one_line() -> None:
    async def hang_up(_unit: int, _pdu: bytes) -> bytes | None:
        return None

    async with device(hang_up) as server:
        run = await scan_of(server, "--units", "1-3")
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1].endswith(
        "the device closes the connection instead of answering (unit 1): a connection limit? stop other "
        "masters, or the agent, polling it"
    )
    assert "Traceback" not in run.stderr

    async def go_away(_unit: int, _pdu: bytes) -> bytes | None:
        gone.close()  # no longer listening: connecting again is refused
        return None

    async with device(go_away) as gone:
        run = await scan_of(gone, "--units", "1-3")
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1].endswith(" again: connection refused"), run.stderr
    assert "Traceback" not in run.stderr


def three_units(products: dict[int, tuple[int, bytes]]) -> Answer:
    """A gateway with units behind it, each with its holding registers' value and its product code;
    exception 11 for any other unit ID."""

    async def answer(unit_id: int, pdu: bytes) -> bytes | None:
        if unit_id not in products:
            return refused(pdu, 11)
        value, product = products[unit_id]
        return identity(b"ACME", product) if pdu[0] == READ_DEVICE_ID else registers(pdu, value)

    return answer


@pytest.mark.parametrize(
    "products",
    [
        {1: (101, b"METER"), 2: (202, b"PUMP"), 3: (303, b"VALVE")},
        {1: (7, b"METER"), 2: (7, b"METER"), 3: (7, b"METER")},  # three of a kind: unit 247 tells them apart
    ],
    ids=["distinct", "identical"],
)
async def test_three_units_behind_a_gateway_are_three_devices(products: dict[int, tuple[int, bytes]]) -> None:
    async with device(three_units(products)) as server:
        run = await scan_of(server, "--units", "1-3")
    assert run.returncode == 0, run.stderr
    assert "3 of 3 unit ID(s) answer" in run.stdout
    assert "ignores the unit ID" not in run.stdout
    for unit_id, (value, product) in products.items():
        assert f"{unit_id}  holding 0 = {value}  [ACME {product.decode()} 1.0]" in run.stdout
    (gateway,) = config_of(run.stdout)["devices"]
    assert [(t.get("unit_id", gateway["unit_id"]), t["address"]) for t in gateway["tags"]] == [
        (1, 0),
        (2, 0),
        (3, 0),
    ]


@pytest.fixture
async def rtu_line_of_three(tmp_path: Path) -> AsyncIterator[str]:
    """Units 3, 4 and 5 on an RTU line, each reading as the station PLC does: alike."""
    plant = _station_plant()
    plc = plant.units.pop(STATION_UNIT)
    plant.units = {3: plc, 4: plc, 5: plc}
    async for link in _rtu_link(plant, tmp_path):
        yield link


async def test_units_on_an_rtu_line_that_answer_alike_are_as_many_devices(rtu_line_of_three: str) -> None:
    run = await edge_agent_process(
        "scan", "modbus", "--serial-port", rtu_line_of_three, "--parity", "none", "--units", "3-5",
        "--timeout", "0.2",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "3 of 3 unit ID(s) answer" in run.stdout
    assert "ignores the unit ID" not in run.stdout, "a serial slave cannot ignore its address"
    devices = config_of(run.stdout)["devices"]
    assert isinstance(devices, list)
    assert [(d["name"], d["unit_id"]) for d in devices] == [(f"rtu-ttyRTU-unit{u}", u) for u in (3, 4, 5)]


async def test_answers_that_carry_too_few_values_make_no_address_readable() -> None:
    async def one_short(_unit: int, pdu: bytes) -> bytes | None:
        if pdu[0] == READ_DEVICE_ID:
            return refused(pdu, 1)
        return registers(pdu, 7, count=struct.unpack(">H", pdu[3:5])[0] - 1)

    async with device(one_short) as server:
        run = await scan_of(server, "--units", "1", "--map", "0-299", "--json")
    assert run.returncode == 0, run.stderr
    (found,) = map(json.loads, run.stdout.splitlines())
    assert (found["outcome"], found["detail"]) == (
        "garbled", "answers, but not readably: 0 registers for a request of 1"
    )  # fmt: skip
    assert found["map"]["readable"] == []
    assert found["map"]["bad_answers"] == [[0, 299]]


async def test_a_late_answer_without_transaction_id_is_not_taken_for_the_next_read() -> None:
    """The device serves holding 0-124 only, and answers the map's first read of them after the
    scan stopped waiting, as the next read (125-249) comes: with transaction ID 0, as all its answers."""
    next_read = asyncio.Event()

    async def late_once(_unit: int, pdu: bytes) -> bytes | None:
        if pdu[0] == READ_DEVICE_ID:
            return refused(pdu, 1)
        address, count = struct.unpack(">HH", pdu[1:5])
        if address + count > 125:
            if not next_read.is_set():
                next_read.set()
                await asyncio.sleep(0.1)  # the late answer goes first
            return refused(pdu, 2)
        if count > 1 and not next_read.is_set():
            await next_read.wait()
        return registers(pdu, 7)

    async with device(late_once, transaction_ids=False) as server:
        run = await scan_of(server, "--units", "1", "--map", "0-249", "--timeout", "0.3", "--json")
    assert run.returncode == 0, run.stderr
    (found,) = map(json.loads, run.stdout.splitlines())
    assert found["map"]["readable"] == [], "nothing past 124 reads, nor 0-124, whose answer came late"
    assert found["map"]["unanswered"] == [[0, 124]]


async def test_a_late_answer_on_an_rtu_line_is_not_taken_for_the_next_read(tmp_path: Path) -> None:
    """RTU answers carry no transaction ID. The unit serves holding 0-124 only and answers the
    map's first read of them 0.15 s after the scan stopped waiting, while the next read (125-249),
    refused a little slowly the first time, waits for its answer: the late answer has that read's
    size."""
    late = [True]
    slow_refusal = [True]

    async def late_once(_unit: int, pdu: bytes) -> bytes | None:
        if pdu[0] == READ_DEVICE_ID:
            return refused(pdu, 1)
        address, count = struct.unpack(">HH", pdu[1:5])
        if address + count > 125:
            # Only the read that follows the late answer needs to wait for it; the scan then
            # narrows 125-249 down read by read, each refused at once.
            if slow_refusal[0]:
                slow_refusal[0] = False
                await asyncio.sleep(0.2)
            return refused(pdu, 2)
        if count > 1 and late[0]:
            late[0] = False
            await asyncio.sleep(0.45)
        return registers(pdu, 7)

    async with rtu_device(late_once, tmp_path / "ttyLATE") as port:
        run = await edge_agent_process(
            "scan", "modbus", "--serial-port", port, "--parity", "none", "--units", "1",
            "--map", "0-249", "--timeout", "0.3", "--json",
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (found,) = map(json.loads, run.stdout.splitlines())
    assert found["map"]["unanswered"] == [[0, 124]]
    assert found["map"]["readable"] == [], "0-124's late answer is not 125-249's"


async def test_a_unit_whose_answers_come_cut_short_is_named_beside_those_found(tmp_path: Path) -> None:
    """Units 1 and 3 answer whole, unit 2 every time cut short: unit 2 read as 'no answer', like the
    IDs where nobody is, so a unit on a noisy drop or at other line settings went unnoticed."""

    async def answer(_unit: int, pdu: bytes) -> bytes | None:
        return refused(pdu, 1) if pdu[0] == READ_DEVICE_ID else registers(pdu, 7)

    async with rtu_device(answer, tmp_path / "ttyCUT", cut_short={2}) as port:
        run = await edge_agent_process(
            "scan", "modbus", "--serial-port", port, "--parity", "none", "--units", "1-3",
            "--timeout", "0.2",
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 of 3 unit ID(s) answer" in run.stdout, run.stdout
    assert "1 other unit ID(s): no answer" in run.stdout
    assert (
        "unit ID(s) 2: bytes came back in their turn that are no whole answer (cut short or garbled)"
    ) in run.stdout, run.stdout


@pytest.mark.parametrize(
    ("line_fault", "said"),
    [
        ("echo", "each request came back as it was sent: the RS-485 adapter echoes its own transmission; "
                 "scan again with --local-echo (local_echo = true in the config)"),
        ("garbage", "bytes came back that are no Modbus RTU answer ("),
        ("silence", "nothing came back at all: check the unit IDs, the wiring"),
    ],
)  # fmt: skip
async def test_an_rtu_line_where_no_unit_answers_says_what_came_back(
    tmp_path: Path, line_fault: Literal["echo", "garbage", "silence"], said: str
) -> None:
    sim = RtuComponent()
    comm = CommFaults(lambda: 0.0)
    if line_fault == "echo":
        sim.echo = True  # a 2-wire adapter that hears its own transmission, scanned without --local-echo
    else:
        comm.add(CommFault(line_fault, 0.0, 1e9, "modbus_rtu", 1.0))
    link = sim.open(_station_plant(), tmp_path / "ttyRTU", comm).detail["link"]
    scan = ("scan", "modbus", "--serial-port", str(link), "--parity", "none", "--units", "1-2",
            "--timeout", "0.2")  # fmt: skip
    try:
        run = await edge_agent_process(*scan)
        with_local_echo = await edge_agent_process(*scan, "--local-echo") if line_fault == "echo" else None
    finally:
        await sim.stop()
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("no unit answered on Modbus RTU"), run.stderr
    assert said in last, last
    if with_local_echo is not None:
        assert "2 of 2 unit ID(s) answer" in with_local_echo.stdout, with_local_echo.stderr


@pytest.mark.parametrize("echo", [False, True], ids=["glitch", "echo-and-glitch-with-local-echo"])
async def test_a_turnaround_byte_before_every_answer_is_passed_over_by_the_scan(
    tmp_path: Path, echo: bool
) -> None:
    # firmware-sim's `glitch`: one 0x00 before every answer, as a 2-wire RS-485 transceiver turning
    # the line round puts there. The scan reported unit 2 as "no answer", a map of unit 1 found
    # nothing, and unit 2's input scan said its answers were "no Modbus RTU answer (00 02 04 02 42
    # 81 0d f0): check --baudrate": 0x00 then unit 2's exception answer (02 83 02 ..) reads as unit 0
    # with 131 bytes of discrete inputs, which never came, so the read timed out. The driver read
    # the same line (docs/drivers/modbus_rtu.md, "Line noise").
    sim = RtuComponent()
    sim.answer_prefix, sim.echo = b"\x00", echo
    link = sim.open(_station_plant(), tmp_path / "ttyRTU", CommFaults(lambda: 0.0)).detail["link"]
    line = ("--serial-port", str(link), "--parity", "none", "--timeout", "0.3",
            *(("--local-echo",) if echo else ()))  # fmt: skip
    try:
        units = await edge_agent_process("scan", "modbus", *line, "--units", "1-2")
        holding = await edge_agent_process("scan", "modbus", *line, "--units", "1", "--map", "0-50")
        inputs = await edge_agent_process(
            "scan", "modbus", *line, "--units", "2", "--table", "input", "--map", "0-20"
        )
    finally:
        await sim.stop()
    assert units.returncode == 0, units.stderr
    assert "2 of 2 unit ID(s) answer" in units.stdout, units.stdout
    for run, unit_id, table, first, last in ((holding, 1, "holding", 0, 50), (inputs, 2, "input", 0, 20)):
        assert run.returncode == 0, run.stderr
        ranges = mapped(unit_id, table, first, last)
        assert ranges
        assert f"{sum(b - a + 1 for a, b in ranges)} readable in {len(ranges)} range(s)" in run.stdout, (
            run.stdout
        )
        assert "no answer" not in run.stdout, run.stdout


def test_options_the_config_refuses_are_one_usage_line() -> None:
    for args, said in [
        (("--host", "127.0.0.1", "--port", "0"), "--port 0: input should be greater than or equal to 1"),
        (
            ("--host", "127.0.0.1", "--port", "70000"),
            "--port 70000: input should be less than or equal to 65535",
        ),
        (("--host", ""), "--host '': string should have at least 1 character"),
        (("--serial-port", ""), "--serial-port '': string should have at least 1 character"),
        (("--serial-port", "/dev/x", "--baudrate", "14400"), "--baudrate 14400: expected one of 1200, 2400"),
    ]:
        code, out, err = scan(*args, "--units", "1")
        assert (code, out) == (2, ""), err
        assert err.startswith(f"edge-agent scan modbus: {said}"), err
        assert len(err.splitlines()) == 1, err
    master, slave = os.openpty()
    try:
        code, _, err = scan("--serial-port", os.ttyname(slave), "--units", "1")  # 8E1 by default
    finally:
        os.close(master)
        os.close(slave)
    assert code == 2
    assert "it refuses --baudrate/--parity/--stopbits 19200 8E1" in err
    assert err.rstrip().endswith("a pseudo-terminal takes --parity none only"), err
    assert len(err.splitlines()) == 1, err


async def test_a_port_that_answers_another_protocol_is_said_so() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(100):
                writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        writer.close()

    web = await asyncio.start_server(banner, "127.0.0.1", 0)
    try:
        run = await scan_of(web, "--units", "1", "--timeout", "0.2")
    finally:
        web.close()
    assert run.returncode == 1
    assert "unit 1 answers, but not Modbus TCP ('HTTP/1.1 400 Bad Request')" in run.stderr
    assert "--baudrate" not in run.stderr


def test_printed_device_names_are_names_the_config_takes_one_per_host_port_and_serial_port() -> None:
    found = [UnitAnswer(1, "value", "holding 0 = 7", value=7)]
    defaults = {"table": "holding", "address": 0, "host": None, "port": 502, "serial_port": None,
                "baudrate": 19200, "parity": "even", "stopbits": 1, "local_echo": False}  # fmt: skip

    def printed(**where: object) -> Any:
        blocks = config_blocks(found, {}, argparse.Namespace(**(defaults | where)))
        (one,) = config_of("\n\n".join(blocks))["devices"]
        model = ModbusTcpConfig if where.get("host") else ModbusRtuConfig
        model.model_validate(one)  # what check-config checks of a device: its name among them
        return one

    long_name = "gw-pumpstation-north-01.scada.waterworks-utility.example.org"
    names = [
        printed(host=long_name)["name"],
        printed(host=long_name, port=1502)["name"],
        printed(host=long_name.replace("north", "south"))["name"],
        printed(host="10.1.2.3")["name"],
        printed(serial_port="/dev/ttyUSB0")["name"],
        printed(serial_port="/dev/ttyUSB1")["name"],
    ]
    assert len(set(names)) == len(names), names
    assert names[3:] == ["modbus-10-1-2-3", "rtu-ttyUSB0-unit1", "rtu-ttyUSB1-unit1"]
