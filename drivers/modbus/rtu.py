"""The Modbus RTU driver: pymodbus's serial client behind the same plan/codec as Modbus TCP.

Every `[[devices]]` section naming one `port` shares one open serial client and one transaction
lock (`drivers.serial_bus`): one request on the wire at a time, handed out FIFO between devices,
with the inter-frame silence (3.5 characters) kept between transactions. Timeout and retries are
per device and set on the shared client for the duration of that device's transaction, so a dead
unit costs the others at most its own timeout per request.

Answers map as on TCP: an exception answer gives bad readings `modbus exception <code>: <name>`;
no answer (or only garbage: pymodbus's framer discards bytes that are not a valid frame) gives
bad readings `timeout`, and `MAX_SILENT_REQUESTS` silent requests in a row raise
`DriverIOError` so the supervisor backs off that device alone. A port that vanishes (USB adapter
pulled) raises `DriverIOError`; `open()` reopens it by path once it is back.
"""

from __future__ import annotations

import os
import termios
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers import serial_bus
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.modbus.config import ModbusRtuConfig
from water_edge.drivers.modbus.plan import ReadRequest, plan_requests
from water_edge.drivers.modbus.poller import (
    MAX_SILENT_REQUESTS,
    PolledModbusDriver,
    RequestFailedError,
    RequestPoller,
)
from water_edge.drivers.modbus.writes import WriteTable, check_write, raise_for_exception, write_call

log = structlog.get_logger(__name__)

PARITY: Final = {"none": "N", "even": "E", "odd": "O"}


class ModbusRtuDriver(PolledModbusDriver[ModbusRtuConfig]):
    """Polls one Modbus RTU slave (unit ID) on a serial line it may share with others."""

    config_model: ClassVar[type[DeviceConfig]] = ModbusRtuConfig

    def __init__(self, config: ModbusRtuConfig) -> None:
        self.name = config.name
        self._config = config
        self._poller = RequestPoller(config.name, plan_requests(config))
        self._port: serial_bus.SerialPort | None = None
        self._silent = 0
        self._stats = {"requests": 0, "errors": 0, "timeouts": 0, "exceptions": 0, "writes": 0}
        self._last_ok_ns: int | None = None

    def health(self) -> dict[str, Any]:
        port = self._port.health() if self._port is not None else None
        return {**self._stats, "last_ok_ns": self._last_ok_ns, "connected": self._connected(), "bus": port}

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
        self._silent = 0
        async with port.transaction():
            if port.client is not None and port.client.connected:
                return
            if port.client is not None:
                port.client.close()
                port.client = None
            client = AsyncModbusSerialClient(
                cfg.port,
                framer=FramerType.RTU,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=PARITY[cfg.parity],
                stopbits=cfg.stopbits,
                timeout=cfg.timeout_ms / 1000,
                retries=cfg.retries,
                reconnect_delay=0,  # the supervisor owns reconnects
                name=cfg.port,
            )
            client.set_max_no_responses(1 << 30)
            try:
                ok = await client.connect()
            except (OSError, ModbusException, termios.error) as exc:  # termios: line settings refused
                ok = False
                log.debug("modbus_rtu.open_failed", driver=self.name, error=str(exc))
            if not ok or not client.connected:
                client.close()
                await self._release()
                why = (
                    "no such device"
                    if not os.path.exists(cfg.port)  # noqa: ASYNC240 - one stat, once per open
                    else "cannot be opened (in use, or no permission?)"
                )
                raise DriverIOError(f"{self.name}: serial port {cfg.port} {why}")
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
            lambda request: self._transact(self._read_call(request), f"read {request.table} {request.start}")
        )

    def _read_call(self, request: ReadRequest) -> Any:
        def call(client: AsyncModbusSerialClient) -> Any:
            method = {
                "holding": client.read_holding_registers,
                "input": client.read_input_registers,
                "coil": client.read_coils,
                "discrete": client.read_discrete_inputs,
            }[request.table]
            return method(request.start, count=request.count, device_id=request.unit_id)

        return call

    async def _transact(self, call: Any, what: str) -> ModbusPDU:
        """Run one request on the shared port with this device's timeout and retries."""
        port = self._port
        if port is None:
            raise DriverIOError(f"{self.name}: not open")
        cfg = self._config
        async with port.transaction(cfg.inter_frame_s):
            client = port.client
            if client is None or not client.connected:
                raise DriverIOError(f"{self.name}: serial port {cfg.port} lost")
            client.ctx.comm_params.timeout_connect = cfg.timeout_ms / 1000
            client.ctx.retries = cfg.retries
            self._stats["requests"] += 1
            try:
                response: ModbusPDU = await call(client)
            except ModbusIOException as exc:
                self._stats["errors"] += 1
                if "No response" not in str(exc):
                    raise RequestFailedError(f"bad response: {exc}") from exc
                self._stats["timeouts"] += 1
                self._silent += 1
                if self._silent >= MAX_SILENT_REQUESTS:
                    self._silent = 0
                    raise DriverIOError(
                        f"{self.name}: unit {cfg.unit_id} did not answer "
                        f"{MAX_SILENT_REQUESTS} requests in a row"
                    ) from exc
                raise RequestFailedError("timeout") from exc
            except (ConnectionException, OSError) as exc:
                self._stats["errors"] += 1
                raise DriverIOError(f"{self.name}: {cfg.port}: {exc}") from exc
            except ModbusException as exc:
                self._stats["errors"] += 1
                raise RequestFailedError(f"bad response: {exc}") from exc
        return self._accept(response)

    # -- writes (opt-in capability) ---------------------------------------------------------------

    async def write(
        self, unit_id: int, table: WriteTable, address: int, registers_or_bits: Sequence[int] | Sequence[bool]
    ) -> None:
        """Write holding registers (FC 6/16) or coils (FC 5/15); `DeviceError` on an exception
        answer (its `code`), `DriverIOError` when the unit does not answer."""
        fc, values = check_write(table, address, registers_or_bits)

        def call(client: AsyncModbusSerialClient) -> Any:
            return write_call(client, fc, address, values, unit_id)

        what = f"write {table} {address}"
        try:
            response = await self._transact_raw(call, what)
        except RequestFailedError as failed:
            raise DriverIOError(f"{self.name}: {what}: {failed.reason}") from None
        raise_for_exception(response, f"{self.name}: {what}")
        self._stats["writes"] += 1

    async def read_back(
        self, unit_id: int, table: WriteTable, address: int, count: int = 1
    ) -> list[int] | list[bool]:
        """Read what a write left: holding registers (FC 3) or coils (FC 1)."""

        def call(client: AsyncModbusSerialClient) -> Any:
            if table == "coil":
                return client.read_coils(address, count=count, device_id=unit_id)
            return client.read_holding_registers(address, count=count, device_id=unit_id)

        what = f"read back {table} {address}"
        try:
            response = await self._transact_raw(call, what)
        except RequestFailedError as failed:
            raise DriverIOError(f"{self.name}: {what}: {failed.reason}") from None
        raise_for_exception(response, f"{self.name}: {what}")
        return list(response.bits[:count]) if table == "coil" else list(response.registers)

    async def _transact_raw(self, call: Any, what: str) -> ModbusPDU:
        """`_transact` but an exception answer is returned, not raised (writes map it)."""
        try:
            return await self._transact(call, what)
        except RequestFailedError as failed:
            if failed.code is not None:
                raise DeviceError(f"{self.name}: {what}: {failed.reason}", code=failed.code) from None
            raise
