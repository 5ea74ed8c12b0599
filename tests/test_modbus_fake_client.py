"""The Modbus TCP and RTU drivers' error and reconnect logic through their client factory, with a
scripted client in place of pymodbus and a device (the real-socket and pty tests stay beside)."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from tests.support.testing import eventually
from water_edge.agent.supervisor import DeviceRunner
from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.core.health import Health, health_json
from water_edge.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from water_edge.drivers.modbus.rtu import ModbusRtuDriver
from water_edge.drivers.modbus.tcp import ModbusTcpDriver

NO_RESPONSE = "No response received after 1 retries, continue with next request"
TAGS = [{"name": "a", "address": 0}, {"name": "b", "address": 1}]  # one request: holding 0, count 2

Outcome = ModbusPDU | BaseException | asyncio.Future[ModbusPDU] | None  # None: the default answer


class ScriptedClient:
    """Stands in for a pymodbus client: each request takes the next scripted outcome (an answer,
    an exception to raise, or a future to wait on); with none left it answers 7, 8, ..."""

    def __init__(self, *outcomes: Outcome, on_connection: Callable[[bool], None] | None = None) -> None:
        self.outcomes: deque[Outcome] = deque(outcomes)
        self.on_connection = on_connection
        self.sent: list[tuple[str, int, int, int]] = []
        self.limits: list[tuple[float, int]] = []
        self.waiting = asyncio.Event()  # a request is waiting on a scripted future
        self._connected = False
        self.closed = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> bool:
        self._connected = True
        return True

    def close(self) -> None:
        self._connected = False
        self.closed = True

    def drop(self) -> None:
        """The connection goes, as pymodbus reports it: through the connect/disconnect hook."""
        self._connected = False
        if self.on_connection is not None:
            self.on_connection(False)

    def set_request_limits(self, timeout_s: float, retries: int) -> None:
        self.limits.append((timeout_s, retries))

    async def _answer(self, table: str, address: int, count: int, device_id: int) -> ModbusPDU:
        self.sent.append((table, address, count, device_id))
        outcome = self.outcomes.popleft() if self.outcomes else None
        if outcome is None:
            return ReadHoldingRegistersResponse(registers=list(range(7, 7 + count)))
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, asyncio.Future):
            self.waiting.set()
            return await outcome
        return outcome

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self._answer("holding", address, count, device_id)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self._answer("input", address, count, device_id)

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self._answer("coil", address, count, device_id)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self._answer("discrete", address, count, device_id)

    def write_register(self, address: int, value: int, *, device_id: int = 1) -> Any:
        return self._answer("write holding", address, 1, device_id)

    def write_registers(self, address: int, values: Sequence[int], *, device_id: int = 1) -> Any:
        return self._answer("write holding", address, len(values), device_id)

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Any:
        return self._answer("write coil", address, 1, device_id)

    def write_coils(self, address: int, values: Sequence[bool], *, device_id: int = 1) -> Any:
        return self._answer("write coil", address, len(values), device_id)


def tcp_driver(*scripts: Sequence[Outcome]) -> tuple[ModbusTcpDriver, list[ScriptedClient]]:
    """A TCP driver whose n-th `open()` gets a client playing `scripts[n]`."""
    made: list[ScriptedClient] = []
    plays = iter(scripts)

    def factory(_config: ModbusTcpConfig, on_connection: Callable[[bool], None]) -> ScriptedClient:
        made.append(ScriptedClient(*next(plays, []), on_connection=on_connection))
        return made[-1]

    config = ModbusTcpConfig.model_validate(
        {"name": "ps", "kind": "modbus_tcp", "host": "192.0.2.1", "tags": TAGS}
    )
    return ModbusTcpDriver(config, client_factory=factory), made


def reasons(readings: list[Any]) -> list[str | None]:
    return [r.reason for r in readings]


async def test_tcp_silent_device_goes_down_after_three_and_reopens_on_a_new_client() -> None:
    silence = [ModbusIOException(NO_RESPONSE)] * 3
    driver, clients = tcp_driver(silence, [])
    await driver.open()
    assert reasons(await driver.read()) == ["timeout", "timeout"]
    assert reasons(await driver.read()) == ["timeout", "timeout"]
    with pytest.raises(DriverIOError, match=r"^ps: no answer to 3 requests in a row$"):
        await driver.read()
    assert clients[0].closed
    health = driver.health()
    assert (health.requests, health.errors, health.timeouts, health.connected) == (3, 3, 3, False)
    with pytest.raises(DriverIOError, match=r"^ps: not connected$"):
        await driver.read()

    await driver.open()
    assert [r.value for r in await driver.read()] == [7, 8]
    assert len(clients) == 2
    assert driver.health().connected
    assert driver.health().last_ok_ns
    await driver.aclose()


async def test_tcp_drop_fails_the_request_in_flight_at_once() -> None:
    # A drop under a read sends it once more on a new connection (gateways hang up on their own,
    # tests/test_modbus_gateway.py); a second drop fails it. Both at once, not after a timeout.
    loop = asyncio.get_running_loop()
    driver, clients = tcp_driver([loop.create_future()], [loop.create_future()])
    await driver.open()
    reading = asyncio.create_task(driver.read())
    await clients[0].waiting.wait()
    clients[0].drop()
    async with asyncio.timeout(1):
        await eventually(lambda: len(clients) == 2 and clients[1].waiting.is_set(), 1, what="the repeat")
    clients[1].drop()
    async with asyncio.timeout(1):  # not after a request timeout: at once
        with pytest.raises(DriverIOError, match=r"^ps: connection lost$"):
            await reading
    assert not driver.health().connected
    assert driver.health().reconnects == 1
    await driver.aclose()


async def test_tcp_answer_failures_stay_with_the_request_and_refusals_reach_the_caller() -> None:
    wrong_unit = ModbusIOException("ERROR: request uses device id=1 but received 2.")
    refused = ExceptionResponse(3, 2)
    driver, clients = tcp_driver([wrong_unit, refused, refused, None, None, ExceptionResponse(6, 3)])
    await driver.open()
    assert reasons(await driver.read()) == [f"bad response: {wrong_unit}"] * 2
    # exception 2 on a gap-free request of two tags: read one by one; the one refused alone is bad
    assert reasons(await driver.read()) == ["modbus exception 2: illegal data address", None]
    assert clients[0].sent[1:] == [("holding", 0, 2, 1), ("holding", 0, 1, 1), ("holding", 1, 1, 1)]
    assert driver.health().connected
    await driver.write(1, "holding", 500, [350])
    with pytest.raises(DeviceError, match=r"^ps: write holding 8: modbus exception 3") as refusal:
        await driver.write(1, "holding", 8, [3])
    assert refusal.value.code == 3
    health = driver.health()
    assert (health.requests, health.errors, health.exceptions, health.timeouts) == (4, 3, 2, 0)
    assert clients[0].sent[4:] == [("write holding", 500, 1, 1), ("write holding", 8, 1, 1)]
    await driver.aclose()


async def test_tcp_connection_errors_close_and_keep_the_library_text() -> None:
    gone = ConnectionException("Not connected[AsyncModbusTcpClient 192.0.2.1:502]")
    driver, clients = tcp_driver([gone], [ModbusIOException(NO_RESPONSE)])
    await driver.open()
    with pytest.raises(DriverIOError) as caught:
        await driver.read()
    assert str(caught.value) == f"ps: {gone}"
    assert clients[0].closed
    await driver.open()
    with pytest.raises(DriverIOError) as unanswered:
        await driver.write(1, "coil", 10, [True])  # writes say what failed, in pymodbus's words
    assert str(unanswered.value) == f"ps: write coil 10: Modbus Error: [Input/Output] {NO_RESPONSE}"
    await driver.aclose()


async def test_typed_health_reaches_the_status_document_as_plain_json() -> None:
    driver, _ = tcp_driver([])
    await driver.open()
    health = driver.health()
    assert isinstance(health, Health)
    assert health.status_lines() == ["requests 0  errors 0  connected yes"]

    async def ignore(*_args: Any) -> None:
        return None

    runner = DeviceRunner(driver._config, driver, ignore, ignore)
    assert health_json(runner.status())["driver"] == {
        "requests": 0, "errors": 0, "timeouts": 0, "exceptions": 0, "last_ok_ns": None, "connected": True,
        "reconnects": 0,
    }  # fmt: skip
    await driver.aclose()


# -- RTU: one client per port, built by the first device to open it ---------------------------------

_ports = itertools.count()


def rtu_config(port: str, name: str, **kw: Any) -> ModbusRtuConfig:
    doc = {"name": name, "kind": "modbus_rtu", "port": port, "parity": "none", "tags": TAGS, **kw}
    return ModbusRtuConfig.model_validate(doc)


async def test_rtu_devices_share_one_client_each_with_its_own_limits_and_reopen_after_loss() -> None:
    port = f"/dev/ttyFAKE{next(_ports)}"
    made: list[ScriptedClient] = []

    def factory(_config: ModbusRtuConfig) -> ScriptedClient:
        gone = ConnectionException(f"Not connected[AsyncModbusSerialClient {port}:0]")
        made.append(ScriptedClient(*([None, ModbusIOException(NO_RESPONSE), gone] if not made else [])))
        return made[-1]

    fast = ModbusRtuDriver(rtu_config(port, "fast", timeout_ms=150, retries=0), client_factory=factory)
    slow = ModbusRtuDriver(
        rtu_config(port, "slow", unit_id=2, timeout_ms=800, retries=2), client_factory=factory
    )
    await fast.open()
    await slow.open()
    try:
        assert len(made) == 1  # the second device found the port open
        assert [r.value for r in await fast.read()] == [7, 8]
        assert reasons(await slow.read()) == ["timeout", "timeout"]
        assert made[0].limits == [(0.15, 0), (0.8, 2)]
        assert [unit for *_, unit in made[0].sent] == [1, 2]

        with pytest.raises(DriverIOError, match=f"^fast: {port}: Modbus Error: \\[Connection\\]"):
            await fast.read()
        made[0].drop()
        with pytest.raises(DriverIOError, match=f"^slow: serial port {port} lost$"):
            await slow.read()
        assert slow.health().timeouts == 1
        assert slow.health().bus is not None

        await fast.open()  # the port is reopened by path on a new client, for both devices
        assert len(made) == 2
        assert [r.value for r in await slow.read()] == [7, 8]
        health = slow.health()
        assert health.connected
        assert health.bus is not None
        assert (health.bus.users, health.bus.transactions) == (2, 8)
        assert health.status_lines()[1].startswith(f"bus {port}  users 2  transactions 8")
    finally:
        await fast.aclose()
        await slow.aclose()
    assert made[1].closed  # the last user closed the shared client
