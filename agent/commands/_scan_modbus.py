"""`edge-agent scan modbus`: which unit IDs answer behind a Modbus TCP address or on an RTU line,
and (with `--map`) which addresses of a table each of them reads; then the config to paste.

    edge-agent scan modbus --host 10.1.2.3 [--port 502] [--units 1-247] [--table holding] [--address 0]
    edge-agent scan modbus --serial-port /dev/ttyUSB0 [--baudrate 19200 --parity even --stopbits 1]
    edge-agent scan modbus --host 10.1.2.3 --units 1 --map 0-999      # the readable addresses

Each unit ID gets one read at `--address`. A value, or an exception answer of the device's own
(illegal address, illegal function), means a device is there; a TCP-to-RTU gateway's exception 10
or 11 means nothing is behind that unit ID; on a serial line nobody answers for an empty one (each
costs `--timeout`). A TCP device that answers every unit ID alike, an unlikely one too, ignores it
(most Modbus TCP devices that are not gateways): its config uses unit ID 1.

Stop the agent first if it polls the same serial port or a device that takes one connection. Exit 0
when a unit answered, 1 when none did, 2 when the options, the host or the port cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Final, cast

from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from water_edge.drivers.modbus.config import Table

PARITIES: Final = ("none", "even", "odd")
MAX_UNITS_SHOWN: Final = 40
MAX_TAGS_PER_UNIT: Final = 10
DEFAULT_TCP_PORT: Final = 502


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="a Modbus TCP device or TCP-to-RTU gateway")
    where.add_argument("--serial-port", help="a Modbus RTU line, e.g. /dev/ttyUSB0")
    p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    p.add_argument("--baudrate", type=int, default=19200, help="RTU line speed (default 19200)")
    p.add_argument("--parity", choices=PARITIES, default="even", help="RTU parity (default even: 8E1)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    p.add_argument("--local-echo", action="store_true", help="the RS-485 adapter echoes every request")
    p.add_argument("--units", default="1-247", help="unit IDs to try: 1-247 (default), or e.g. 1,2,10-20")
    p.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding")
    p.add_argument("--address", type=int, default=0, help="the address read from each unit (default 0)")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each answer (default 0.5)")
    p.add_argument(
        "--map",
        metavar="FIRST-LAST",
        help="also find which addresses FIRST..LAST of --table each unit found reads",
    )
    p.add_argument(
        "--max-registers", type=int, default=125, help="largest read --map sends (default 125; 2000 bits)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per unit that answered")
    p.set_defaults(func=cmd_scan_modbus)


class UsageError(Exception):
    pass


def parse_units(text: str, low: int, high: int) -> list[int]:
    """`1-247`, `1,2,10-20`: the unit IDs in order, each once; UsageError outside `low`..`high`."""
    units: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise UsageError(f"--units {text!r}: expected unit IDs like 1-247 or 1,2,10-20")
        a, b = int(match.group(1)), int(match.group(2) or match.group(1))
        if not low <= a <= b <= high:
            raise UsageError(f"--units {text!r}: unit IDs run {low}..{high} here, in ascending ranges")
        units.extend(u for u in range(a, b + 1) if u not in units)
    return units


def parse_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if match is None or not int(match.group(1)) <= int(match.group(2)) <= 65535:
        raise UsageError(f"--map {text!r}: expected FIRST-LAST addresses, e.g. 0-999 (at most 65535)")
    return int(match.group(1)), int(match.group(2))


def cmd_scan_modbus(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.core.errors import DriverIOError

    logs.configure("critical", json=False)  # pymodbus logs each refused read; the command says what it means
    try:
        tcp = args.host is not None
        units = parse_units(args.units, 0 if tcp else 1, 255 if tcp else 247)
        span = parse_range(args.map) if args.map else None
        if not 0 <= args.address <= 65535 or not 0.01 <= args.timeout <= 60:
            raise UsageError("--address runs 0..65535, --timeout 0.01..60 s")
        limit = 2000 if args.table in ("coil", "discrete") else 125
        if not 1 <= args.max_registers <= limit:
            raise UsageError(f"--max-registers runs 1..{limit} for table {args.table}")
        settings = line_settings(args)
    except UsageError as exc:
        _say(f"edge-agent scan modbus: {exc}")
        return EXIT_USAGE
    started = time.monotonic()
    try:
        scan = asyncio.run(_scan(args, settings, units, span))
    except DriverIOError as exc:
        _say(f"edge-agent scan modbus: {exc}")
        return EXIT_USAGE
    elapsed = time.monotonic() - started
    if not any(a.present for a in scan.answers):
        why = why_none_answered(scan, args)
        _say(f"no unit answered on {scan.where} ({len(scan.answers)} tried in {elapsed:.0f} s): {why}")
        return EXIT_FAILED
    if args.json:
        _print_json([a for a in scan.answers if a.present], scan.maps)
    else:
        _print_table(scan, args, elapsed)
    return EXIT_OK


def why_none_answered(scan: _Scan, args: argparse.Namespace) -> str:
    """What to check when no unit answered, from what the unit IDs tried did instead."""
    answers = scan.answers
    if any(a.outcome == "gateway" for a in answers):
        return "a gateway answers, but no device behind it: check its serial side (wiring, speed, parity)"
    if args.host is None:
        return "check the unit IDs, the line settings (--baudrate, --parity) and the wiring"
    stray = next((a for a in answers if a.outcome == "stray"), None)
    if stray is not None:
        return f"unit {stray.unit_id} {stray.detail}"
    closed = next((a for a in answers if a.outcome == "closed"), None)
    if closed is not None:
        return (
            f"the device closes the connection instead of answering (unit {closed.unit_id}): a connection "
            "limit? stop other masters, or the agent, polling it"
        )
    if scan.late_answers:
        return f"answers come after --timeout {args.timeout:g} s: give a longer --timeout"
    return (
        f"nothing answered within --timeout {args.timeout:g} s: check the unit IDs and --port "
        "(behind a gateway, a --timeout longer than its own)"
    )


def line_settings(args: argparse.Namespace) -> Any:
    """The TCP or RTU config the options give; `UsageError` naming the option the config refuses."""
    from pydantic import ValidationError

    from water_edge.drivers.modbus.config import BAUD_RATES, ModbusRtuConfig, ModbusTcpConfig

    common = {
        "name": "scan", "timeout_ms": max(10, round(args.timeout * 1000)), "retries": 0,
        "tags": [{"name": "probe", "address": 0}],
    }  # fmt: skip
    if args.host is not None:
        options = {"host": ("--host", args.host), "port": ("--port", args.port)}
        settings = {**common, "kind": "modbus_tcp", "host": args.host, "port": args.port}
        model: Any = ModbusTcpConfig
    else:
        if args.baudrate not in BAUD_RATES:  # checked by the model as a whole, not as a field
            raise UsageError(f"--baudrate {args.baudrate}: expected one of {', '.join(map(str, BAUD_RATES))}")
        options = {"port": ("--serial-port", args.serial_port)}
        settings = {
            **common, "kind": "modbus_rtu", "port": args.serial_port, "baudrate": args.baudrate,
            "parity": args.parity, "stopbits": args.stopbits, "local_echo": args.local_echo,
        }  # fmt: skip
        model = ModbusRtuConfig
    try:
        return model.model_validate(settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        option, value = options.get(str(error["loc"][0]) if error["loc"] else "", ("options", ""))
        expected = str(error["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{option} {value!r}: {expected[:1].lower()}{expected[1:]}") from None


@dataclass
class _Scan:
    """What a scan found: each unit ID's answer, the register maps, where, and whether the unit
    IDs that answered are one device that ignores the unit ID."""

    answers: list[Any]
    maps: dict[int, Any]
    where: str
    one_device: bool
    late_answers: bool  # answers came to requests that had timed out


async def _scan(
    args: argparse.Namespace, settings: Any, units: list[int], span: tuple[int, int] | None
) -> _Scan:
    from water_edge.drivers.modbus.scan import identify, ignores_unit_id, map_table, scan_units

    line = await _open(settings)
    try:
        _say(f"scanning {line.where}, unit IDs {args.units}, {args.table} {args.address} ...")
        answers = await scan_units(line.send, units, args.table, args.address, _progress(len(units)))
        one = await ignores_unit_id(
            line.send, line.ask, answers, args.table, args.address, serial_line=line.serial
        )
        for i, answer in enumerate(answers):
            if answer.present and (i == 0 or not one):  # one device: asked and mapped once
                answers[i] = replace(answer, identity=await identify(line.ask, answer.unit_id))
        maps = {}
        if span is not None:
            present = [a.unit_id for a in answers if a.present]
            for unit_id in present[:1] if one else present:
                _say(f"mapping unit {unit_id} {args.table} {span[0]}-{span[1]} ...")
                maps[unit_id] = await map_table(
                    line.send, unit_id, args.table, *span, max_count=args.max_registers
                )
        return _Scan(answers, maps, line.where, one, line.late_answers)
    finally:
        line.close()


class _DroppedError(Exception):
    """The connection dropped while a request waited for its answer (or its answer cannot be
    trusted to be this request's): it is sent once more on a new connection."""


class _Line:
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
        self.client: Any = None
        self.where, self._tcp, self._rtu = where, tcp, rtu
        self._inflight: asyncio.Task[Any] | None = None
        self._late_answer_possible = False
        self._sent: set[tuple[int, int]] = set()  # (transaction ID, unit ID) of requests on this connection
        self._current = (0, 0)
        self._stray = ""  # what came back during the request in flight that answers no request
        self._answer = b""  # the frame that came back for the request in flight
        self._quiet_until: dict[int, float] = {}  # RTU: unit ID -> when its late answer can no longer come
        self.late_answers = False

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
            quiet = self._quiet_until.pop(unit_id, 0.0) - time.monotonic()
            await asyncio.sleep(max(quiet, self._rtu.inter_frame_s))
            return await self._on_serial_line(where, unit_id, call)
        try:
            return await self._attempt(where, call)
        except _DroppedError:
            pass  # closed while the request was on its way, or crossing a close after the last answer
        try:
            return await self._attempt(where, call)
        except _DroppedError:
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
            raise _DroppedError from None
        except NoConnectionError as exc:
            raise _DroppedError from exc
        except NoAnswerError as exc:
            if not self.client.connected:
                raise _DroppedError from exc
            self._late_answer_possible = True
            if self._stray:
                raise StrayAnswerError(f"{where}: {self._stray}", self._stray) from exc
            raise
        if self._late_answer_possible and not response.transaction_id:
            self.client.close()
            raise _DroppedError
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
            raise
        raise_for_error_pdu(response, where)
        return response

    def _late_answer_may_come(self, unit_id: int) -> None:
        if self._rtu is not None:
            self._quiet_until[unit_id] = time.monotonic() + self._rtu.timeout_ms / 1000

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


async def _open(settings: Any) -> _Line:
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.modbus.adapter import pymodbus_serial_client, pymodbus_tcp_client
    from water_edge.drivers.modbus.config import ModbusTcpConfig
    from water_edge.drivers.modbus.tcp import why_unreachable

    if isinstance(settings, ModbusTcpConfig):
        line = _Line(f"Modbus TCP {settings.endpoint_text()}", tcp=settings)
        line.client = pymodbus_tcp_client(settings, line.on_connection, trace_packet=line.on_packet)
        if not await _connected(line.client):
            why = await why_unreachable(settings.host, settings.port, settings.timeout_ms / 1000)
            raise DriverIOError(f"cannot connect to {settings.endpoint_text()}: {why}")
        return line
    line = _Line(f"Modbus RTU {settings.endpoint_text()}", rtu=settings)
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


def _progress(total: int) -> Any:
    seen = [0]

    def on_answer(answer: Any) -> None:
        seen[0] += 1
        if answer.present:
            _say(f"  unit {answer.unit_id}: {answer.detail}")
        elif seen[0] % 50 == 0:
            _say(f"  ... {seen[0]} of {total} tried")

    return on_answer


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _unit_doc(answer: Any, register_map: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "unit_id": answer.unit_id, "outcome": answer.outcome, "detail": answer.detail,
        "value": answer.value, "code": answer.code, "identity": answer.identity or None,
    }  # fmt: skip
    if register_map is not None:
        doc["map"] = {
            "table": register_map.table, "first": register_map.first, "last": register_map.last,
            "readable": [list(r) for r in register_map.readable],
            "unanswered": [list(r) for r in register_map.unanswered],
            "bad_answers": [list(r) for r in register_map.misanswered],
            "not_supported": register_map.not_supported or None, "stopped_at": register_map.stopped_at,
            "reads": register_map.requests,
        }  # fmt: skip
    return doc


def _print_json(found: list[Any], maps: dict[int, Any]) -> None:
    import orjson

    for answer in found:
        sys.stdout.write(orjson.dumps(_unit_doc(answer, maps.get(answer.unit_id))).decode() + "\n")


def _print_table(scan: _Scan, args: argparse.Namespace, elapsed: float) -> None:
    answers, maps = scan.answers, scan.maps
    found = [a for a in answers if a.present]
    probe = f"{args.table} {args.address}"
    print(f"{scan.where}: {len(found)} of {len(answers)} unit ID(s) answer ({probe}, {elapsed:.0f} s)")
    if scan.one_device:
        print("every unit ID tried answers: one device that ignores the unit ID (use unit_id = 1)")
        found = found[:1]
    for answer in found[:MAX_UNITS_SHOWN]:
        print(f"{answer.unit_id:>5}  {answer.detail}" + (f"  [{answer.identity}]" if answer.identity else ""))
    if len(found) > MAX_UNITS_SHOWN:
        print(f"  ... and {len(found) - MAX_UNITS_SHOWN} more (--json lists them all)")
    absent = [a for a in answers if not a.present]
    if absent:
        kinds = sorted({a.detail for a in absent})
        print(f"{len(absent)} other unit ID(s): {'; '.join(kinds)}")
    for register_map in maps.values():
        print()
        print(map_text(register_map))
    print()
    for block in config_blocks(found, maps, args, one_device=scan.one_device):
        print(block)
        print()


def map_text(m: Any) -> str:
    """What `--map` found for one unit, as lines."""
    head = f"unit {m.unit_id} {m.table} {m.first}-{m.last}: "
    if m.not_supported:
        return head + f"the unit refuses reads of this table ({m.not_supported})"
    lines = [head + f"{m.readable_count} readable in {len(m.readable)} range(s), {m.requests} reads"]
    lines += [f"  readable  {a}-{b}" if a != b else f"  readable  {a}" for a, b in m.readable]
    lines += [f"  no answer {a}-{b} (a device that drops reads it cannot serve?)" for a, b in m.unanswered]
    lines += [f"  bad answer {a}-{b} ({m.misanswer}): not readable" for a, b in m.misanswered]
    if m.stopped_at is not None:
        lines.append(f"  stopped at {m.stopped_at} after {m.requests} reads: map a smaller range")
    return "\n".join(lines)


def _readable_addresses(answer: Any, register_map: Any, table: str, address: int) -> list[int]:
    if register_map is not None:
        return [a for a, _ in register_map.readable][:MAX_TAGS_PER_UNIT]
    return [address] if answer.outcome == "value" else []


def config_blocks(
    found: list[Any], maps: dict[int, Any], args: argparse.Namespace, *, one_device: bool = False
) -> list[str]:
    """The `[[devices]]` to paste: on TCP one device (one connection to the gateway) whose tags
    name their unit; on RTU one device per unit (devices on one port share it). Tags are placeholders
    (uint16) at addresses known to read: the register map gives names, types and scaling. A device
    with no address known to read is printed commented out (a device needs a tag). `one_device`:
    `found` is one device that ignores the unit ID, configured as unit 1."""
    kind = "bool" if args.table in ("coil", "discrete") else "uint16"
    if one_device:
        maps = {1: maps.get(found[0].unit_id)}
        found = [replace(found[0], unit_id=1)]

    def tag(unit_id: int, address: int, with_unit: bool) -> str:
        lines = ["[[devices.tags]]", f'name = "unit{unit_id}.{args.table}_{address}"']
        lines += [f"unit_id = {unit_id}"] if with_unit else []
        lines += [
            f'table = "{args.table}"',
            f"address = {address}",
            f'type = "{kind}"  # check the register map',
        ]
        return "\n".join(lines)

    def tags(answer: Any, with_unit: bool) -> list[str]:
        addresses = _readable_addresses(answer, maps.get(answer.unit_id), args.table, args.address)
        said = [f"# unit {answer.unit_id}: {answer.identity}"] if answer.identity else []
        return said + (
            [tag(answer.unit_id, a, with_unit) for a in addresses]
            or [
                f"# unit {answer.unit_id} answers, but no {args.table} address of it is known to read: take "
                f"its tags from its register map (or --units {answer.unit_id} --map 0-999)"
            ]
        )

    def device(keys: list[str], its_tags: list[str]) -> list[str]:
        block = "\n".join(["[[devices]]", *keys])
        if all(t.startswith("#") for t in its_tags):
            block = "\n".join(f"# {line}" for line in block.splitlines())
        return [block, *its_tags]

    blocks = ["# For the agent's config (names and types are placeholders: the register map has them):"]
    if args.host is not None:
        first = found[0].unit_id
        port = "" if args.port == DEFAULT_TCP_PORT else str(args.port)
        keys = [f'name = "{device_name("modbus", args.host, port)}"', 'kind = "modbus_tcp"',
                f'host = "{args.host}"', f"port = {args.port}", f"unit_id = {first}"]  # fmt: skip
        return blocks + device(keys, [t for a in found for t in tags(a, a.unit_id != first)])
    for answer in found:
        name = device_name("rtu", PurePath(args.serial_port).name, f"unit{answer.unit_id}")
        keys = [
            f'name = "{name}"', 'kind = "modbus_rtu"', f'port = "{args.serial_port}"',
            f"baudrate = {args.baudrate}", f'parity = "{args.parity}"', f"stopbits = {args.stopbits}",
            f"unit_id = {answer.unit_id}", *(["local_echo = true"] if args.local_echo else []),
        ]  # fmt: skip
        blocks += device(keys, tags(answer, False))
    return blocks


def device_name(kind: str, place: str, suffix: str = "") -> str:
    """`kind-place[-suffix]` as a device name the config takes (letters, digits and '-', at most
    NAME_MAX_LENGTH): a place too long for it is cut, and ends in a hash of the whole so that two
    long places still give two names."""
    from water_edge.core.names import NAME_MAX_LENGTH

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")

    head, tail = clean(kind), f"-{clean(suffix)}" if clean(suffix) else ""
    middle = clean(place)
    room = NAME_MAX_LENGTH - len(head) - len(tail) - 1
    if len(middle) > room:
        digest = hashlib.sha256(place.encode()).hexdigest()[:6]
        middle = f"{middle[: room - len(digest) - 1].rstrip('-')}-{digest}"
    return f"{head}-{middle}{tail}" if middle else f"{head}{tail}"
