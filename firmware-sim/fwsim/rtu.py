"""The Modbus RTU face of the simulated PLC: the same register map, on a pseudo-terminal.

Several unit IDs share the line (the station PLC on 1, the flow meter on 2); a unit that does not
exist stays silent, as on a real bus. Frames are delimited the RTU way, by the length the
function code implies or else by 3.5 character times of silence; a frame with a bad CRC is
dropped without an answer. Function codes 1-6, 15 and 16 are served (writes only to the
documented writable area); anything else gets exception 1. The wire time of request and answer at
the configured baud rate is waited out, so a poll costs what it would on a cable.

Communication faults from the scenario (`SimContext.comm`, protocol "modbus_rtu"): latency,
silence, garbage (random bytes instead of the answer) and unplug (the pty closes and comes back
under a new /dev/pts name; the `link` symlink follows it).

Options (`[components.modbus_rtu]` in a scenario): baudrate (19200), parity ("N", "E", "O"),
stopbits (1, 2), wire_time (true), echo (false: true hands every byte the master sends straight
back, as a 2-wire RS-485 adapter that hears its own transmission does), glitch (false: true puts
one 0x00 byte in front of every answer, as many RS-485 transceivers do when the line turns round).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
from typing import Any, Final

import structlog

from water_edge.sim import identification
from water_edge.sim.component import Announcement, SimContext
from water_edge.sim.faults import CommFaults
from water_edge.sim.registers import Plant, Table

log = structlog.get_logger(__name__)

PROTOCOL: Final = "modbus_rtu"
_READ_TABLES: Final[dict[int, Table]] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_MAX_COUNT: Final[dict[int, int]] = {1: 2000, 2: 2000, 3: 125, 4: 125}


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + struct.pack("<H", crc16(body))


def expected_length(buf: bytes | bytearray) -> int | None:
    """The request length the function code implies, or None when it cannot tell (yet)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return None


def _exception(fc: int, code: int) -> bytes:
    return bytes([fc | 0x80, code])


