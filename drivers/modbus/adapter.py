"""Everything the Modbus drivers know about pymodbus: building its clients, and translating what they
raise and answer into the agent's errors.

The drivers receive a client factory (default: the real pymodbus client built here) and talk to
the client only through `ModbusClient`, so their error and reconnect logic has fast tests with a
fake client. What a request can end in:

- an answer (returned);
- an exception answer: `raise_for_error_pdu` raises `ExceptionAnswerError` (a `DeviceError`
  with the exception code and `modbus exception <code>: <name>`);
- a library or OS exception: `modbus_errors()` translates it through `EXCEPTION_MAP` into a
  `DriverIOError`, refined as `NoAnswerError` (no answer after the client's retries) or
  `BadAnswerError` (something came back that is not an answer to the request).
"""

from __future__ import annotations

import termios
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU, ModbusPDU

from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from water_edge.drivers.modbus.responses import HoldingRegistersAnswer, InputRegistersAnswer

__all__ = [
    "EXCEPTION_MAP",
    "BadAnswerError",
    "ExceptionAnswerError",
    "ModbusClient",
    "ModbusPDU",
    "NoAnswerError",
    "NoConnectionError",
    "SerialClientFactory",
    "SerialLineWatch",
    "SerialModbusClient",
    "TcpClientFactory",
    "exception_reason",
    "modbus_errors",
    "pymodbus_serial_client",
    "pymodbus_tcp_client",
    "raise_for_error_pdu",
    "read_call",
    "translate",
]

# -- errors -----------------------------------------------------------------------------------------

EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_reason(code: int) -> str:
    """The bad-reading reason for a Modbus exception answer, code first."""
    return f"modbus exception {code}: {EXCEPTION_NAMES.get(code, 'unknown')}"


class ExceptionAnswerError(DeviceError):
    """The device answered with a Modbus exception; `reason` is the text its tags' readings carry."""

    code: int

    def __init__(self, where: str, code: int) -> None:
        self.reason = exception_reason(code)
        super().__init__(f"{where}: {self.reason}", code=code)


class _LibraryError(DriverIOError):
    """A translated library exception; `detail` is the library's own text."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class NoAnswerError(_LibraryError):
    """No answer after the client's retries (bytes that never formed a valid frame count as none)."""


class BadAnswerError(_LibraryError):
    """What came back is not an answer to the request (wrong unit or transaction id, malformed)."""


class NoConnectionError(_LibraryError):
    """No usable connection: not connected, refused, reset, closed; a serial port gone or refusing its
    line settings."""


# Library exception type -> the agent's error; the first row that matches wins, so subclasses
# come before their bases. Anything else (a TypeError, a cancellation) is not translated.
EXCEPTION_MAP: Final[tuple[tuple[type[BaseException], type[_LibraryError]], ...]] = (
    (ConnectionException, NoConnectionError),
    (ModbusIOException, NoAnswerError),  # or BadAnswerError: see _unanswered
    (ModbusException, BadAnswerError),
    (TimeoutError, NoConnectionError),  # asyncio.TimeoutError is TimeoutError
    (OSError, NoConnectionError),
    (termios.error, NoConnectionError),  # a pty or adapter refusing the line settings
)
_MAPPED: Final = tuple(library for library, _ in EXCEPTION_MAP)


def _unanswered(exc: BaseException) -> bool:
    # pymodbus 3.16 raises ModbusIOException, built alike, both when every retry timed out and
    # when the answer carried another unit or transaction id (TransactionManager.execute); only
    # the message tells them apart. "No response" starts both timeout messages ("... after N
    # retries" and "... CLOSING CONNECTION"). This is the one place the drivers read a message.
    return "No response" in str(exc)


def translate(exc: BaseException, where: str) -> DriverIOError:
    """The agent's error for a library exception of one of `EXCEPTION_MAP`'s types."""
    agent = next((agent for library, agent in EXCEPTION_MAP if isinstance(exc, library)), None)
    if agent is None:
        raise TypeError(f"{type(exc).__name__} is not a pymodbus or I/O exception")
    if agent is NoAnswerError and not _unanswered(exc):
        agent = BadAnswerError
    return agent(f"{where}: {exc}", str(exc))


@contextmanager
def modbus_errors(where: str) -> Iterator[None]:
    """Translate what pymodbus (or the OS under it) raises inside the block; `where` starts the
    message (`<where>: <library text>`)."""
    try:
        yield
    except _MAPPED as exc:
        raise translate(exc, where) from exc


