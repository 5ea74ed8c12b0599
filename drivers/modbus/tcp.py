"""The Modbus TCP driver: one connection per device, its silence rule and its reconnect hooks.

Requests come from `plan.py` and their answers are decoded by `codec.py`; the client comes from
the factory the driver is given (default: pymodbus's, built in `adapter.py`, which also
translates what it raises). This module sends the requests and decides what an outcome means:

- an answer: good readings, stamped when it arrived;
- an exception answer: bad readings `modbus exception <code>: <name>` for that request's tags;
- no answer after `retries`: bad readings `timeout`; `MAX_SILENT_REQUESTS` such requests in a
  row mean the device is gone: the connection is closed and `DriverIOError` raised; the count
  ends only with an answer, so a PLC that accepts connections but stays silent is down again at
  its first request after the reconnect (no down/up flapping);
- refused, reset or closed connections: `DriverIOError` from `open()`/`read()`.

Gateways and PLCs hang up on their own: after an idle time without a request, or right after
each answer. A connection the device closed between two requests is opened again for the next
one, and a read whose connection drops while it waits is sent once more on a new connection
(reads change nothing; the close may cross the next request on the wire). Only when that
connect fails, or the read's second connection drops too, is the device down.

An answer is matched to its request by the transaction id, but pymodbus takes an answer with
transaction id 0 for any request (some devices and gateways never copy the id). On a connection
where a request timed out, such an answer may be that request's late answer, and every answer after
it would belong to the request before: so it is not used, and the request is sent once more on a
new connection, where no late answer can arrive.

pymodbus is never allowed to reconnect on its own (`reconnect_delay=0`, and a request is never
sent while disconnected, which would make pymodbus connect inside `execute`): the supervisor owns
reconnects and their backoff. Requests to one device go one at a time: pymodbus 3.16 serialises
`execute` behind a lock with a single response future, and its server handles one frame per
segment, so pipelining is not available (see docs/drivers/modbus_tcp.md for the measured cost).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.networds import network_error
from water_edge.core.reading import Reading
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.modbus.adapter import (
    BadAnswerError,
    ModbusClient,
    ModbusPDU,
    NoAnswerError,
    TcpClientFactory,
    modbus_errors,
    pymodbus_tcp_client,
    raise_for_error_pdu,
    read_call,
)
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.health import ModbusTcpHealth
from water_edge.drivers.modbus.plan import ReadRequest, plan_requests
from water_edge.drivers.modbus.poller import (
    MAX_SILENT_REQUESTS,
    PolledModbusDriver,
    RequestFailedError,
    RequestPoller,
)
from water_edge.drivers.modbus.writes import WriteTable, check_write, write_call

log = structlog.get_logger(__name__)


class ModbusTcpDriver(PolledModbusDriver[ModbusTcpConfig]):
    """Polls one Modbus TCP device (or gateway) with coalesced read requests."""

    config_model: ClassVar[type[DeviceConfig]] = ModbusTcpConfig

    def __init__(self, config: ModbusTcpConfig, client_factory: TcpClientFactory | None = None) -> None:
        self.name = config.name
        self._config = config
        self._new_client = client_factory or pymodbus_tcp_client
        self._poller = RequestPoller(config.name, plan_requests(config))
        self._client: ModbusClient | None = None
        self._connected = False
        self._inflight: asyncio.Future[ModbusPDU] | None = None
        self._silent = 0
        # A request on this connection went unanswered: its answer may still come, so an answer
        # without a transaction id cannot be told from it.
        self._late_answer_possible = False
        self._stats = {"requests": 0, "errors": 0, "timeouts": 0, "exceptions": 0, "reconnects": 0}
        self._last_ok_ns: int | None = None

    async def open(self) -> None:
        await self._connect()
        cfg = self._config
        log.info("modbus.connected", driver=self.name, host=cfg.host, port=cfg.port)

    async def _connect(self) -> None:
        await self.aclose()
        cfg = self._config
        client = self._new_client(cfg, self._on_connection)
        self._client = client
        try:
            with modbus_errors(self.name):
                ok = await client.connect()
        except DriverIOError as exc:
            ok = False
            log.debug("modbus.connect_failed", driver=self.name, error=str(exc))
        if not ok or not client.connected:
            client.close()
            self._client = None
            why = await why_unreachable(cfg.host, cfg.port, cfg.timeout_ms / 1000)
            raise DriverIOError(f"{self.name}: cannot connect to {cfg.host}:{cfg.port}: {why}")
        self._connected = True
        self._late_answer_possible = False

    async def _reconnect(self, why: str) -> None:
        """A new connection in place of one the device closed; `DriverIOError` if none is had."""
        self._stats["reconnects"] += 1
        log.debug("modbus.reconnecting", driver=self.name, why=why)
        await self._connect()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            client.close()

    def health(self) -> ModbusTcpHealth:
        s = self._stats
        return ModbusTcpHealth(
            requests=s["requests"],
            errors=s["errors"],
            timeouts=s["timeouts"],
            exceptions=s["exceptions"],
            last_ok_ns=self._last_ok_ns,
            connected=self._connected,
            reconnects=s["reconnects"],
        )

    async def read(self) -> list[Reading]:
        return await self._poller.read(self._execute)

    async def _execute(self, request: ReadRequest) -> ModbusPDU:
        """Send one request; return its answer, or raise `RequestFailedError`/`DriverIOError`."""
        await self._connected_client()
        try:
            return await self._send(request)
        except _DroppedError as dropped:
            await self._reconnect(dropped.why)
            return await self._send(request)

    async def _connected_client(self) -> ModbusClient:
        """The client, connected again if the device closed it since the last request."""
        if self._client is not None and not self._connected:
            await self._reconnect("closed by the device between requests")
        client = self._client
        if client is None or not self._connected:
            raise DriverIOError(f"{self.name}: not connected")
        return client

    async def _send(self, request: ReadRequest) -> ModbusPDU:
        client = self._client
        if client is None or not self._connected:
            raise DriverIOError(f"{self.name}: not connected")
        self._stats["requests"] += 1
        try:
            with modbus_errors(self.name):
                task = asyncio.ensure_future(
                    read_call(client, request.table, request.start, request.count, request.unit_id)
                )
                self._inflight = task
                try:
                    response = await task
                finally:
                    self._inflight = None
        except asyncio.CancelledError:
            # Cancelled by _on_connection (the connection dropped) unless we are being cancelled.
            current = asyncio.current_task()
            if self._connected or (current is not None and current.cancelling()):
                raise
            self._stats["errors"] += 1
            raise _DroppedError(f"{self.name}: connection lost") from None
        except (NoAnswerError, BadAnswerError) as exc:
            self._stats["errors"] += 1
            if not self._connected:
                raise _DroppedError(f"{self.name}: connection lost") from exc
            if isinstance(exc, BadAnswerError):
                raise RequestFailedError(f"bad response: {exc.detail}") from exc
            self._late_answer_possible = True
            self._stats["timeouts"] += 1
            self._silent += 1
            if self._silent >= MAX_SILENT_REQUESTS:
                await self.aclose()
                # the same words however long it lasts (a count made each stand-in reason differ)
                raise DriverIOError(
                    f"{self.name}: no answer to {MAX_SILENT_REQUESTS} requests in a row"
                ) from exc
            raise RequestFailedError("timeout") from exc
        except DriverIOError:
            self._stats["errors"] += 1
            await self.aclose()
            raise
        if self._late_answer_possible and not response.transaction_id:
            self._stats["errors"] += 1
            log.info("modbus.unverifiable_answer", driver=self.name, start=request.start)
            raise _DroppedError(
                f"{self.name}: answer without a transaction id after a timeout",
                why="an answer without a transaction id may be a late one",
            )
        return self._accept(response, f"{self.name}: read {request.table} {request.start}", request)

    # -- writes (opt-in capability; FC 5/6/15/16 only, see writes.py) -----------------------------

    async def write(
        self, unit_id: int, table: WriteTable, address: int, registers_or_bits: Sequence[int] | Sequence[bool]
    ) -> None:
        """Write holding registers (FC 6/16) or coils (FC 5/15); `DeviceError` on an exception
        answer (its `code`), `DriverIOError` when there is no answer or no connection."""
        fc, values = check_write(table, address, registers_or_bits)
        where = f"{self.name}: write {table} {address}"
        response = await self._call(lambda c: write_call(c, fc, address, values, unit_id), where)
        raise_for_error_pdu(response, where)

    async def read_back(
        self, unit_id: int, table: WriteTable, address: int, count: int = 1
    ) -> list[int] | list[bool]:
        """Read what a write left: holding registers (FC 3) or coils (FC 1)."""
        where = f"{self.name}: read back {table} {address}"
        if table == "coil":
            response = await self._call(
                lambda c: c.read_coils(address, count=count, device_id=unit_id), where
            )
        else:
            response = await self._call(
                lambda c: c.read_holding_registers(address, count=count, device_id=unit_id), where
            )
        raise_for_error_pdu(response, where)
        return list(response.bits[:count]) if table == "coil" else list(response.registers)

    async def _call(self, make: Callable[[ModbusClient], Awaitable[ModbusPDU]], where: str) -> ModbusPDU:
        client = await self._connected_client()
        try:
            with modbus_errors(where):
                response = await make(client)
        except DriverIOError:
            self._stats["errors"] += 1
            raise
        if self._late_answer_possible and not response.transaction_id:
            # Not sent again (a write); the next request goes on a new connection.
            self._stats["errors"] += 1
            self._connected = False
            client.close()
            raise DriverIOError(f"{where}: the answer carries no transaction id after a timeout: unconfirmed")
        return response

    def _on_connection(self, connected: bool) -> None:
        """pymodbus's connect/disconnect hook: a drop fails the request in flight at once."""
        if connected:
            return
        if self._inflight is not None:
            log.warning("modbus.connection_lost", driver=self.name)
        elif self._connected:  # between requests: the next one connects again
            log.debug("modbus.closed_by_device", driver=self.name)
        self._connected = False
        if self._inflight is not None:
            self._inflight.cancel()


class _DroppedError(DriverIOError):
    """The connection dropped while a request waited for its answer, or its answer cannot be
    trusted to be this request's; `why` is logged with the reconnect."""

    def __init__(self, message: str, why: str = "connection dropped during a read") -> None:
        super().__init__(message)
        self.why = why


async def why_unreachable(host: str, port: int, timeout_s: float) -> str:
    """pymodbus's connect() only says False; a field technician needs refused vs. timeout vs. DNS."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s (host down, firewall or wrong address?)"
    except socket.gaierror as exc:
        return network_error(exc, host)
    except OSError as exc:
        # asyncio wraps the errno in "Connect call failed (...)"; the errno's own text says more
        return (os.strerror(exc.errno) if exc.errno and exc.errno > 0 else network_error(exc, host)).lower()
    writer.close()
    return "connection failed during the Modbus handshake"
