"""The one translation of pymodbus into the agent's errors: every library exception type the
table names, exception answers, and the two places that lean on pymodbus internals or text."""

from __future__ import annotations

import asyncio
import termios
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.exceptions import (
    ConnectionException,
    ModbusException,
    ModbusIOException,
    NotImplementedException,
    ParameterException,
)
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.drivers.modbus.adapter import (
    EXCEPTION_MAP,
    BadAnswerError,
    ExceptionAnswerError,
    NoAnswerError,
    NoConnectionError,
    modbus_errors,
    pymodbus_serial_client,
    pymodbus_tcp_client,
    raise_for_error_pdu,
)
from water_edge.drivers.modbus.config import ModbusRtuConfig, ModbusTag, ModbusTcpConfig
from water_edge.drivers.modbus.plan import ReadRequest, plan
from water_edge.drivers.modbus.poller import answer_mismatch

# What pymodbus 3.16 raises, as it words it (transaction/transaction.py, client/*.py).
NO_RESPONSE = "No response received after 1 retries, continue with next request"
CLOSING = "ERROR: No response received of the last requests (default: retries+3), CLOSING CONNECTION."
OTHER_UNIT = "ERROR: request uses device id=1 but received 2."
OTHER_TRANSACTION = "ERROR: request uses transaction id=7 but received 8."


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionException("Not connected[AsyncModbusTcpClient 10.0.0.5:502]"), NoConnectionError),
        (ModbusIOException(NO_RESPONSE), NoAnswerError),
        (ModbusIOException(CLOSING), NoAnswerError),
        (ModbusIOException(OTHER_UNIT), BadAnswerError),
        (ModbusIOException(OTHER_TRANSACTION), BadAnswerError),
        (ModbusException("Unknown response 99"), BadAnswerError),
        (ParameterException("count"), BadAnswerError),
        (NotImplementedException("decode"), BadAnswerError),
        (TimeoutError(), NoConnectionError),  # asyncio.TimeoutError is the same class
        (ConnectionResetError(104, "Connection reset by peer"), NoConnectionError),
        (BrokenPipeError(32, "Broken pipe"), NoConnectionError),
        (OSError(5, "Input/output error"), NoConnectionError),
        (termios.error(22, "Invalid argument"), NoConnectionError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_each_library_exception_becomes_a_driver_io_error(exc: BaseException, expected: type) -> None:
    with pytest.raises(DriverIOError) as caught, modbus_errors("plc: /dev/ttyUSB0"):
        raise exc
    assert type(caught.value) is expected
    assert str(caught.value) == f"plc: /dev/ttyUSB0: {exc}"
    assert caught.value.detail == str(exc)  # type: ignore[attr-defined]
    assert caught.value.__cause__ is exc


def test_the_table_names_each_library_type_once_subclasses_first() -> None:
    types = [library for library, _ in EXCEPTION_MAP]
    assert len(set(types)) == len(types)
    for i, earlier in enumerate(types):
        assert not any(issubclass(later, earlier) and later is not earlier for later in types[i + 1 :]), (
            earlier
        )


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("holding"), asyncio.CancelledError()])
def test_anything_else_passes_through_untranslated(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as caught, modbus_errors("plc"):
        raise exc
    assert caught.value is exc


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (1, "modbus exception 1: illegal function"),
        (2, "modbus exception 2: illegal data address"),
        (3, "modbus exception 3: illegal data value"),
        (4, "modbus exception 4: server device failure"),
        (6, "modbus exception 6: server device busy"),
        (11, "modbus exception 11: gateway target device failed to respond"),
        (99, "modbus exception 99: unknown"),
    ],
)
def test_an_exception_answer_is_a_device_error_with_its_code(code: int, text: str) -> None:
    with pytest.raises(DeviceError) as caught:
        raise_for_error_pdu(ExceptionResponse(3, code), "plc: write holding 8")
    assert isinstance(caught.value, ExceptionAnswerError)
    assert caught.value.code == code
    assert caught.value.reason == text
    assert str(caught.value) == f"plc: write holding 8: {text}"


def test_an_ordinary_answer_passes() -> None:
    raise_for_error_pdu(ReadHoldingRegistersResponse(registers=[1, 2]), "plc")


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections, reads what is sent, and never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_what_pymodbus_really_raises_for_silence_is_no_answer(silent_server: int) -> None:
    # The one distinction made on message text (adapter._unanswered): checked against the real
    # client, so a pymodbus release that rewords it fails here, not on site.
    config = ModbusTcpConfig.model_validate({
        "name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": silent_server,
        "timeout_ms": 50, "retries": 0, "tags": [{"name": "v", "address": 0}],
    })  # fmt: skip
    client = pymodbus_tcp_client(config, lambda _connected: None)
    assert await client.connect()
    try:
        with pytest.raises(NoAnswerError, match="No response"), modbus_errors("plc"):
            await client.read_holding_registers(0, count=1, device_id=1)
        assert client.connected  # silence alone never closes the connection (the driver decides)
    finally:
        client.close()