def raise_for_error_pdu(response: ModbusPDU, where: str) -> None:
    """Raise `ExceptionAnswerError` (code kept) if `response` is a Modbus exception answer."""
    if response.isError():
        raise ExceptionAnswerError(where, int(response.exception_code))


# -- clients ----------------------------------------------------------------------------------------


class ModbusClient(Protocol):
    """What the drivers use of a pymodbus async client."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> bool: ...

    def close(self) -> None: ...

    def read_holding_registers(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[ModbusPDU]: ...

    def read_input_registers(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[ModbusPDU]: ...

    def read_coils(self, address: int, *, count: int = ..., device_id: int = ...) -> Awaitable[ModbusPDU]: ...

    def read_discrete_inputs(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[ModbusPDU]: ...

    def write_coil(self, address: int, value: bool, *, device_id: int = ...) -> Awaitable[ModbusPDU]: ...

    def write_register(self, address: int, value: int, *, device_id: int = ...) -> Awaitable[ModbusPDU]: ...

    def write_coils(
        self, address: int, values: Sequence[bool], *, device_id: int = ...
    ) -> Awaitable[ModbusPDU]: ...

    def write_registers(
        self, address: int, values: Sequence[int], *, device_id: int = ...
    ) -> Awaitable[ModbusPDU]: ...


def read_call(
    client: ModbusClient, table: str, address: int, count: int, unit_id: int
) -> Awaitable[ModbusPDU]:
    """The read of `count` registers or bits of `table` ("holding", "input", "coil", "discrete")."""
    method = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[table]
    return method(address, count=count, device_id=unit_id)


class SerialModbusClient(ModbusClient, Protocol):
    """A client shared by every device on one serial port: each transaction sets its own limits."""

    def set_request_limits(self, timeout_s: float, retries: int) -> None: ...


# A TCP client for a device's config; the callable is pymodbus's connect/disconnect hook.
TcpClientFactory = Callable[[ModbusTcpConfig, Callable[[bool], None]], ModbusClient]
SerialClientFactory = Callable[[ModbusRtuConfig], SerialModbusClient]

PARITY: Final = {"none": "N", "even": "E", "odd": "O"}
# pymodbus's own "close after N silent requests" is switched off: the drivers judge silence.
_NEVER: Final = 1 << 30


def pymodbus_tcp_client(
    config: ModbusTcpConfig,
    on_connection: Callable[[bool], None],
    trace_packet: Callable[[bool, bytes], bytes] | None = None,
) -> ModbusClient:
    """The real client; pymodbus never reconnects by itself (the supervisor owns reconnects).
    `trace_packet`: pymodbus's hook on every frame sent and every chunk received."""
    client = AsyncModbusTcpClient(
        config.host,
        port=config.port,
        timeout=config.timeout_ms / 1000,
        retries=config.retries,
        reconnect_delay=0,  # 0 = pymodbus never reconnects by itself
        trace_packet=trace_packet,
        trace_connect=on_connection,
        name=config.name,
    )
    client.set_max_no_responses(_NEVER)
    _register_answers(client)
    return client


