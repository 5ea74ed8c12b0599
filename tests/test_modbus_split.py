"""A coalesced request that spans unmapped addresses is split when the PLC refuses it.

Many PLCs answer exception 2 (illegal data address) to a read that touches any address they do
not map. The driver must then read the tags that exist instead of reporting them all bad.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.plant import Plant, running_plant
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.plan import plan_requests, split_at_gaps
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