async def test_request_limits_reach_the_shared_serial_client() -> None:
    # set_request_limits writes pymodbus internals (no public setter in 3.16); this fails when a
    # pymodbus release moves them, instead of every device silently using the first one's limits.
    config = ModbusRtuConfig.model_validate({
        "name": "plc", "kind": "modbus_rtu", "port": "/dev/ttyUSB0", "timeout_ms": 150, "retries": 0,
        "tags": [{"name": "v", "address": 0}],
    })  # fmt: skip
    client = pymodbus_serial_client(config)
    client.set_request_limits(0.4, 2)
    assert client.ctx.comm_params.timeout_connect == 0.4  # type: ignore[attr-defined]
    assert client.ctx.retries == 2  # type: ignore[attr-defined]


def _request(table: str, count: int) -> ReadRequest:
    kind = "bool" if table in ("coil", "discrete") else "uint16"
    tags = [
        ModbusTag.model_validate({"name": f"t{i}", "table": table, "address": i, "type": kind})
        for i in range(count)
    ]
    (request,) = plan(tags, default_unit=1, max_registers=125, max_bits=2000, max_gap=0)
    return request


@pytest.mark.parametrize(
    ("table", "count", "response", "problem"),
    [
        ("holding", 2, ReadHoldingRegistersResponse(registers=[1, 2]), None),
        ("holding", 2, ReadHoldingRegistersResponse(registers=[1, 2, 3]), "3 registers for a request of 2"),
        ("holding", 2, ReadHoldingRegistersResponse(registers=[1]), "1 registers for a request of 2"),
        (
            "holding",
            2,
            ReadInputRegistersResponse(registers=[1, 2]),
            "answer to function 4, request was function 3",
        ),
        ("holding", 2, ExceptionResponse(3, 6), None),  # busy: an exception answer, not a mismatch
        ("holding", 2, ExceptionResponse(4, 2), "answer to function 4, request was function 3"),
        ("coil", 10, ReadCoilsResponse(bits=[True] * 16), None),  # bits come in whole bytes
        ("coil", 10, ReadCoilsResponse(bits=[True] * 8), "1 data bytes for 10 bits (expected 2)"),
        ("discrete", 3, ReadCoilsResponse(bits=[True] * 8), "answer to function 1, request was function 2"),
    ],
)
def test_an_answer_that_does_not_fit_its_request_is_named(
    table: str, count: int, response: Any, problem: str | None
) -> None:
    assert answer_mismatch(_request(table, count), response) == problem


def _rtu_client() -> Any:
    """The RTU client the driver and `scan modbus` build (its framer and line watch), not opened."""
    config = ModbusRtuConfig.model_validate(
        {"name": "rtu", "kind": "modbus_rtu", "port": "/dev/null", "tags": [{"name": "t", "address": 0}]}
    )
    return pymodbus_serial_client(config)


def _rtu_framer() -> Any:
    return _rtu_client().ctx.framer


async def test_the_rtu_framer_passes_over_a_noise_byte_that_implies_a_frame_longer_than_what_came() -> None:
    # 0x00 then unit 2's exception answer: 00 02 83 .. reads as unit 0 with 131 bytes of discrete
    # inputs. pymodbus waited for them (a timeout); a candidate of a unit not asked is passed over.
    from water_edge.sim.rtu import frame

    answer = frame(2, bytes([0x83, 2]))
    used, pdu = _rtu_framer().handleFrame(b"\x00" + answer, 2, 0)
    assert isinstance(pdu, ExceptionResponse)
    assert (used, pdu.exception_code, pdu.dev_id) == (len(answer) + 1, 2, 2)
    # A noise byte equal to the unit ID: 02 02 83 .. is unit 2 with 131 bytes to come; the whole
    # answer of unit 2 with a good CRC ending where the bytes end is taken.
    _, pdu = _rtu_framer().handleFrame(b"\x02" + answer, 2, 0)
    assert isinstance(pdu, ExceptionResponse)
    assert pdu.exception_code == 2
    # The start of a long answer of the unit asked is waited for, not hunted through.
    registers = frame(1, bytes([0x03, 250]) + bytes(range(250)))
    assert _rtu_framer().handleFrame(b"\x00" + registers[:100], 1, 0) == (1, None)
    _, pdu = _rtu_framer().handleFrame(b"\x00" + registers, 1, 0)
    assert pdu is not None
    assert list(pdu.registers)[:2] == [0x0001, 0x0203]


async def test_the_rtu_framer_does_not_hunt_through_an_echo_without_local_echo() -> None:
    # Bytes that begin with the request itself: an echoing adapter, local_echo unset. The echo of a
    # write is a valid answer, so hunting through echoes would misframe writes: the request is
    # left to time out, and its reading names the echo (as before the hunting past other units).
    from water_edge.sim.rtu import frame

    client = _rtu_client()
    request = frame(2, bytes([0x03, 0, 0, 0, 1]))
    client.line_watch.on_packet(True, request)
    received = client.line_watch.on_packet(False, request + b"\x00" + frame(2, bytes([0x83, 2])))
    assert client.ctx.framer.handleFrame(received, 2, 0)[1] is None