def _pack_bits(values: list[int]) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def handle_pdu(plant: Plant, unit_id: int, pdu: bytes) -> bytes:  # noqa: PLR0911, PLR0912 - one case per function code
    """The answer PDU to request `pdu` for `unit_id` (which exists)."""
    fc = pdu[0]
    unit = plant.units[unit_id]
    if fc in _READ_TABLES:
        if len(pdu) != 5:
            return _exception(fc, 3)
        address, count = struct.unpack(">HH", pdu[1:5])
        if not 1 <= count <= min(_MAX_COUNT[fc], plant.read_limit(_READ_TABLES[fc])):
            return _exception(fc, 3)
        values = unit.read(_READ_TABLES[fc], address, count)
        if values is None:
            return _exception(fc, 2)
        data = _pack_bits(values) if fc in (1, 2) else struct.pack(f">{count}H", *values)
        return bytes([fc, len(data)]) + data
    if fc in (5, 6):
        if len(pdu) != 5:
            return _exception(fc, 3)
        address, raw = struct.unpack(">HH", pdu[1:5])
        if fc == 5 and raw not in (0x0000, 0xFF00):
            return _exception(fc, 3)
        value = (1 if raw else 0) if fc == 5 else raw
        code = plant.write(unit_id, "coil" if fc == 5 else "holding", address, [value])
        return pdu if code is None else _exception(fc, code)
    if fc in (15, 16):
        if len(pdu) < 6:
            return _exception(fc, 3)
        address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
        data = pdu[6:]
        want = (count + 7) // 8 if fc == 15 else 2 * count
        limit = 1968 if fc == 15 else 123
        if not 1 <= count <= limit or nbytes != want or len(data) != want:
            return _exception(fc, 3)
        if fc == 15:
            values = [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
        else:
            values = list(struct.unpack(f">{count}H", data))
        code = plant.write(unit_id, "coil" if fc == 15 else "holding", address, values)
        return pdu[:5] if code is None else _exception(fc, code)
    if fc == identification.FUNCTION:
        return identification.answer_pdu(unit_id, pdu)
    return _exception(fc, 1)


class RtuComponent:
    """`edge-sim run` component: the PLC's register map served over Modbus RTU on a pty."""

    name = "modbus_rtu"

    def __init__(self) -> None:
        from water_edge.sim.pty_link import PtyLink

        self._link_cls = PtyLink
        self._link: PtyLink | None = None
        self._plant: Plant | None = None
        self._comm = CommFaults()
        self._buf = bytearray()
        self._gap_handle: asyncio.TimerHandle | None = None
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._rng = random.Random(0)  # noqa: S311 - simulation
        self.baudrate = 19200
        self.parity = "N"
        self.stopbits = 1
        self.wire_time = True
        self.echo = False
        self.answer_prefix = b""  # line noise in front of every answer (the `glitch` option)
        self.stats = {"requests": 0, "answers": 0, "crc_errors": 0, "ignored": 0, "garbage": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, ctx: SimContext) -> list[Announcement]:
        if ctx.plant is None:
            raise OSError("modbus_rtu needs the plant's register images")
        opts: dict[str, Any] = dict(ctx.options)
        self.baudrate = int(opts.pop("baudrate", 19200))
        self.parity = str(opts.pop("parity", "N")).upper()[:1]
        self.stopbits = int(opts.pop("stopbits", 1))
        self.wire_time = bool(opts.pop("wire_time", True))
        self.echo = bool(opts.pop("echo", False))
        self.answer_prefix = b"\x00" if opts.pop("glitch", False) else b""
        if opts:
            raise OSError(f"modbus_rtu: unknown option(s) {', '.join(sorted(opts))}")
        if self.parity not in ("N", "E", "O") or self.stopbits not in (1, 2) or self.baudrate < 300:
            raise OSError("modbus_rtu: parity must be N/E/O, stopbits 1/2, baudrate >= 300")
        self._plant = ctx.plant
        self._comm = ctx.comm
        self._rng = ctx.rng("modbus_rtu")
        link = ctx.workdir / f"ttyRTU-{os.getpid()}"
        return [self.open(ctx.plant, link, ctx.comm)]

    def open(self, plant: Plant, link: Any, comm: CommFaults | None = None) -> Announcement:
        """Start serving on a new pty (also usable without `edge-sim run`, e.g. in tests)."""
        self._plant = plant
        if comm is not None:
            self._comm = comm
        self._link = self._link_cls(link)
        self.plug()
        self._watch = asyncio.get_running_loop().create_task(self._watch_unplug())
        return self.announcement()

    def announcement(self) -> Announcement:
        assert self._link is not None
        units = sorted(self._plant.units) if self._plant else []
        return Announcement(PROTOCOL, {
            "path": self._link.path, "link": str(self._link.link), "baudrate": self.baudrate,
            "parity": self.parity, "stopbits": self.stopbits, "bytesize": 8, "unit_ids": units,
        })  # fmt: skip

    def plug(self) -> str:
        assert self._link is not None
        # Plugged already (the unplug watch put the line back before a test's own plug): the old
        # master leaves the loop first. Closed while still registered, its number came back with
        # the new pair, and add_reader then only renamed the stale registration: epoll had dropped
        # the closed descriptor, so the new line was never read (a driver's reopen timed out).
        self.unplug()
        path = self._link.plug()
        self._buf.clear()
        asyncio.get_running_loop().add_reader(self._link.master_fd, self._on_readable)
        log.debug("rtu.plugged", path=path)
        return path

    def unplug(self) -> None:
        if self._link is None or not self._link.plugged:
            return
        asyncio.get_running_loop().remove_reader(self._link.master_fd)
        self._link.unplug()
        log.debug("rtu.unplugged")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for task in list(self._tasks):
            task.cancel()
        self.unplug()
        if self._link is not None:
            self._link.close()

    async def _watch_unplug(self) -> None:
        """Follow 'unplug' windows of the scenario (checked every 100 ms of wall time)."""
        while True:
            await asyncio.sleep(0.1)
            gone = bool(self._comm.active("unplug", PROTOCOL, None))
            if gone and self._link is not None and self._link.plugged:
                self.unplug()
            elif not gone and self._link is not None and not self._link.plugged:
                self.plug()

    # -- the line ----------------------------------------------------------------------------

    @property
    def char_time_s(self) -> float:
        bits = 1 + 8 + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def _on_readable(self) -> None:
        assert self._link is not None
        try:
            chunk = os.read(self._link.master_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # EIO while nobody holds the slave: nothing to read
        if not chunk:
            return
        if self.echo:
            with contextlib.suppress(OSError):
                os.write(self._link.master_fd, chunk)
        self._buf += chunk
        if self._gap_handle is not None:
            self._gap_handle.cancel()
        want = expected_length(self._buf)
        if want is not None and len(self._buf) >= want:
            self._take(want)
            return
        # unknown length: the frame ends after 3.5 character times of silence (>= 2 ms on a pty)
        gap = max(3.5 * self.char_time_s, 0.002)
        self._gap_handle = asyncio.get_running_loop().call_later(gap, self._take, None)

    def _take(self, length: int | None) -> None:
        self._gap_handle = None
        data = bytes(self._buf if length is None else self._buf[:length])
        del self._buf[: len(data)]
        if length is not None and self._buf:
            self._buf.clear()  # more bytes than one request: line noise, resync on silence
        task = asyncio.get_running_loop().create_task(self._serve(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, data: bytes) -> None:
        self.stats["requests"] += 1
        if len(data) < 4 or crc16(data[:-2]) != struct.unpack("<H", data[-2:])[0]:
            self.stats["crc_errors"] += 1
            return
        unit_id, pdu = data[0], data[1:-2]
        plant = self._plant
        if plant is None or (unit_id != 0 and unit_id not in plant.units):
            self.stats["ignored"] += 1
            return
        if self._comm.silent(PROTOCOL, unit_id):
            self.stats["ignored"] += 1
            return
        if unit_id == 0:  # broadcast: writes apply to every unit, nobody answers
            for uid in plant.units:
                handle_pdu(plant, uid, pdu)
            return
        answer = frame(unit_id, handle_pdu(plant, unit_id, pdu))
        delay = self._comm.latency_s(PROTOCOL, unit_id)
        if self.wire_time:
            delay += (len(data) + len(answer)) * self.char_time_s
        if delay > 0:
            await asyncio.sleep(delay)
        share = self._comm.garbage(PROTOCOL, unit_id)
        if share > 0 and self._rng.random() < share:
            answer = self._rng.randbytes(self._rng.randint(1, 40))
            self.stats["garbage"] += 1
        link = self._link
        if link is None or not link.plugged:
            return
        with contextlib.suppress(OSError):
            os.write(link.master_fd, self.answer_prefix + answer)
            self.stats["answers"] += 1
