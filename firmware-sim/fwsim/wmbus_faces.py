"""What the gateway plugs in to hear the simulated meters: a USB stick on a pseudo-terminal (IMST
iM871A HCI or Amber AMB8465 command mode, each answering its set-up command) and rtl_wmbus-style
text lines served on a TCP port. Each face hears what its receiver would: a stick only its one
link mode and only frames that survived the air; the SDR every mode, printing collided frames
with a failed CRC. Line faults (garbage between frames, a broken serial checksum) are injected
here, at the share the component is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
from functools import reduce
from pathlib import Path
from typing import Final

from water_edge.sim.pty_link import PtyLink

HCI_SOF: Final = 0xA5
AMB_SOF: Final = 0xFF
IM871A_MODES: Final = {0x00: "S1", 0x03: "T1", 0x06: "C1"}
AMB_MODES: Final = {0x03: "S1", 0x08: "T1", 0x0E: "C1"}
POWER_ON_MODE: Final = "S1"  # a replugged stick's mode until it is set up again
UNPLUG_AFTER_S: Final = 0.2  # wall seconds between the half frame and the port closing


def _crc_ccitt(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def _xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


class StickFace:
    """A USB stick on a pty: the agent opens `path`; telegrams of the stick's link mode arrive."""

    def __init__(self, kind: str, link: Path, rng: random.Random, line_faults: float) -> None:
        self.kind = kind
        self.link_mode = "T1"
        self._pty = PtyLink(link)
        self._rng = rng
        self._line_faults = line_faults
        self._inbox = bytearray()
        self._last_frame = b""
        self._pulled = False
        self._closing: asyncio.TimerHandle | None = None
        self.counters = {"delivered": 0, "line_faults": 0, "commands": 0, "replugs": 0}

    @property
    def path(self) -> str:
        return str(self._pty.link)

    def start(self) -> None:
        self._pty.plug()
        asyncio.get_running_loop().add_reader(self._pty.master_fd, self._on_readable)

    def stop(self) -> None:
        self._unplug()
        self._pty.close()

    def unplug(self, *, mid_frame: bool = True) -> None:
        """The stick pulled out: with `mid_frame`, while it was sending a telegram (the first half
        of a frame reaches the gateway, then the port closes a moment later)."""
        if not self._pty.plugged or self._pulled:
            return
        if mid_frame and self._last_frame:
            self._write(self._last_frame[: len(self._last_frame) // 2])
            self._pulled = True  # nothing more leaves the stick
            self._closing = asyncio.get_running_loop().call_later(UNPLUG_AFTER_S, self._unplug)
        else:
            self._pulled = True
            self._unplug()

    def replug(self) -> None:
        """Plugged in again: a new pty (the link points at it) and the stick as it powers up, in its
        stored link mode, not the one the gateway set in RAM."""
        self._unplug()
        self._pulled = False
        self._inbox.clear()
        self.link_mode = POWER_ON_MODE
        self.start()
        self.counters["replugs"] += 1

    def _unplug(self) -> None:
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        if self._pty.plugged:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._pty.master_fd)
        self._pty.unplug()

    def _write(self, data: bytes) -> None:
        if self._pty.plugged and not self._pulled:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._pty.master_fd, data)

    def _on_readable(self) -> None:
        try:
            self._inbox += os.read(self._pty.master_fd, 1024)
        except (BlockingIOError, OSError):
            return
        self._commands()

    def _commands(self) -> None:
        buf = self._inbox
        sof = HCI_SOF if self.kind == "im871a" else AMB_SOF
        while len(buf) >= 4:
            if buf[0] != sof:
                del buf[:1]
                continue
            size = (4 + buf[3] + (2 if buf[1] & 0x80 else 0)) if self.kind == "im871a" else 3 + buf[2] + 1
            if len(buf) < size:
                return
            message = bytes(buf[:size])
            del buf[:size]
            self.counters["commands"] += 1
            self._answer(message)

    def _answer(self, message: bytes) -> None:
        if self.kind == "im871a":
            endpoint, msg_id, payload = message[1] & 0x0F, message[2], message[4 : 4 + message[3]]
            if endpoint == 0x01 and msg_id == 0x03 and len(payload) >= 4:
                self.link_mode = IM871A_MODES.get(payload[3], self.link_mode)
            head = bytes((0x80 | endpoint, msg_id + 1, 1, 0))
            self._write(bytes((HCI_SOF,)) + head + _crc_ccitt(head).to_bytes(2, "little"))
        else:
            cmd, payload = message[1], message[3:-1]
            if cmd == 0x04 and payload:
                self.link_mode = AMB_MODES.get(payload[0], self.link_mode)
            head = bytes((AMB_SOF, cmd | 0x80, 1, 0))
            self._write(head + bytes((_xor(head),)))

    def deliver(self, telegram: bytes, rssi_dbm: float) -> None:
        """A telegram (L field first, no CRCs) that reached the stick intact."""
        if self._pulled or not self._pty.plugged:
            return
        payload = telegram[1:]  # sticks drop the L field
        if self.kind == "im871a":
            raw_rssi = max(0, min(255, round((rssi_dbm + 100.0 + 4000.0 / 150.0) * 150.0 / 80.0)))
            head = bytes((0xC2, 0x03, len(payload))) + payload + bytes((raw_rssi,))
            frame = bytes((HCI_SOF,)) + head + _crc_ccitt(head).to_bytes(2, "little")
        else:
            raw = round((rssi_dbm + 74.0) * 2) & 0xFF
            head = bytes((AMB_SOF, 0x03, len(payload) + 1)) + payload + bytes((raw,))
            frame = head + bytes((_xor(head),))
        if self._rng.random() < self._line_faults:
            self.counters["line_faults"] += 1
            if self._rng.random() < 0.5:
                frame = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 12))) + frame
            else:
                spoiled = bytearray(frame)
                spoiled[-1] ^= 0x5A  # the serial checksum no longer matches
                frame = bytes(spoiled)
        self._write(frame)
        self._last_frame = frame
        self.counters["delivered"] += 1


class RtlWmbusFace:
    """rtl_wmbus's output lines served to every TCP client (as `rtl_wmbus | nc -l` would)."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0
        self._last_line = b""
        self.counters = {"lines": 0, "crc_failed_lines": 0, "cut_bytes": 0}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self._host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for writer in list(self._clients):
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def drop_clients(self, *, mid_line: bool = False) -> None:
        """Close every connection and keep listening (rtl_wmbus | nc -l restarted); with `mid_line`,
        after the first half of a line (the pipe's block buffering cut it)."""
        for writer in list(self._clients):
            if mid_line and self._last_line and not writer.is_closing():
                half = self._last_line[: len(self._last_line) // 2]
                writer.write(half)
                self.counters["cut_bytes"] += len(half)
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            await reader.read()  # until the client goes
        finally:
            self._clients.discard(writer)
            writer.close()

    def deliver(self, telegram: bytes, rssi: float, link_mode: str, crc_ok: bool, ident: str) -> None:
        now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.000")
        flag = "1" if crc_ok else "0"
        line = f"{link_mode};{flag};{flag};{now};{round(rssi + 140)};120;{ident};0x{telegram.hex()}\n"
        self.counters["lines"] += 1
        self.counters["crc_failed_lines"] += not crc_ok
        self._last_line = line.encode()
        for writer in list(self._clients):
            if writer.is_closing():
                continue
            writer.write(self._last_line)
