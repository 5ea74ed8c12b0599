"""Several simulated M-Bus water meters on one bus, served on a pseudo-terminal (`edge-sim run`).

The bus answers what EN 13757-2 masters send: SND_NKE (E5), REQ_UD2 (RSP_UD, FCB honoured,
multi-telegram sequencing), SND_UD selection by secondary address with wildcards (and SND_NKE to
0xFD to deselect), SND_UD set-primary-address. A pty has no baud rate, so the bus paces itself:
a request counts as received only once its bytes would have crossed the wire (11 bits per byte,
8E1), the meter waits the minimum 11-bit-time gap, and the answer leaves at the baud rate.

Several meters answering at once collide the way the bus does: a space (0) from any meter wins, so
the master sees the bytewise AND of the answers (identical E5 acks survive, frames turn to garbage).
With `echo`, every byte the master sends comes straight back to it, as from an adapter that hears
its own transmission. Faults per meter (`inject`): "checksum", "truncate", "silent", "collision",
"late" (the RSP_UD leaves only once the bus hears a REQ_UD2 to another address, in front of that
meter's answer: a meter so slow that the master gave up on it and moved on); a meter whose
`state.ignores_select` is set takes every selection by secondary address as its own. `noise` (bytes,
default none) goes out in front of every answer, as the spurious byte some level converters
produce when a slave starts to send.

The pty takes 8E1 at every open, as a real master's port does, however often a scan, a probe and
the agent open and close it: the bus puts the line back to idle (`pty_link.idle_line`) as soon as a
master's request arrives and whenever a program closes the port. pty_link's doc says why a pty
otherwise refuses 8E1 at every open but its first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import termios
import tty
from collections.abc import Sequence
from typing import Any, Final

import structlog

from water_edge.sim.component import Announcement, SimContext
from water_edge.sim.mbus_meter import MeterSpec, WaterMeter
from water_edge.sim.pty_link import CloseWatch, idle_line

log = structlog.get_logger(__name__)

BITS_PER_BYTE: Final = 11  # start + 8 data + even parity + stop
NETWORK_LAYER: Final = 0xFD
# A meter's pending faults are taken in this order, one per answer.
_FAULT_ORDER: Final = ("silent", "checksum", "truncate", "collision", "late", "app_error")
FAULTS: Final = frozenset(_FAULT_ORDER)
MANUFACTURERS: Final = ("ZRI", "KAM", "SEN", "DME", "ITW", "APA")
BAUD_TERMIOS: Final = {300: termios.B300, 2400: termios.B2400, 9600: termios.B9600}


def default_meters(count: int, seed_ids: Sequence[int]) -> list[MeterSpec]:
    share = 1.0 / count
    return [
        MeterSpec(
            address=i + 1,
            ident=seed_ids[i],
            manufacturer=MANUFACTURERS[i % len(MANUFACTURERS)],
            version=0x10 + i,
            share=share,
            initial_m3=100.0 + 37.5 * i,
            multi_telegram=(i == 2),
        )
        for i in range(count)
    ]


def _frame_length(head: bytes) -> int | None:
    """Length of the request starting at head[0]; None: need more bytes; 0: not a start byte."""
    if head[0] == 0x10:
        return 5
    if head[0] == 0x68:
        if len(head) < 4:
            return None
        return head[1] + 6 if head[1] == head[2] and head[3] == 0x68 else 0
    return 0


def _long(control: int, address: int, user_data: bytes) -> bytes:
    body = bytes((control, address)) + user_data
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


def _is_req_ud2(request: bytes) -> bool:
    return request[0] == 0x10 and request[1] & 0xDF == 0x5B


def collide(answers: Sequence[bytes]) -> bytes:
    """What the master receives when several meters send at once: the bytewise AND (idle = 0xFF)."""
    size = max(len(a) for a in answers)
    out = bytearray(b"\xff" * size)
    for answer in answers:
        for i, byte in enumerate(answer):
            out[i] &= byte
    return bytes(out)


class MbusBus:
    """The meters and the pty; `start()` opens it, the agent opens `path`."""

    def __init__(
        self, ctx: SimContext, meters: Sequence[MeterSpec], baudrate: int = 2400, *, echo: bool = False
    ) -> None:
        if baudrate not in BAUD_TERMIOS:
            raise ValueError(f"M-Bus baud rate must be one of {sorted(BAUD_TERMIOS)}, got {baudrate}")
        self._ctx = ctx
        self.baudrate = baudrate
        self.echo = echo
        self.noise = b""  # sent in front of every answer
        # a late meter's RSP_UD (its address, the frame), sent before the next REQ_UD2 to another
        self._held: tuple[int, bytes] | None = None
        totaliser = ctx.state().totaliser_m3
        self.meters = [WaterMeter(spec, totaliser) for spec in meters]
        self.path = ""
        self._master_fd = -1
        self._slave_fd = -1
        self._watch: CloseWatch | None = None
        self._buffer = bytearray()
        self._first_byte_at: float | None = None
        self._requests: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(maxsize=64)
        self._task: asyncio.Task[None] | None = None
        self.counters = dict.fromkeys(
            ("requests", "answers", "garbage_in", "faults", "bytes_in", "bytes_out"), 0
        )

    @property
    def byte_time(self) -> float:
        return BITS_PER_BYTE / self.line_baudrate()

    def line_baudrate(self) -> int:
        """The speed the master set on its end of the line now (a pty keeps what tcsetattr stored,
        shared by both ends), else the bus's own."""
        if self._master_fd >= 0:
            with contextlib.suppress(termios.error, OSError):
                speed = termios.tcgetattr(self._master_fd)[4]
                for baud, code in BAUD_TERMIOS.items():
                    if code == speed:
                        return baud
        return self.baudrate

    def _hearing(self, meters: Sequence[WaterMeter]) -> list[WaterMeter]:
        """The meters that make out a frame sent at the line's speed: those set to it (to another
        speed, a frame is noise to a meter, which stays silent)."""
        line = self.line_baudrate()
        return [m for m in meters if (m.spec.baudrate or self.baudrate) == line]

    def inject(self, address: int, fault: str, count: int = 1) -> None:
        """Make meter `address` misbehave on its next `count` answers."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        self.meter(address).state.faults[fault] = count

    def meter(self, address: int) -> WaterMeter:
        for m in self.meters:
            if m.spec.address == address:
                return m
        raise KeyError(address)

    async def start(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        # 8E1 at the bus rate as far as a pty keeps it: the speed, not the parity (see pty_link).
        cflag = attrs[2] & ~(termios.CSIZE | termios.PARODD | termios.CSTOPB)
        attrs[2] = cflag | termios.CS8 | termios.PARENB
        attrs[4] = attrs[5] = BAUD_TERMIOS[self.baudrate]
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self._master_fd, self._slave_fd = master, slave
        self.path = os.ttyname(slave)
        self._watch = CloseWatch.start(self.path, lambda: idle_line(self._master_fd))
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._on_readable)
        self._task = asyncio.create_task(self._serve(), name="mbus-bus")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._master_fd >= 0:
            asyncio.get_running_loop().remove_reader(self._master_fd)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for fd in (self._master_fd, self._slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master_fd = self._slave_fd = -1

    # --- receiving ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._master_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no process has the agent side open right now
            chunk = b""
        if not chunk:
            return
        # The master has set the line up: back to idle now, so that its next open (or the next
        # program's) is taken even if it reopens before its close is noticed.
        idle_line(self._master_fd)
        if self.echo:
            with contextlib.suppress(OSError):
                os.write(self._master_fd, chunk)
        now = asyncio.get_running_loop().time()
        if not self._buffer:
            self._first_byte_at = now
        self._buffer.extend(chunk)
        self._split(now)

    def _split(self, now: float) -> None:
        while self._buffer:
            size = _frame_length(bytes(self._buffer[:4]))
            if size is None:
                return
            if size == 0:
                self._buffer.pop(0)
                self.counters["garbage_in"] += 1
                continue
            if len(self._buffer) < size:
                return
            request = bytes(self._buffer[:size])
            del self._buffer[:size]
            started = self._first_byte_at if self._first_byte_at is not None else now
            # The frame is on the wire until its last bit has crossed at the baud rate.
            done_at = started + size * self.byte_time
            self._first_byte_at = done_at if self._buffer else None
            with contextlib.suppress(asyncio.QueueFull):
                self._requests.put_nowait((request, done_at))

    # --- answering ---------------------------------------------------------------------------
    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request, received_at = await self._requests.get()
            self.counters["requests"] += 1
            self.counters["bytes_in"] += len(request)
            answer = self._answer(request)
            held = self._held
            if held is not None and _is_req_ud2(request) and request[2] != held[0]:
                self._held = None
                answer = held[1] + (answer or b"")
            if answer is None:
                continue
            answer = self.noise + answer
            # EN 13757-2: the slave waits at least 11 bit times before it answers.
            await asyncio.sleep(max(0.0, received_at + self.byte_time - loop.time()))
            await self._send(answer)
            self.counters["answers"] += 1
            self.counters["bytes_out"] += len(answer)

    async def _send(self, data: bytes) -> None:
        """Write at the baud rate: each chunk leaves when its last byte would have crossed the wire."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunk = max(1, int(0.01 / self.byte_time))
        sent = 0
        while sent < len(data):
            part = data[sent : sent + chunk]
            await asyncio.sleep(max(0.0, start + (sent + len(part)) * self.byte_time - loop.time()))
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._master_fd, part)
            sent += len(part)

    def _answer(self, request: bytes) -> bytes | None:  # noqa: PLR0911, PLR0912 - one branch per request type
        if not self._checksum_ok(request):
            self.counters["garbage_in"] += 1
            return None
        if request[0] == 0x10:
            control, address, ci, data = request[1], request[2], None, b""
        else:
            control, address, ci, data = request[4], request[5], request[6], request[7:-2]
        function = control & 0xDF  # without FCB
        if address == 0xFF:  # broadcast without reply
            if function == 0x40:
                for m in self.meters:
                    m.state.last_fcb, m.state.telegram_index, m.state.last_answer = 0, 0, None
            return None
        targets = self._targets(address)
        if function == 0x53 and ci == 0x52 and address == NETWORK_LAYER:
            return self._select(data)
        if not targets:
            return None
        if function == 0x40:  # SND_NKE
            for m in targets:
                m.state.last_fcb, m.state.telegram_index, m.state.last_answer = 0, 0, None
                if address == NETWORK_LAYER:
                    m.state.selected = False
            return self._faulty(targets, [b"\xe5"] * len(targets))
        if function == 0x53 and ci == 0x51 and len(data) == 3 and data[:2] == b"\x01\x7a":
            for m in targets:
                m.spec.address = data[2]
            return self._faulty(targets, [b"\xe5"] * len(targets))
        if function == 0x5B:  # REQ_UD2
            return self._faulty(targets, [self._rsp_ud(m, bool(control & 0x20)) for m in targets])
        return None

    def _targets(self, address: int) -> list[WaterMeter]:
        meters = self._hearing(self.meters)
        if address == NETWORK_LAYER:
            return [m for m in meters if m.state.selected]
        if address == 0xFE:
            return meters
        return [m for m in meters if m.spec.address == address]

    def _select(self, mask: bytes) -> bytes | None:
        if len(mask) != 8:
            return None
        chosen = []
        for m in self._hearing(self.meters):
            m.state.selected = m.matches(mask) or m.state.ignores_select
            if m.state.selected:
                m.state.last_fcb, m.state.telegram_index, m.state.last_answer = 0, 0, None
                chosen.append(m)
        if not chosen:
            return None
        return self._faulty(chosen, [b"\xe5"] * len(chosen))

    def _rsp_ud(self, m: WaterMeter, fcb: bool) -> bytes:
        s = m.state
        if s.last_answer is not None and s.last_fcb == int(fcb):
            return s.last_answer  # the master repeats: it missed our answer
        if s.last_answer is not None:
            s.telegram_index = (s.telegram_index + 1) % m.telegram_count()
        state = self._ctx.state()
        now = dt.datetime.now().replace(second=0, microsecond=0)
        user = m.user_data(s.telegram_index, state.totaliser_m3, state.outflow_m3h, state.water_temp_c, now)
        s.last_answer = _long(0x08, m.spec.address, user)
        s.last_fcb = int(fcb)
        return s.last_answer

    def _faulty(self, meters: Sequence[WaterMeter], answers: list[bytes]) -> bytes | None:
        out = list(answers)
        for i, m in enumerate(meters):
            faults = m.state.faults
            fault = next((f for f in _FAULT_ORDER if faults.get(f)), None)
            if fault is None or (fault in ("checksum", "truncate", "late", "app_error") and len(out[i]) < 6):
                continue  # frame faults wait for a frame; an E5 has no checksum to break
            faults[fault] -= 1
            self.counters["faults"] += 1
            if fault == "silent":
                out[i] = b""
            elif fault == "late":
                self._held = (m.spec.address, out[i])
                out[i] = b""
            elif fault == "checksum":
                out[i] = out[i][:-2] + bytes(((out[i][-2] + 1) & 0xFF, out[i][-1]))
            elif fault == "truncate":
                out[i] = out[i][: max(1, len(out[i]) // 2)]
            elif fault == "app_error":
                # An application error (CI 70h) in place of the data, without its status byte: a
                # control frame (L = 3), as some meters answer.
                out[i] = _long(0x08, m.spec.address, b"\x70")
            elif fault == "collision":
                # A second device answers at the same instant with a different frame.
                out.append(_long(0x08, m.spec.address, b"\x72" + bytes(range(40))))
        out = [a for a in out if a]
        if not out:
            return None
        return out[0] if len(out) == 1 else collide(out)

    @staticmethod
    def _checksum_ok(request: bytes) -> bool:
        if request[-1] != 0x16:
            return False
        body = request[1:3] if request[0] == 0x10 else request[4:-2]
        return (sum(body) & 0xFF) == request[-2]

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "baudrate": self.baudrate,
            "meters": [
                {
                    "address": m.spec.address,
                    "id": f"{m.spec.ident:08d}",
                    "manufacturer": m.spec.manufacturer,
                    "version": m.spec.version,
                    "medium": m.spec.medium,
                    "telegrams": m.telegram_count(),
                }
                for m in self.meters
            ],
        }


class MbusComponent:
    """`edge-sim run` part: options `meters` (count, default 4), `baudrate` (default 2400), `echo`
    (default false: true echoes the master's requests back to it), `keys` (primary address ->
    32 hex digits: that meter encrypts its telegrams with OMS mode 5 under the key) and
    `baudrates` (primary address -> 300, 2400 or 9600: that meter's own line speed, a segment of
    mixed speeds; it hears only frames sent at it) and `headerless` (primary addresses: those meters
    answer with CI 78h, no data header, so their answers do not name them; not with a key)."""

    name = "mbus"

    def __init__(self) -> None:
        self.bus: MbusBus | None = None

    async def start(self, ctx: SimContext) -> list[Announcement]:
        count = int(ctx.options.get("meters", 4))
        if not 1 <= count <= 250:
            raise ValueError(f"mbus: meters must be 1..250, got {count}")
        rng = ctx.rng("mbus")
        ids: list[int] = []
        while len(ids) < count:
            candidate = rng.randrange(10_000_000, 100_000_000)
            if candidate not in ids:
                ids.append(candidate)
        meters = default_meters(count, ids)
        by_address = {m.address: m for m in meters}
        for address, key in dict(ctx.options.get("keys", {})).items():
            if int(address) not in by_address:
                raise ValueError(f"mbus: keys: no meter at primary address {address} (1..{count})")
            by_address[int(address)].key = bytes.fromhex(str(key))
        for address, baud in dict(ctx.options.get("baudrates", {})).items():
            if int(address) not in by_address or int(baud) not in BAUD_TERMIOS:
                raise ValueError(f"mbus: baudrates: {address} = {baud} (a meter 1..{count}, 300/2400/9600)")
            by_address[int(address)].baudrate = int(baud)
        for address in list(ctx.options.get("headerless", [])):
            meter = by_address.get(int(address))
            if meter is None or meter.key is not None:
                raise ValueError(f"mbus: headerless: {address} is not a meter without a key (1..{count})")
            meter.no_header = True
        self.bus = MbusBus(
            ctx,
            meters,
            int(ctx.options.get("baudrate", 2400)),
            echo=bool(ctx.options.get("echo", False)),
        )
        await self.bus.start()
        log.info("mbus.started", path=self.bus.path, meters=count)
        return [Announcement("mbus", self.bus.describe())]

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()
