"""Pseudo-terminal pairs standing in for serial cables: the sim holds the master end, a driver
opens the slave path (`/dev/pts/N`) as it would `/dev/ttyUSB0`.

A stable symlink (`link`) points at the current slave, like a udev `/dev/serial/by-id/...` name:
`unplug()` closes the pair (the driver's reads fail, as when a USB adapter is pulled) and
`plug()` makes a new pair and repoints the link, so a driver configured with the link finds the
device again when it reopens.

A pty keeps no parity: Linux drops PARENB (and forces CS8) from whatever a program sets on it. On
its own that is harmless (a pty carries bytes, not bits on a wire), but glibc's `tcsetattr`
(Debian 12's at least; the ioctl itself succeeds) reads the settings back and reports EINVAL when
they are not what was asked *and none of them changed*. A program's first open asking for 8E1
changes the speed or CLOCAL and goes through; its next open asks for what the pty already holds
but the parity it cannot hold, and was refused: a pty took 8E1 at its first open only. So the sim
puts the line back as no program has set it up (`idle_line`: CLOCAL off, which every serial
program turns on and a pty ignores) whenever a program closes the slave (`CloseWatch`, inotify)
and, for M-Bus, as soon as the master has sent a request; the next open then changes CLOCAL and is
taken, any number of times, as on a real adapter. Left over: a program that sent nothing and
reopens before the sim's event loop has noticed its close, and one that sets its line twice in one
open (pymodbus sets its inter-byte timeout after opening), are still refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pty
import struct
import termios
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

_IN_CLOSE: Final = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
_IN_IGNORED: Final = 0x8000  # the watch is gone (the pty closed)
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len (+ len bytes of name)


def idle_line(fd: int) -> None:
    """Put a pty's line back as no program has set it up (CLOCAL off), through either end: termios
    calls on the master act on the slave's settings. A closed or gone pty is left alone."""
    if fd < 0:
        return
    with contextlib.suppress(termios.error, OSError):
        attrs = termios.tcgetattr(fd)
        if attrs[2] & termios.CLOCAL:
            attrs[2] &= ~termios.CLOCAL
            termios.tcsetattr(fd, termios.TCSANOW, attrs)


class CloseWatch:
    """Calls `on_close` on the running loop each time a program closes the file at `path`
    (inotify `IN_CLOSE_*`; the sim's own descriptors from `openpty` never opened the path)."""

    def __init__(self, path: str, on_close: Callable[[], None]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd: int = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(fd, os.fsencode(path), _IN_CLOSE) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {path}")
        self._fd = fd
        self._on_close = on_close
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    @classmethod
    def start(cls, path: str, on_close: Callable[[], None]) -> CloseWatch | None:
        """A watch, or None where there is none to have (no inotify, no running loop): then only a
        program's first open of `path` may ask for a parity."""
        try:
            return cls(path, on_close)
        except (OSError, AttributeError, RuntimeError) as exc:
            log.warning("pty.close_watch_unavailable", path=path, error=str(exc))
            return None

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stop()
            return
        closed = gone = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, name_len = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + name_len
            closed |= bool(mask & _IN_CLOSE)
            gone |= bool(mask & _IN_IGNORED)
        if closed:
            self._on_close()
        if gone:
            self.stop()

    def stop(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # the loop already closed
            asyncio.get_running_loop().remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1


class PtyLink:
    """One pseudo-terminal pair with a stable symlink to its slave side."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master_fd = -1
        self._slave_fd = -1
        self._watch: CloseWatch | None = None
        self.path = ""

    @property
    def plugged(self) -> bool:
        return self.master_fd >= 0

    def plug(self) -> str:
        """Open a new pair in raw mode; returns the slave path. Called on a running loop, the line
        is put back to idle each time a program closes it (see the module's doc)."""
        self.unplug()
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master_fd, self._slave_fd = master, slave
        # Holding the slave open ourselves keeps the master from seeing a hang-up (EIO) while no
        # driver has the port open.
        self.path = os.ttyname(slave)
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._watch = CloseWatch.start(self.path, self.idle)
        tmp = self.link.with_name(self.link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.path)
        os.replace(tmp, self.link)
        return self.path

    def idle(self) -> None:
        """Put the line back as no program has set it up (`idle_line`)."""
        idle_line(self.master_fd)

    def unplug(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        for fd in (self.master_fd, self._slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self._slave_fd = -1

    def close(self) -> None:
        self.unplug()
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