class _HuntingRtuFramer(FramerRTU):
    """pymodbus's RTU framer, but a candidate frame start that cannot be the answer is passed over
    for the next byte instead of the whole buffer being thrown away or waited on.

    pymodbus 3.16 hunts for a frame start past bytes that cannot begin one, yet at the first
    candidate whose CRC fails it drops everything received, and a candidate whose implied length
    has not all arrived is waited on until the request times out. One byte of line noise in front
    of an answer (the 0x00 or 0xFF many RS-485 transceivers put on the line as it turns round)
    reads as a candidate: `00 01 03 02 ..` as unit 0 asking 3 bytes of coils (its CRC fails),
    `00 02 83 02 ..` (unit 2's exception answer) as unit 0 with 131 bytes of discrete inputs,
    which never come. Both were a timeout for an intact answer. So a candidate is passed over
    when its CRC fails, and when it is not all here yet but cannot be the answer: its unit ID is
    not the one asked (`handleFrame` is told it). A candidate of the unit asked that is not all
    here is waited on, unless a whole frame of that unit with a good CRC ends exactly where the
    received bytes end (a noise byte that happened to equal the unit ID). The good path is
    pymodbus's: the first candidate is the frame and its CRC is checked once.

    What came back beginning with the request itself (an echoing adapter, `local_echo` unset) is
    framed as pymodbus does, without passing over candidates of another unit: hunting through the
    echo would read the answers to reads, but the echo of a write (FC 5/6/15/16: an answer is
    a copy of the request's first bytes) is taken for its answer and the real answer for the next
    request's. Such a request times out and its reading names the echo (`rtu._what_came_back`).
    """

    def __init__(self, decoder: DecodePDU, line_watch: SerialLineWatch | None = None) -> None:
        super().__init__(decoder)
        self._line_watch = line_watch
        self._asked = 0  # the unit ID of the request in flight (0: not known, any)

    def handleFrame(self, data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:  # noqa: N802 - pymodbus names it
        echoed = self._line_watch is not None and self._line_watch.echoed()
        self._asked = 0 if echoed else exp_devid
        return super().handleFrame(data, exp_devid, exp_tid)

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        data_len, asked = len(data), self._asked
        waiting: int | None = None  # the first candidate of the unit asked that is not all here
        start = 0
        for start in range(data_len):
            if data_len - start < self.MIN_SIZE:
                break
            if not (pdu_class := self.decoder.lookupPduClass(data[start:])):
                continue
            size = pdu_class.calculateRtuFrameSize(data[start:])
            if not size or data_len < start + size:  # not all here yet
                if not asked:  # any unit's answer is taken: wait for this one, as pymodbus does
                    waiting = start
                    break
                if waiting is None and data[start] == asked:
                    waiting = start  # it may be the answer: wait for more, keeping it
                continue
            crc_start = start + size - 2
            crc_ok = FramerRTU.check_CRC(
                data[start:crc_start], int.from_bytes(data[crc_start : crc_start + 2], "big")
            )
            if crc_ok and (waiting is None or (data[start] == asked and start + size == data_len)):
                return data_len, int(data[start]), 0, data[start + 1 : crc_start]
        else:
            start = data_len
        # Drop the bytes ruled out as frame starts; wait for more (a timeout ends the wait).
        return start if waiting is None else waiting, 0, 0, self.EMPTY


class SerialLineWatch:
    """What the serial line handed back for the request in flight (pymodbus's packet hook sees
    every frame sent and every chunk received), so that a timeout can say what came instead of an
    answer: the request itself (a 2-wire RS-485 adapter that hears its own transmission, without
    `local_echo`; pymodbus strips the echo before this hook when it is set), or other bytes."""

    KEPT: Final = 512  # bytes of a request's received data kept (line noise can be endless)

    def __init__(self) -> None:
        self.sent = b""
        self.received = b""

    def on_packet(self, sending: bool, packet: bytes) -> bytes:
        if sending:
            self.sent, self.received = packet, b""
        elif len(self.received) < self.KEPT:
            self.received += packet[: self.KEPT - len(self.received)]
        return packet

    def echoed(self) -> bool:
        """The last request came back as it was sent."""
        return bool(self.sent) and self.received.startswith(self.sent)


class _SharedSerialClient(AsyncModbusSerialClient):
    line_watch: SerialLineWatch

    def set_request_limits(self, timeout_s: float, retries: int) -> None:
        # Unavoidable internals: pymodbus 3.16 fixes timeout and retries when the client is built
        # (its transaction manager copies them; `client.comm_params` is a detached copy) and has
        # no setter, yet one serial port carries exactly one client for every device on it, each
        # with its own timeout_ms and retries. pymodbus is pinned to 3.16.x, and
        # tests/test_modbus_adapter.py fails if these two attributes stop taking effect.
        self.ctx.comm_params.timeout_connect = timeout_s
        self.ctx.retries = retries


def pymodbus_serial_client(config: ModbusRtuConfig) -> SerialModbusClient:
    """The real RTU client for the port `config` names, with that device's line settings; its
    `line_watch` sees what the line hands back."""
    watch = SerialLineWatch()
    client = _SharedSerialClient(
        config.port,
        framer=FramerType.RTU,
        baudrate=config.baudrate,
        bytesize=config.bytesize,
        parity=PARITY[config.parity],
        stopbits=config.stopbits,
        timeout=config.timeout_ms / 1000,
        retries=config.retries,
        reconnect_delay=0,  # the supervisor owns reconnects
        handle_local_echo=config.local_echo,
        name=config.port,
        trace_packet=watch.on_packet,
    )
    client.line_watch = watch
    client.set_max_no_responses(_NEVER)
    # Unavoidable internals, as in set_request_limits: pymodbus 3.16 builds the framer from
    # `FramerType` and takes no framer instance; tests/test_modbus_rtu.py's noise test fails if
    # this stops taking effect.
    client.ctx.framer = _HuntingRtuFramer(client.ctx.framer.decoder, watch)
    _register_answers(client)
    return client


def _register_answers(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> None:
    """Register reads answered as `drivers.modbus.responses` decodes them."""
    client.register(HoldingRegistersAnswer)
    client.register(InputRegistersAnswer)
