"""The Modbus RTU driver: pymodbus's serial client behind the same plan/codec as Modbus TCP.

Every `[[devices]]` section naming one `port` shares one open serial client and one transaction
lock (`drivers.serial_bus`): one request on the wire at a time, handed out FIFO between devices,
with the inter-frame silence (3.5 characters) kept between transactions. Timeout and retries are
per device and set on the shared client for the duration of that device's transaction, so a dead
unit costs the others at most its own timeout per request. The first device to open a port builds
its client with the factory it was given (default: pymodbus's, from `adapter.py`).

Answers map as on TCP: an exception answer gives bad readings `modbus exception <code>: <name>`;
no answer gives bad readings `timeout` when nothing came back (a wrong unit ID or speed, a unit
that is off) and `no valid answer: bytes came back that are no whole frame ...` when bytes came
that framed no answer (cut short, noise, wiring), counted apart (`timeouts`, `bad_frames`); and
`MAX_SILENT_REQUESTS` unanswered requests in a row raise
`DriverIOError` so the supervisor backs off that device alone. The count of silent requests ends
only with an answer, not with a reopen: after the back-off a unit that is still silent is still
down at its first request (reopening a serial port always works, so resetting the count there
made a dead unit flap down/up every back-off). A port that vanishes (USB adapter
pulled) raises `DriverIOError`; `open()` reopens it by path once it is back.

RTU frames carry no transaction id: a slave that answers after its timeout would have that late
answer taken for the answer to the next request to it, and every value after belong to another
register. So after any attempt to a unit timed out (or its answer did not fit the request), the
next request to that unit waits one more `timeout_ms` first, as libmodbus does after a timeout;
a late answer arriving meanwhile finds no request waiting and is dropped (requests to other
units carry on: their answers are told apart by the unit id). An answer whose function code or
size does not fit its request is a bad `bad response: ...`, never decoded.
"""

from __future__ import annotations

import asyncio
import errno
import os
import termios
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Final

import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers import serial_bus
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.modbus.adapter import (
    BadAnswerError,
    ModbusPDU,
    NoAnswerError,
    SerialClientFactory,
    SerialLineWatch,
    SerialModbusClient,
    modbus_errors,
    pymodbus_serial_client,
    read_call,
)
from water_edge.drivers.modbus.config import ModbusRtuConfig
from water_edge.drivers.modbus.health import ModbusRtuHealth
from water_edge.drivers.modbus.plan import ReadRequest, plan_requests
from water_edge.drivers.modbus.poller import (
    MAX_SILENT_REQUESTS,
    PolledModbusDriver,
    RequestFailedError,
    RequestPoller,
)
from water_edge.drivers.modbus.writes import WriteTable, check_write, write_call

log = structlog.get_logger(__name__)

Call = Callable[[SerialModbusClient], Awaitable[ModbusPDU]]


class LateAnswerGuard:
    """After a unit's request timed out (or its answer did not fit), its next request waits one
    more timeout first: RTU answers carry no transaction id, and a late answer arriving meanwhile
    finds no request waiting and is dropped (libmodbus does the same). Other units are not held up."""

    def __init__(self) -> None:
        self._quiet_until: dict[int, float] = {}  # unit id -> monotonic time its late answer may come by

    def late_answer_possible(self, unit_id: int, timeout_s: float) -> None:
        self._quiet_until[unit_id] = time.monotonic() + timeout_s

    def wait_s(self, unit_id: int) -> float:
        """How long to wait before asking `unit_id` again (0 when no late answer can come)."""
        return max(0.0, self._quiet_until.pop(unit_id, 0.0) - time.monotonic())


