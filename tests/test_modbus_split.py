"""A request the PLC refuses for the sake of part of it is split, and the tags that exist are read.

Many PLCs answer exception 2 (illegal data address) to a read that touches any address they do
not map, and exception 3 (illegal data value) to a read of more registers than they take at once.
The driver must then read the tags that exist instead of reporting them all bad, and name a tag
the PLC does not map.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.plant import Plant, running_plant
from water_edge.core.reading import Reading
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.plan import halve, plan_requests, split_at_gaps
from water_edge.drivers.modbus.tcp import ModbusTcpDriver

# Coils 0-3 and 10-12 exist in the sim; 4-9 do not. The planner joins them (gap 6 < 8*16 bits).
COILS = {
    "pump1.run_command": 0,
    "pump2.run_command": 1,
    "pump3.run_command": 2,
    "station.auto_mode": 3,
    "pump1.enable": 10,
    "pump2.enable": 11,
    "pump3.enable": 12,
}


def config(port: int) -> ModbusTcpConfig:
    return ModbusTcpConfig.model_validate({
        "name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": port,
        "tags": [{"name": name, "table": "coil", "address": address, "type": "bool"}
                 for name, address in COILS.items()]
        + [{"name": "demand", "address": 20, "type": "float32"}],
    })  # fmt: skip


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=5) as running:
        yield running


def test_split_at_gaps_cuts_only_at_holes() -> None:
    (coils, _registers) = plan_requests(config(1))
    assert (coils.table, coils.start, coils.count) == ("coil", 0, 13)
    parts = split_at_gaps(coils)
    assert [(p.start, p.count) for p in parts] == [(0, 4), (10, 3)]
    assert sorted(t.name for p in parts for t, _ in p.tags) == sorted(COILS)
    assert split_at_gaps(parts[0]) == [parts[0]]


async def test_refused_coalesced_read_is_split_and_every_tag_read(plant: Plant) -> None:
    driver = ModbusTcpDriver(config(plant.port))
    await driver.open()
    try:
        first = {r.tag: r for r in await driver.read()}
        second = {r.tag: r for r in await driver.read()}
    finally:
        await driver.aclose()
    for readings in (first, second):
        assert set(readings) == {*COILS, "demand"}
        bad = {tag: r.reason for tag, r in readings.items() if r.quality != "good"}
        assert bad == {}
        assert all(isinstance(readings[tag].value, bool) for tag in COILS)
    # the split is remembered: the second poll sends gap-free requests only
    assert [(r.table, r.start, r.count) for r in driver.requests] == [
        ("coil", 0, 4),
        ("coil", 10, 3),
        ("holding", 20, 2),
    ]
    assert driver.health().exceptions == 1


# Pump 1's block: 34 contiguous registers, holding 100..133 (`edge-sim list`).
PUMP1 = {
    "pump1.flow": (100, "float32"),
    "pump1.suction_pressure": (102, "float32"),
    "pump1.discharge_pressure": (104, "float32"),
    "pump1.motor_current": (106, "float32"),
    "pump1.vibration_x": (108, "float32"),
    "pump1.vibration_y": (110, "float32"),
    "pump1.winding_temp": (112, "float32"),
    "pump1.speed": (114, "float32"),
    "pump1.status": (116, "uint16"),
    "pump1.motor_current_x10": (117, "int16"),
    "pump1.winding_temp_x10": (118, "int16"),
    "pump1.speed_int": (119, "uint16"),
    "pump1.run_seconds": (120, "uint32"),
    "pump1.starts": (122, "uint32"),
    "pump1.bearing_temp": (124, "float32"),
    "pump1.voltage": (126, "float32"),
    "pump1.efficiency": (128, "float32"),
    "pump1.head": (130, "float32"),
    "pump1.power": (132, "float32"),
}


def pump1_config(port: int, **extra_tags: tuple[int, str]) -> ModbusTcpConfig:
    tags = PUMP1 | extra_tags
    return ModbusTcpConfig.model_validate({
        "name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": port,
        "tags": [{"name": name, "address": address, "type": kind} for name, (address, kind) in tags.items()],
    })  # fmt: skip


async def polls(driver: ModbusTcpDriver, n: int) -> list[dict[str, Reading]]:
    await driver.open()
    try:
        return [{r.tag: r for r in await driver.read()} for _ in range(n)]
    finally:
        await driver.aclose()


async def test_a_tag_whose_address_the_plc_does_not_map_is_named_and_its_neighbours_are_read(
    plant: Plant,
) -> None:
    """One tag typed one register past the end of pump 1's block: the PLC refuses the whole
    gap-free request with exception 2. Before, all 20 tags read bad, and nothing said which one
    was wrong."""
    driver = ModbusTcpDriver(pump1_config(plant.port, **{"pump1.spare": (134, "float32")}))
    with capture_logs() as logs:
        first, second = await polls(driver, 2)
    for readings in (first, second):
        bad = {tag: r.reason for tag, r in readings.items() if r.quality != "good"}
        assert bad == {"pump1.spare": "modbus exception 2: illegal data address"}
        assert readings["pump1.speed_int"].value == round(readings["pump1.speed"].value)  # type: ignore[arg-type]
    refused = [e for e in logs if e["event"] == "modbus.tag_refused"]
    assert [(e["tag"], e["table"], e["address"], e["count"]) for e in refused] == [
        ("pump1.spare", "holding", 134, 2)
    ], "named once, not at every poll"
    assert ("holding", 134, 2) in [(r.table, r.start, r.count) for r in driver.requests]
    blocks = [(r.start, r.count) for r in driver.requests]
    assert len(blocks) <= 6, f"its neighbours are still read in blocks: {blocks}"


async def test_a_plc_that_takes_fewer_registers_a_request_than_asked_is_read_in_parts() -> None:
    """A drive or small PLC that takes 16 registers a read refuses the planned 34 with exception 3
    (illegal data value). Before, every tag of the block read bad until `max_registers_per_request`
    was lowered by hand."""
    with running_plant(seed=5, max_registers=16) as small:
        driver = ModbusTcpDriver(pump1_config(small.port))
        first, second = await polls(driver, 2)
    for readings in (first, second):
        assert {tag: r.reason for tag, r in readings.items() if r.quality != "good"} == {}
        assert set(readings) == set(PUMP1)
    blocks = [(r.start, r.count) for r in driver.requests]
    assert all(count <= 16 for _, count in blocks), blocks
    # halving finds parts the PLC takes in a few refusals, at most twice the fewest (3 of 16)
    assert len(blocks) <= 6, blocks


def test_halving_never_cuts_a_register_that_two_tags_read() -> None:
    """A status word read whole and as bits: those tags share their register and stay together."""
    tags = [
        {"name": "status", "address": 116, "type": "uint16"},
        {"name": "running", "address": 116, "type": "bit", "bit": 0},
        {"name": "fault", "address": 116, "type": "bit", "bit": 1},
    ]
    cfg = ModbusTcpConfig.model_validate(
        {"name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": 1, "tags": tags}
    )
    (request,) = plan_requests(cfg)
    assert halve(request) == [request]
    more = ModbusTcpConfig.model_validate(
        {"name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": 1,
         "tags": [*tags, {"name": "speed", "address": 117, "type": "int16"}]}
    )  # fmt: skip
    (request,) = plan_requests(more)
    parts = halve(request)
    assert [(p.start, p.count, [t.name for t, _ in p.tags]) for p in parts] == [
        (116, 1, ["status", "running", "fault"]),
        (117, 1, ["speed"]),
    ]


async def test_a_broken_sensor_loop_reads_bad_through_its_fault_value(tmp_path: Path) -> None:
    """firmware-sim's PLC reports a lost 4-20 mA loop on an int16 register as 32767, as a Siemens
    analog input does; the tag's fault_values make it a bad reading, not 3276.7 A."""
    scenario = tmp_path / "loop.toml"
    scenario.write_text(
        '[scenario]\nname = "broken-loop"\n\n'
        '[[events]]\nat = "0s"\nsensor = "dropout"\ntag = "pump1.motor_current"\n'
    )
    tags = [
        {"name": "current", "address": 117, "type": "int16", "scale": 0.1, "fault_values": [32767, -32768]},
        {"name": "current_unguarded", "address": 117, "type": "int16", "scale": 0.1},
        {"name": "speed", "address": 119, "type": "uint16"},
    ]
    with running_plant(seed=5, scenario=scenario) as broken:
        cfg = ModbusTcpConfig.model_validate(
            {"name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": broken.port, "tags": tags}
        )
        (readings,) = await polls(ModbusTcpDriver(cfg), 1)
    current = readings["current"]
    assert (current.quality, current.reason) == ("bad", "device reports fault value 32767")
    assert readings["current_unguarded"].value == pytest.approx(3276.7)  # what it was stored as before
    assert readings["speed"].quality == "good"


