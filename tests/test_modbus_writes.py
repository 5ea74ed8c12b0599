"""The write capability of the Modbus TCP driver against the sim PLC: only the documented writable
area accepts writes, exception codes reach the caller, and the model obeys what was written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.plant import Plant, running_plant
from tests.support.testing import eventually
from water_edge.core.errors import DeviceError
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.drivers.modbus.writes import check_write


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=3) as p:
        yield p


async def test_tcp_write_and_read_back(plant: Plant) -> None:
    driver = ModbusTcpDriver.from_config({
        "name": "ps", "kind": "modbus_tcp", "host": plant.host, "port": plant.port,
        "tags": [{"name": "pump1_running", "table": "discrete", "address": 0, "type": "bool"}],
    })  # fmt: skip
    await driver.open()
    try:
        await driver.write(1, "holding", 500, [350, 90])
        assert await driver.read_back(1, "holding", 500, 2) == [350, 90]
        await driver.write(1, "coil", 10, [False])
        assert await driver.read_back(1, "coil", 10, 3) == [False, True, True]

        async def pump1_off() -> bool:
            (running,) = await driver.read()
            return running.value is False

        # Within a few model ticks the controller obeys the coil and takes pump 1 off.
        assert await eventually(pump1_off, 5, every_s=0.05, what="pump 1 reported off")
        with pytest.raises(DeviceError) as not_writable:
            await driver.write(1, "holding", 8, [3])
        assert not_writable.value.code == 2
        with pytest.raises(DeviceError) as out_of_range:
            await driver.write(1, "holding", 501, [10])
        assert out_of_range.value.code == 3
        await driver.write(1, "coil", 10, [True])
    finally:
        await driver.aclose()


@pytest.mark.parametrize(
    ("table", "values", "fc"),
    [("holding", [1], 6), ("holding", [1, 2], 16), ("coil", [True], 5), ("coil", [True, False], 15)],
)
def test_only_write_function_codes_5_6_15_16(table: str, values: list[int], fc: int) -> None:
    assert check_write(table, 0, values)[0] == fc


@pytest.mark.parametrize(
    ("table", "address", "values", "match"),
    [
        ("input", 0, [1], "holding"),
        ("holding", 0, [], "nothing"),
        ("holding", 65535, [1, 2], "outside"),
        ("holding", 0, [70000], "0..65535"),
        ("holding", 0, [1] * 124, "at most 123"),
        ("coil", 0, [True] * 1969, "at most 1968"),
    ],
)
def test_malformed_writes_are_refused_before_the_wire(
    table: str, address: int, values: list[int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        check_write(table, address, values)
