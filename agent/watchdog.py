"""systemd integration without a dependency: `sd_notify` over `$NOTIFY_SOCKET`, and the watchdog.

`Notifier` sends datagrams (`READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`) to the unix
socket systemd names in `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); without
it (a terminal, a test) every call is a no-op.

`Watchdog` pings only on proof of life: at each tick (half of `WATCHDOG_USEC`) it reads the
progress counters it was given (the pipeline's flush loop, the uplink's drain/reconnect loop) and
sends `WATCHDOG=1` only if every one of them moved since the previous ping. A stalled part (or a
blocked event loop, which stops the ticks themselves) lets the deadline pass, and systemd kills
and restarts the agent (`WatchdogSec=`, `Restart=on-failure`). `Watchdog.health()` is the status
document's `watchdog` section.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

Progress = Callable[[], int]


class Notifier:
    """Sends sd_notify messages; silent when `NOTIFY_SOCKET` is not set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; False (counted, logged) if it could not be sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            self.errors += 1
            log.warning("sd_notify.failed", error=str(exc))
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of `WATCHDOG_USEC` (if it is meant for this process), else None."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6


@dataclass(frozen=True, slots=True)
class WatchdogHealth:
    """The watchdog's counters (`core.health.Health`)."""

    interval_s: float
    pings: int
    withheld: int  # checks at which a loop had not progressed, so no ping was sent
    stalled: tuple[str, ...]  # the loops that had not progressed at the latest check

    def status_lines(self) -> list[str]:
        stalled = f"  stalled: {', '.join(self.stalled)}" if self.stalled else ""
        return [f"every {self.interval_s:g} s  pings {self.pings}  withheld {self.withheld}{stalled}"]


class Watchdog:
    """Pings `WATCHDOG=1` at `interval_s` while every progress counter keeps moving."""

    def __init__(
        self,
        notifier: Notifier,
        progress: Mapping[str, Progress],
        interval_s: float,
        status: Callable[[], str] | None = None,
    ) -> None:
        self._notifier = notifier
        self._progress = dict(progress)
        self.interval_s = interval_s
        self._status = status
        self._last = {name: read() for name, read in self._progress.items()}
        self.pings = 0
        self.withheld = 0
        self.stalled: list[str] = []

    def tick(self) -> bool:
        """One check: ping if everything progressed since the last check; True if it pinged."""
        now = {name: read() for name, read in self._progress.items()}
        self.stalled = [name for name, value in now.items() if value == self._last[name]]
        self._last = now
        fields = [] if self._status is None else [f"STATUS={self._status()}"]
        if self.stalled:
            self.withheld += 1
            log.warning("watchdog.withheld", stalled=self.stalled)
            if fields:
                self._notifier.send(*fields)
            return False
        self.pings += 1
        return self._notifier.send("WATCHDOG=1", *fields)

    def health(self) -> WatchdogHealth:
        return WatchdogHealth(
            interval_s=self.interval_s, pings=self.pings, withheld=self.withheld, stalled=tuple(self.stalled)
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.tick()
