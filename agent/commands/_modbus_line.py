"""One Modbus connection for `edge-agent scan modbus`, TCP or RTU: `send` and `ask` send one
request and raise what `drivers.modbus.scan` takes (no answer, a bad answer, an exception answer,
the connection closed), telling late and stray answers from the answer to the request in flight."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from water_edge.drivers.modbus.config import Table


class DroppedError(Exception):
    """The connection dropped while a request waited for its answer (or its answer cannot be
    trusted to be this request's): it is sent once more on a new connection."""


class Line:
    """One client, TCP or RTU, and `send`/`ask`: one request, raising the adapter's errors as
    `drivers.modbus.scan` takes them.

    On TCP a connection the device closes (gateways hang up after each answer, or on a request
    they refuse) is opened again and the request sent once more; closed again, that request gets
    `NoConnectionError` (`BadAnswerError` if its answer came but did not decode: pymodbus drops the
    connection then), and a connection that cannot be opened again ends the scan. A request waiting
    on a connection that drops is not left to its timeout. A timeout during which bytes came back
    that answer no request sent is a `StrayAnswerError` saying what they were. After a timeout an
    answer without a transaction ID may be that request's late answer, as in `drivers.modbus.tcp`:
    it is not used, and the request is sent once more on a new connection. On RTU, where no answer
    carries one, a unit whose request timed out (or was misanswered) is asked again only after one
    more timeout (`_on_serial_line`)."""

    def __init__(self, where: str, tcp: Any = None, rtu: Any = None) -> None:
        from water_edge.drivers.modbus.rtu import LateAnswerGuard

        self.client: Any = None
        self.where, self._tcp, self._rtu = where, tcp, rtu
        self._inflight: asyncio.Task[Any] | None = None
        self._late_answer_possible = False
        self._sent: set[tuple[int, int]] = set()  # (transaction ID, unit ID) of requests on this connection
        self._current = (0, 0)
        self._stray = ""  # what came back during the request in flight that answers no request
        self._answer = b""  # the frame that came back for the request in flight
        self._late = LateAnswerGuard()  # RTU: no answer carries a transaction ID
        self.late_answers = False
        self.echoes = 0  # RTU: unanswered requests whose own bytes came back (the adapter echoes)
        self.line_bytes = b""  # RTU: the first bytes that came back instead of an answer
        self.cut_short: list[int] = []  # RTU: unit IDs in whose turn bytes came that are no whole answer

    @property
    def serial(self) -> bool:
        return self._rtu is not None

    def on_connection(self, up: bool) -> None:
        if not up and self._inflight is not None:
            self._inflight.cancel()

    def on_packet(self, sending: bool, packet: bytes) -> bytes:
        """pymodbus's packet hook (it could change the bytes; this only looks): which request is in
        flight, and what came back for it."""
        if sending:
            self._current = (int.from_bytes(packet[:2], "big"), packet[6])
            self._sent.add(self._current)
            return packet
        for ids, frame in _mbap_frames(packet):
            if ids is None:
                self._stray = self._stray or (
                    f"answers, but not Modbus TCP ({_preview(frame)}): another protocol on this port?"
                )
            elif _answers(ids, self._current):
                self._answer = frame
            elif ids in self._sent:
                self.late_answers = True  # to an earlier request, after its timeout
            else:
                self._stray = self._stray or _stray_text(ids, self._current)
        return packet

    async def send(self, unit_id: int, table: str, address: int, count: int) -> Any:
        """One read; `BadAnswerError` for an answer that does not fit it (on a serial line often
        another read's late answer: the unit's own may still come)."""
        from water_edge.drivers.modbus.adapter import BadAnswerError, read_call
        from water_edge.drivers.modbus.scan import read_checked

        async def read(unit_id: int, table: str, address: int, count: int) -> Any:
            return await self._request(
                unit_id, lambda client: read_call(client, table, address, count, unit_id)
            )

        try:
            return await read_checked(read, unit_id, cast("Table", table), address, count)
        except BadAnswerError:
            self._late_answer_may_come(unit_id)
            raise

    async def ask(self, unit_id: int) -> Any:
        """Read Device Identification, basic objects (function 43/14)."""
        return await self._request(
            unit_id,
            lambda client: client.read_device_information(read_code=1, object_id=0, device_id=unit_id),
        )

    async def _request(self, unit_id: int, call: Callable[[Any], Awaitable[Any]]) -> Any:
        from water_edge.drivers.modbus.adapter import BadAnswerError, NoConnectionError

        where = f"{self.where} unit {unit_id}"
        if self._rtu is not None:
            await asyncio.sleep(max(self._late.wait_s(unit_id), self._rtu.inter_frame_s))
            return await self._on_serial_line(where, unit_id, call)
        try:
            return await self._attempt(where, call)
        except DroppedError:
            pass  # closed while the request was on its way, or crossing a close after the last answer
        try:
            return await self._attempt(where, call)
        except DroppedError:
            if self._answer:
                detail = f"the answer does not decode ({self._answer[:16].hex(' ')})"
                raise BadAnswerError(f"{where}: {detail}", detail) from None
            raise NoConnectionError(f"{where}: the device closes the connection", "closed") from None

    async def _attempt(self, where: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """One try on the TCP connection, opened again first if the device closed it."""
        from water_edge.drivers.modbus.adapter import NoAnswerError, NoConnectionError, raise_for_error_pdu
        from water_edge.drivers.modbus.scan import StrayAnswerError

        if not self.client.connected:
            await self._connect_again()
        self._stray, self._answer = "", b""
        try:
            response = await self._in_flight(where, call)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.client.connected or (current is not None and current.cancelling()):
                raise  # not on_connection's: the scan itself is cancelled (Ctrl-C)
            raise DroppedError from None
        except NoConnectionError as exc:
            raise DroppedError from exc
        except NoAnswerError as exc:
            if not self.client.connected:
                raise DroppedError from exc
            self._late_answer_possible = True
            if self._stray:
                raise StrayAnswerError(f"{where}: {self._stray}", self._stray) from exc
            raise
        if self._late_answer_possible and not response.transaction_id:
            self.client.close()
            raise DroppedError
        raise_for_error_pdu(response, where)
        return response

    async def _in_flight(self, where: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """`call`, as the task `on_connection` cancels when the connection drops."""
        from water_edge.drivers.modbus.adapter import modbus_errors

        with modbus_errors(where):
            self._inflight = asyncio.ensure_future(call(self.client))
            try:
                return await self._inflight
            finally:
                self._inflight = None

    async def _on_serial_line(self, where: str, unit_id: int, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """One request on the serial line. RTU answers carry no transaction ID: after a unit's
        request timed out or its answer did not fit, the next request to it waits one more timeout,
        so that a late answer finds no request waiting and is dropped (as the RTU driver does)."""
        from water_edge.core.errors import DriverIOError
        from water_edge.drivers.modbus.adapter import (
            BadAnswerError,
            NoAnswerError,
            NoConnectionError,
            raise_for_error_pdu,
        )

        try:
            response = await self._in_flight(where, call)
        except NoConnectionError as exc:  # the port itself failed (an adapter unplugged): no unit can answer
            raise DriverIOError(f"{where}: the serial port fails: {exc.detail}") from exc
        except (NoAnswerError, BadAnswerError):
            self._late_answer_may_come(unit_id)
            watch = self.client.line_watch
            if watch.echoed():
                self.echoes += 1
            elif watch.received:
                self.line_bytes = self.line_bytes or watch.received
                if unit_id not in self.cut_short:
                    self.cut_short.append(unit_id)
            raise
        raise_for_error_pdu(response, where)
        return response

    def _late_answer_may_come(self, unit_id: int) -> None:
        if self._rtu is not None:
            self._late.late_answer_possible(unit_id, self._rtu.timeout_ms / 1000)

    async def _connect_again(self) -> None:
        """A new connection in place of one the device closed; a plain `DriverIOError` (the scan
        ends) when there is none."""
        from water_edge.core.errors import DriverIOError
        from water_edge.drivers.modbus.tcp import why_unreachable

        self.client.close()
        self._late_answer_possible = False
        self._sent.clear()  # pymodbus numbers transactions from 1 again on a new connection
        if not await _connected(self.client):
            why = await why_unreachable(self._tcp.host, self._tcp.port, self._tcp.timeout_ms / 1000)
            raise DriverIOError(f"cannot connect to {self._tcp.endpoint_text()} again: {why}")

    def close(self) -> None:
        self.client.close()


async def _connected(client: Any) -> bool:
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.modbus.adapter import modbus_errors

    try:
        with modbus_errors("connect"):
            return bool(await client.connect()) and bool(client.connected)
    except DriverIOError:
        return False


def _refused_settings(rtu: Any, exc: BaseException) -> str:
    refused = exc.__cause__.args[-1] if exc.__cause__ is not None and exc.__cause__.args else exc
    pty = os.path.realpath(rtu.port).startswith("/dev/pts/")
    hint = ": a pseudo-terminal takes --parity none only" if pty and rtu.parity != "none" else ""
    settings = rtu.endpoint_text().removeprefix(rtu.port + " ")
    return f"cannot open {rtu.port}: it refuses --baudrate/--parity/--stopbits {settings} ({refused}){hint}"


def _mbap_frames(data: bytes) -> Iterator[tuple[tuple[int, int] | None, bytes]]:
    """The complete Modbus TCP frames at the start of `data` as ((transaction ID, unit ID), frame);
    (None, the rest) where the bytes cannot be Modbus TCP (protocol ID not 0, or a length no frame
    has)."""
    at = 0
    while len(data) - at >= 8:
        transaction, protocol, length = struct.unpack_from(">HHH", data, at)
        if protocol or not 2 <= length <= 254:
            yield None, data[at:]
            return
        end = at + 6 + length
        if end > len(data):
            return
        yield (transaction, data[at + 6]), data[at:end]
        at = end


def _answers(ids: tuple[int, int], request: tuple[int, int]) -> bool:
    """Whether pymodbus takes a frame with `ids` for the answer to `request`: transaction ID 0 and
    a request to unit 0 match any."""
    return ids[0] in (0, request[0]) and request[1] in (0, ids[1])


def _stray_text(ids: tuple[int, int], request: tuple[int, int]) -> str:
    if ids[0] in (0, request[0]):
        return f"answers as unit ID {ids[1]}"
    return "answers with a transaction ID no request carried"


def _preview(data: bytes) -> str:
    text = data[:40].decode("latin-1").split("\r")[0].split("\n")[0]
    return repr(text) if text.isprintable() and len(text) >= 4 else data[:16].hex(" ")


async def open_line(settings: Any) -> Line:
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.modbus.adapter import pymodbus_serial_client, pymodbus_tcp_client
    from water_edge.drivers.modbus.config import ModbusTcpConfig
    from water_edge.drivers.modbus.tcp import why_unreachable

    if isinstance(settings, ModbusTcpConfig):
        line = Line(f"Modbus TCP {settings.endpoint_text()}", tcp=settings)
        line.client = pymodbus_tcp_client(settings, line.on_connection, trace_packet=line.on_packet)
        if not await _connected(line.client):
            why = await why_unreachable(settings.host, settings.port, settings.timeout_ms / 1000)
            raise DriverIOError(f"cannot connect to {settings.endpoint_text()}: {why}")
        return line
    line = Line(f"Modbus RTU {settings.endpoint_text()}", rtu=settings)
    line.client = pymodbus_serial_client(settings)
    await _open_serial_port(line.client, settings)
    line.client.set_request_limits(settings.timeout_ms / 1000, 0)
    return line


async def _open_serial_port(client: Any, rtu: Any) -> None:
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.modbus.adapter import modbus_errors

    try:
        with modbus_errors(rtu.port):
            opened = await client.connect()
    except DriverIOError as exc:  # termios: the port refuses the line settings
        raise DriverIOError(_refused_settings(rtu, exc)) from None
    if not opened:
        raise DriverIOError(f"cannot open {rtu.port} (missing, busy, or no permission)")
