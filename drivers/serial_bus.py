"""One transaction at a time per serial port, shared fairly by every device on that port.

On a multi-drop bus (RS-485 Modbus RTU, M-Bus) only one request may be on the wire; several
`[[devices]]` sections naming the same port get the same `SerialPort` from `attach(path)`, and
each transaction runs inside `async with port.transaction(gap_s):`. The lock is FIFO (asyncio's
lock hands over to the oldest waiter, and a releasing task cannot barge in front of it), so two
devices polling flat out alternate request by request; a dead device costs the others at most
its own timeout per request. `gap_s` is the protocol's inter-frame silence (3.5 characters for
Modbus RTU), kept between the end of one transaction and the start of the next.

The port also carries the one open connection (`port.client`) that the devices share: the first
user opens it, `detach()` tells the last one to close it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class SerialBusHealth:
    """A shared port's counters (`core.health.Health`)."""

    port: str
    users: int
    transactions: int
    wait_max_s: float

    def status_lines(self) -> list[str]:
        return [
            f"bus {self.port}  users {self.users}  transactions {self.transactions}  "
            f"longest wait {self.wait_max_s:g} s"
        ]


@dataclass
class SerialPort:
    """A shared serial port: its lock, its users, its open connection and its counters."""

    path: str
    settings: tuple[Any, ...] = ()
    users: int = 0
    client: Any = None  # the protocol stack's connection, owned by the driver module
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _last_end: float = 0.0
    transactions: int = 0
    wait_max_s: float = 0.0

    @asynccontextmanager
    async def transaction(self, gap_s: float = 0.0) -> AsyncIterator[None]:
        queued = time.monotonic()
        async with self._lock:
            self.wait_max_s = max(self.wait_max_s, time.monotonic() - queued)
            silence = self._last_end + gap_s - time.monotonic()
            if silence > 0:
                await asyncio.sleep(silence)
            try:
                yield
            finally:
                self._last_end = time.monotonic()
                self.transactions += 1

    def health(self) -> SerialBusHealth:
        return SerialBusHealth(
            port=self.path,
            users=self.users,
            transactions=self.transactions,
            wait_max_s=round(self.wait_max_s, 4),
        )


_PORTS: dict[str, SerialPort] = {}


class PortSettingsConflictError(ValueError):
    """Two devices on one port ask for different line settings (baud, parity, ...)."""


# A port another program holds (pyserial's exclusive lock: EAGAIN; the kernel: EBUSY), in words.
IN_USE_ERRNOS: Final = (errno.EAGAIN, errno.EBUSY)
IN_USE_TEXT: Final = (
    "in use by another program (the agent reading it? stop it first: systemctl stop edge-agent)"
)


def in_use_text(exc: BaseException) -> str:
    """Why a serial port would not open, in words when another program holds it (pyserial's
    `exclusive` lock, as pymodbus takes one for an RTU port: EAGAIN, or EBUSY from the kernel)."""
    if getattr(exc, "errno", None) in IN_USE_ERRNOS:
        return IN_USE_TEXT
    return str(exc)


def attach(path: str, settings: tuple[Any, ...] = ()) -> SerialPort:
    """The shared port for `path` (created on first use); `settings` must match other users'.
    Paths are compared where they lead: `/dev/serial/by-id/...` and the `/dev/ttyUSB0` it links
    to are one port (opened twice, the second device would find it busy for good)."""
    key = os.path.realpath(path)
    port = _PORTS.get(key)
    if port is None:
        port = _PORTS[key] = SerialPort(path, settings)
    elif port.users and settings and port.settings != settings:
        raise PortSettingsConflictError(
            f"{path}: line settings {settings} differ from {port.settings} used by another device"
        )
    port.settings = settings or port.settings
    port.users += 1
    return port


def detach(port: SerialPort) -> bool:
    """Drop one user; True when it was the last (the caller then closes `port.client`)."""
    port.users = max(0, port.users - 1)
    if port.users == 0:
        for key in [k for k, p in _PORTS.items() if p is port]:
            del _PORTS[key]
        return True
    return False


PortSettingsConflict = PortSettingsConflictError  # the name drivers.mbus uses