class ModbusRtuDriver(PolledModbusDriver[ModbusRtuConfig]):
    """Polls one Modbus RTU slave (unit ID) on a serial line it may share with others."""

    config_model: ClassVar[type[DeviceConfig]] = ModbusRtuConfig

    def __init__(self, config: ModbusRtuConfig, client_factory: SerialClientFactory | None = None) -> None:
        self.name = config.name
        self._config = config
        # Builds the port's one client when this device is the first to open it.
        self._new_client = client_factory or pymodbus_serial_client
        self._poller = RequestPoller(config.name, plan_requests(config))
        self._port: serial_bus.SerialPort | None = None
        self._silent = 0
        counts = ("requests", "errors", "timeouts", "bad_frames", "exceptions", "writes")
        self._stats = dict.fromkeys(counts, 0)
        self._last_ok_ns: int | None = None
        self._late = LateAnswerGuard()

    def health(self) -> ModbusRtuHealth:
        s = self._stats
        return ModbusRtuHealth(
            requests=s["requests"],
            errors=s["errors"],
            timeouts=s["timeouts"],
            exceptions=s["exceptions"],
            writes=s["writes"],
            last_ok_ns=self._last_ok_ns,
            connected=self._connected(),
            bus=self._port.health() if self._port is not None else None,
            bad_frames=s["bad_frames"],
        )

    def _connected(self) -> bool:
        return self._port is not None and self._port.client is not None and bool(self._port.client.connected)

    # -- connection ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.aclose()
        cfg = self._config
        try:
            port = serial_bus.attach(cfg.port, cfg.line_settings)
        except serial_bus.PortSettingsConflictError as exc:
            raise DriverIOError(f"{self.name}: {exc}") from None
        self._port = port
        async with port.transaction():
            if port.client is not None and port.client.connected:
                return
            if port.client is not None:
                port.client.close()
                port.client = None
            client = self._new_client(cfg)
            failure: DriverIOError | None = None
            try:
                with modbus_errors(f"{self.name}: {cfg.port}"):
                    ok = await client.connect()
            except DriverIOError as exc:  # includes termios: line settings refused
                ok, failure = False, exc
                log.debug("modbus_rtu.open_failed", driver=self.name, error=str(exc))
            if not ok or not client.connected:
                client.close()
                await self._release()
                exists = os.path.exists(cfg.port)  # noqa: ASYNC240 - one stat, once per open
                raise DriverIOError(
                    f"{self.name}: serial port {cfg.port} {open_failure(cfg, exists, failure)}"
                )
            port.client = client
        log.info("modbus_rtu.opened", driver=self.name, port=cfg.port, unit_id=cfg.unit_id)

    async def _release(self) -> None:
        port, self._port = self._port, None
        if port is not None and serial_bus.detach(port) and port.client is not None:
            port.client.close()
            port.client = None

    async def aclose(self) -> None:
        await self._release()

    # -- reads -----------------------------------------------------------------------------------

    async def read(self) -> list[Reading]:
        return await self._poller.read(
            lambda request: self._transact(
                self._read_call(request), f"read {request.table} {request.start}", request.unit_id, request
            )
        )

    def _read_call(self, request: ReadRequest) -> Call:
        def call(client: SerialModbusClient) -> Awaitable[ModbusPDU]:
            return read_call(client, request.table, request.start, request.count, request.unit_id)

        return call

    async def _transact(
        self, call: Call, what: str, unit_id: int, request: ReadRequest | None = None
    ) -> ModbusPDU:
        """Run one request to `unit_id` on the shared port with this device's timeout and retries;
        an exception answer raises `ExceptionAnswerError` (a `DeviceError`) whose message starts
        `name: what`, an answer that does not fit `request` `RequestFailedError`."""
        port = self._port
        if port is None:
            raise DriverIOError(f"{self.name}: not open")
        cfg = self._config
        # Outside the port's lock: the other units on the line are not held up by this one.
        if late := self._late.wait_s(unit_id):
            await asyncio.sleep(late)
        async with port.transaction(cfg.inter_frame_s):
            client: SerialModbusClient | None = port.client
            if client is None or not client.connected:
                raise DriverIOError(f"{self.name}: serial port {cfg.port} lost")
            client.set_request_limits(cfg.timeout_ms / 1000, cfg.retries)
            self._stats["requests"] += 1
            try:
                with modbus_errors(f"{self.name}: {cfg.port}"):
                    response = await call(client)
            except NoAnswerError as exc:
                self._late_answer_possible(unit_id)
                self._stats["errors"] += 1
                came = _what_came_back(client)
                self._stats["bad_frames" if came == BAD_FRAMES else "timeouts"] += 1
                self._silent += 1
                if self._silent >= MAX_SILENT_REQUESTS:
                    raise DriverIOError(
                        # the same words however long it lasts: the reason every stand-in reading
                        # carries (a count in it made each poll's readings differ, past a deadband)
                        f"{self.name}: unit {unit_id} did not answer {MAX_SILENT_REQUESTS} requests in a row"
                        f"{came and ': ' + came}"
                    ) from exc
                if came == BAD_FRAMES:
                    raise RequestFailedError(f"no valid answer: {came}") from exc
                raise RequestFailedError(f"timeout{came and ' (' + came + ')'}") from exc
            except BadAnswerError as exc:
                self._late_answer_possible(unit_id)
                self._stats["errors"] += 1
                raise RequestFailedError(f"bad response: {exc.detail}") from exc
            except DriverIOError:
                self._stats["errors"] += 1
                raise
        if response.retries:  # an attempt before the one answered timed out: its answer may follow
            self._late_answer_possible(unit_id)
        try:
            return self._accept(response, f"{self.name}: {what}", request)
        except RequestFailedError:
            self._late_answer_possible(unit_id)
            raise

    def _late_answer_possible(self, unit_id: int) -> None:
        self._late.late_answer_possible(unit_id, self._config.timeout_ms / 1000)

    # -- writes (opt-in capability) ---------------------------------------------------------------

    async def write(
        self, unit_id: int, table: WriteTable, address: int, registers_or_bits: Sequence[int] | Sequence[bool]
    ) -> None:
        """Write holding registers (FC 6/16) or coils (FC 5/15); `DeviceError` on an exception
        answer (its `code`), `DriverIOError` when the unit does not answer."""
        fc, values = check_write(table, address, registers_or_bits)

        def call(client: SerialModbusClient) -> Awaitable[ModbusPDU]:
            return write_call(client, fc, address, values, unit_id)

        await self._transact_write(call, f"write {table} {address}", unit_id)
        self._stats["writes"] += 1

    async def read_back(
        self, unit_id: int, table: WriteTable, address: int, count: int = 1
    ) -> list[int] | list[bool]:
        """Read what a write left: holding registers (FC 3) or coils (FC 1)."""

        def call(client: SerialModbusClient) -> Awaitable[ModbusPDU]:
            if table == "coil":
                return client.read_coils(address, count=count, device_id=unit_id)
            return client.read_holding_registers(address, count=count, device_id=unit_id)

        response = await self._transact_write(call, f"read back {table} {address}", unit_id)
        return list(response.bits[:count]) if table == "coil" else list(response.registers)

    async def _transact_write(self, call: Call, what: str, unit_id: int) -> ModbusPDU:
        """`_transact` for the write path: a request without a usable answer is `DriverIOError`."""
        try:
            return await self._transact(call, what, unit_id)
        except RequestFailedError as failed:
            raise DriverIOError(f"{self.name}: {what}: {failed.reason}") from None


