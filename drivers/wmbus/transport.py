"""Byte streams a receiver talks over: a serial USB stick, a TCP socket (an SDR receiver's output
served by `nc` or a gateway), or a FIFO/character device (`rtl_sdr | rtl_wmbus > fifo`). The one
place their OS and pyserial errors become `DriverIOError`.

Reading never blocks the loop: the file descriptor is watched with `add_reader`; a TCP socket is
an asyncio stream. A FIFO is opened read-write so it never reports end-of-file while the writer
restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from typing import Any, Final, Protocol

from water_edge.core.errors import DriverIOError
from water_edge.drivers.serial_bus import in_use_text

CHUNK: Final = 4096
MAX_EMPTY_READS: Final = 50


class ByteStream(Protocol):
    async def read(self) -> bytes:
        """Some bytes (at least one); DriverIOError when the device or peer is gone."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class FdStream:
    """A non-blocking file descriptor (a tty or a FIFO) read through the event loop."""

    def __init__(self, fd: int, what: str, closer: Callable[[], None] | None = None) -> None:
        self._fd = fd
        self._what = what
        self._closer = closer
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._ready.set)

    async def read(self) -> bytes:
        empty = 0
        while True:
            try:
                data = os.read(self._fd, CHUNK)
            except BlockingIOError:
                data = b""
            except OSError as exc:
                raise DriverIOError(f"{self._what}: read failed: {exc.strerror or exc}") from exc
            if data:
                return data
            # A raw tty with VMIN 0 reads nothing rather than blocking; a hung-up one does so
            # although the loop keeps calling it readable: that is the end of the device.
            empty += 1
            if empty > MAX_EMPTY_READS:
                raise DriverIOError(f"{self._what}: end of stream (device unplugged or writer gone)")
            self._ready.clear()
            await self._ready.wait()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            except OSError as exc:
                raise DriverIOError(f"{self._what}: write failed: {exc.strerror or exc}") from exc
            view = view[sent:]

    async def aclose(self) -> None:
        """Once; a second call does nothing (the number may belong to another file by then)."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(fd)
        if self._closer is not None:
            self._closer()
        else:
            with contextlib.suppress(OSError):
                os.close(fd)


class TcpStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, what: str) -> None:
        self._reader, self._writer, self._what = reader, writer, what

    async def read(self) -> bytes:
        try:
            data = await self._reader.read(CHUNK)
        except OSError as exc:
            raise DriverIOError(f"{self._what}: read failed: {exc.strerror or exc}") from exc
        if not data:
            raise DriverIOError(f"{self._what}: connection closed by the peer")
        return data

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise DriverIOError(f"{self._what}: write failed: {exc.strerror or exc}") from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def open_tcp(host: str, port: int, timeout_s: float = 5.0) -> ByteStream:
    what = f"tcp://{host}:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise DriverIOError(f"{what}: cannot connect: {exc}") from exc
    return TcpStream(reader, writer, what)


async def open_path(path: str, baudrate: int | None) -> ByteStream:
    """A serial port (configured 8N1 at `baudrate` with pyserial), or a FIFO / other character
    device read as it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DriverIOError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    if stat.S_ISFIFO(mode) or baudrate is None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            raise DriverIOError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        return FdStream(fd, path)
    return _open_serial(path, baudrate)


def _open_serial(path: str, baudrate: int) -> ByteStream:
    import serial

    try:
        # exclusive: a second program (`probe --listen` while the agent runs) is refused, not
        # handed half of the stick's frames
        port: Any = serial.Serial(
            path, baudrate, bytesize=8, parity="N", stopbits=1, timeout=0, exclusive=True
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise DriverIOError(f"{path}: cannot open: {in_use_text(exc)}") from exc
    os.set_blocking(port.fileno(), False)
    return FdStream(port.fileno(), path, closer=port.close)
