"""The Modbus TCP driver behind a gateway that hangs up on its own (firmware-sim's `TcpGateway` in
front of the sim PLC, real sockets): an idle timer, a close after every answer, a close just as
a request arrives. Reads carry on over a new connection; only a device that cannot be reached
again is down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.testing import eventually, free_port
from water_edge.core.errors import DriverIOError
from water_edge.drivers.modbus.tcp import ModbusTcpDriver
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import WRITABLE_BASE, Plant
from water_edge.sim.server import start_modbus_tcp
from water_edge.sim.tcp_gateway import TcpGateway

TAGS = [{"name": "a", "address": 8}, {"name": "b", "address": WRITABLE_BASE}]  # two requests


@pytest.fixture
async def plc_port() -> AsyncIterator[int]:
    plant = Plant()
    plant.update(PumpStation(5, tick_s=1.0).state)
    server, port = await start_modbus_tcp(plant, "127.0.0.1", free_port())
    yield port
    await server.shutdown()  # type: ignore[no-untyped-call]


async def gateway_driver(plc_port: int, **hang_up: Any) -> tuple[TcpGateway, ModbusTcpDriver]:
    gateway = TcpGateway("127.0.0.1", plc_port, **hang_up)
    port = await gateway.start("127.0.0.1", free_port())
    driver = ModbusTcpDriver.from_config(
        {
            "name": "gw",
            "kind": "modbus_tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout_ms": 500,
            "tags": TAGS,
        }
    )
    await driver.open()
    return gateway, driver


def values(readings: list[Any]) -> dict[str, Any]:
    return {r.tag: (r.value, r.reason) for r in readings}


GOOD = {"a": (2, None), "b": (400, None)}  # map version; level set-point 4.0 m in cm


async def test_a_gateway_closing_idle_connections_costs_no_poll(plc_port: int) -> None:
    gateway, driver = await gateway_driver(plc_port, idle_close_s=0.2)
    try:
        assert values(await driver.read()) == GOOD
        await eventually(lambda: gateway.stats.closed_idle == 1, 5, what="the gateway's idle close")
        assert values(await driver.read()) == GOOD  # used to be DriverIOError "not connected"
        assert driver.health().reconnects == 1
        assert driver.health().connected
    finally:
        await driver.aclose()
        await gateway.stop()


async def test_a_gateway_closing_after_every_answer_still_gives_whole_polls(plc_port: int) -> None:
    gateway, driver = await gateway_driver(plc_port, close_after_answers=1)
    try:
        for _ in range(3):
            assert values(await driver.read()) == GOOD
    finally:
        await driver.aclose()
        await gateway.stop()
    assert gateway.stats.closed_after_answers >= 5
    assert "reconnects" in driver.health().status_lines()[0]


async def test_a_close_under_a_waiting_read_sends_it_again_once(plc_port: int) -> None:
    gateway, driver = await gateway_driver(plc_port, hang_up_on_request=2)
    try:
        assert values(await driver.read()) == GOOD  # b's first connection hung up under it
        assert gateway.stats.hung_up_on_request == 1
    finally:
        await driver.aclose()
        await gateway.stop()


async def test_a_device_that_drops_every_request_is_down(plc_port: int) -> None:
    gateway, driver = await gateway_driver(plc_port, hang_up_on_request=1)
    try:
        with pytest.raises(DriverIOError, match="connection lost"):
            await driver.read()
        assert gateway.stats.hung_up_on_request == 2  # the request and its one repeat
    finally:
        await driver.aclose()
        await gateway.stop()


async def test_a_gateway_gone_between_polls_is_down(plc_port: int) -> None:
    gateway, driver = await gateway_driver(plc_port, idle_close_s=0.2)
    try:
        assert values(await driver.read()) == GOOD
        await gateway.stop()
        await eventually(lambda: not driver.health().connected, 5, what="the close seen by the driver")
        with pytest.raises(DriverIOError, match="cannot connect"):
            await driver.read()
    finally:
        await driver.aclose()