ECHO: Final = "the request came back as it was sent: the RS-485 adapter echoes, set local_echo = true"
BAD_FRAMES: Final = (
    "bytes came back that are no whole frame with a good CRC (noise on the line, wiring or line settings?)"
)


def _what_came_back(client: SerialModbusClient) -> str:
    """What the line handed back for a request that got no answer: "" when nothing came (a wrong
    unit ID or baud rate, a unit that is off), `ECHO` when the request itself came back (the
    adapter echoes; its echo can hide the answer from the framer, so without `local_echo` some
    reads time out and others do not), `BAD_FRAMES` when other bytes came (an answer cut short,
    noise: the framer found no whole frame with a good CRC in them)."""
    watch = getattr(client, "line_watch", None)
    if not isinstance(watch, SerialLineWatch):
        return ""
    if watch.echoed():
        return ECHO
    return BAD_FRAMES if watch.received else ""


def _os_error_code(failure: BaseException | None) -> int | None:
    """The OS error number behind `failure` (pyserial's SerialException, termios.error), if any."""
    seen = 0
    while failure is not None and seen < 4:
        code = getattr(failure, "errno", None)
        if isinstance(failure, termios.error) and failure.args and isinstance(failure.args[0], int):
            code = failure.args[0]
        if isinstance(code, int):
            return code
        failure, seen = failure.__cause__ or failure.__context__, seen + 1
    return None


def open_failure(cfg: ModbusRtuConfig, exists: bool, failure: BaseException | None) -> str:
    """Why a serial port would not open, in the words a technician acts on: a port that refuses the
    line settings (the OS says EINVAL) is not "in use, or no permission"."""
    if not exists:
        return "no such device"
    code = _os_error_code(failure)
    if code == errno.EINVAL:
        settings = f"{cfg.baudrate} {cfg.bytesize}{cfg.parity[0].upper()}{cfg.stopbits}"
        pty = os.path.realpath(cfg.port).startswith("/dev/pts/")
        hint = ' (a pseudo-terminal, as edge-sim\'s, takes parity = "none" only)' if pty else ""
        return (
            f"refuses the line settings {settings} (Invalid argument): check baudrate, parity and "
            f"stopbits against the device and its adapter{hint}"
        )
    if code in serial_bus.IN_USE_ERRNOS:
        return f"cannot be opened: {serial_bus.IN_USE_TEXT}"
    if code == errno.EACCES:
        return "cannot be opened: permission denied (the agent's user may not open it)"
    return "cannot be opened (in use, or no permission?)"