async def test_a_device_that_refused_everything_for_a_while_is_read_in_its_planned_requests_again() -> None:
    """A PLC in STOP or taking a program download refuses every read for a while: the requests
    were split down to one tag each, for the rest of the agent's life (34 registers, 19 requests a
    poll). The planned requests are tried again after `remerge_s`."""
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    from water_edge.drivers.modbus.adapter import ExceptionAnswerError
    from water_edge.drivers.modbus.plan import ReadRequest
    from water_edge.drivers.modbus.poller import RequestPoller

    now = [0.0]
    stopped = [True]
    sent: list[tuple[int, int]] = []

    async def execute(request: ReadRequest) -> ReadHoldingRegistersResponse:
        sent.append((request.start, request.count))
        if stopped[0]:
            raise ExceptionAnswerError("read", 2)
        return ReadHoldingRegistersResponse(registers=[0] * request.count)

    planned = plan_requests(pump1_config(1))
    poller = RequestPoller("plc", planned, remerge_s=900.0, clock=lambda: now[0])
    readings = await poller.read(execute)
    assert all(r.quality == "bad" for r in readings)
    assert len(poller.requests) == len(PUMP1), "split down to one tag each"
    stopped[0] = False
    now[0] = 600.0
    await poller.read(execute)
    assert len(poller.requests) == len(PUMP1)  # not yet
    now[0] = 901.0
    sent.clear()
    readings = await poller.read(execute)
    assert all(r.quality == "good" for r in readings)
    assert poller.requests == planned
    assert sent == [(100, 34)]
