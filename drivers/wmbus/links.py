"""The receivers one wmbus device listens to, each with its own byte stream and frame parser.

With one receiver a lost stream is the device's loss: `receive()` raises `DriverIOError` and the
supervisor stands in bad readings and reopens, as for every driver. With several, a receiver that
fails to open or drops out is reopened here on its own backoff (1 s doubling to 60 s, jittered)
while the others go on; only when none is open does `receive()` raise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from water_edge.core.backoff import Backoff
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import now_ns
from water_edge.drivers.wmbus import receivers, transport
from water_edge.drivers.wmbus.config import ReceiverConfig
from water_edge.drivers.wmbus.health import SetupState

log = structlog.get_logger(__name__)

REOPEN_MIN_S: Final = 1.0
REOPEN_MAX_S: Final = 60.0
SETUP_ANSWER_S: Final = 5.0  # a stick answers its set-up within milliseconds

StreamOpener = Callable[[ReceiverConfig], Awaitable[transport.ByteStream]]


async def open_receiver_stream(cfg: ReceiverConfig) -> transport.ByteStream:
    if cfg.host is not None and cfg.tcp_port is not None:
        return await transport.open_tcp(cfg.host, cfg.tcp_port)
    assert cfg.port is not None  # the config validator guarantees one source
    return await transport.open_path(cfg.port, cfg.serial_baudrate)


@dataclass(eq=False)
class Link:
    """One receiver: its config, parser, stream (None while closed) and what happened to it."""

    config: ReceiverConfig
    parser: receivers.Receiver
    stream: transport.ByteStream | None = None
    reading: asyncio.Task[bytes] | None = None
    opening: asyncio.Task[None] | None = None  # a reopen in flight (several receivers)
    backoff: Backoff = field(default_factory=lambda: Backoff(REOPEN_MIN_S, REOPEN_MAX_S))
    retry_at: float = 0.0  # loop time of the next open attempt while closed
    opens: int = 0
    last_error: str | None = None
    last_error_ns: int | None = None
    first_copies: int = 0  # telegrams this receiver delivered before any other did
    last_frame_ns: int | None = None
    setup_sent_ns: int | None = None  # when set-up commands were last written (None: it has none)
    reported_open: bool | None = None  # the state last put in `Links.changes`

    @property
    def name(self) -> str:
        return self.config.label

    def setup_state(self, now: int) -> SetupState:
        """`none` (nothing to set up), `sent`, `confirmed`, `refused` (an error status), or
        `unanswered` (no answer within SETUP_ANSWER_S: not this kind of stick, or not this port)."""
        if self.setup_sent_ns is None:
            return "none"
        status = self.parser.setup_status
        if status is None:
            return "unanswered" if now - self.setup_sent_ns > SETUP_ANSWER_S * 1e9 else "sent"
        return "confirmed" if status == 0 else "refused"


class Links:
    def __init__(self, device: str, configs: list[ReceiverConfig], opener: StreamOpener) -> None:
        self.device = device
        self.links = [Link(c, receivers.build(c.receiver)) for c in configs]
        self._opener = opener
        self.opened = False  # between open() and aclose()
        # With several receivers: each one opening or going down, in order, for the driver to
        # report (a single receiver's state is the device's own: the supervisor reports it).
        self.changes: list[tuple[Link, bool, int]] = []

    @property
    def several(self) -> bool:
        return len(self.links) > 1

    def any_open(self) -> bool:
        return any(link.stream is not None for link in self.links)

    async def open(self) -> None:
        """Open every receiver; DriverIOError only when none opens (the others are retried)."""
        await self.aclose()
        now = asyncio.get_running_loop().time()
        for link in self.links:
            link.backoff.reset()
        # Together: a receiver whose host does not answer must not hold up the others.
        await asyncio.gather(*(self._open(link, now) for link in self.links))
        if not self.any_open():
            raise DriverIOError(self._all_down("no receiver could be opened"))
        self.opened = True

    async def aclose(self) -> None:
        self.opened = False
        for link in self.links:
            await self._close(link)

    async def receive(self, timeout_s: float) -> list[tuple[Link, bytes]]:
        """Bytes that arrived from any receiver within `timeout_s` (none when it passed quietly)."""
        if not self.opened:
            raise DriverIOError(f"{self.device}: not open")
        loop = asyncio.get_running_loop()
        now = loop.time()
        for link in self.links:
            if link.stream is None and link.opening is None and self.several and link.retry_at <= now:
                link.opening = asyncio.ensure_future(self._open(link, now))
            elif link.stream is not None and link.reading is None:
                link.reading = asyncio.ensure_future(link.stream.read())
        reads = {link.reading: link for link in self.links if link.reading is not None}
        opens = [link.opening for link in self.links if link.opening is not None]
        if not reads and not opens:
            raise DriverIOError(self._all_down("every receiver is lost"))
        retries = [link.retry_at for link in self.links if link.stream is None and link.opening is None]
        wait_s = min([timeout_s, *(max(0.0, at - now) for at in retries)])
        done, _ = await asyncio.wait([*reads, *opens], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        for link in self.links:
            if link.opening is not None and link.opening.done():
                link.opening = None
        out: list[tuple[Link, bytes]] = []
        for task, link in reads.items():
            if task not in done:
                continue
            link.reading = None
            try:
                out.append((link, task.result()))
            except DriverIOError as exc:
                await self._lost(link, str(exc))
            except Exception as exc:  # as in _open: a receiver lost, whatever the cause
                log.exception("wmbus.receiver_read_crashed", driver=self.device, receiver=link.name)
                await self._lost(link, f"read failed: {type(exc).__name__}: {exc}")
            else:
                link.backoff.reset()  # bytes came: a receiver that opens and drops at once backs off
        return out

    async def _open(self, link: Link, now: float) -> None:
        try:
            stream = await self._opener(link.config)
        except DriverIOError as exc:
            self._failed(link, str(exc), now)
            return
        except Exception as exc:  # an OS or library error no transport foresaw: still a failed open
            log.exception("wmbus.receiver_open_crashed", driver=self.device, receiver=link.name)
            self._failed(link, f"open failed: {type(exc).__name__}: {exc}", now)
            return
        link.parser.reset()  # half a frame from before a loss would swallow the stick's answer
        commands = link.parser.setup(tuple(link.config.link_modes))
        link.parser.setup_status = None
        link.setup_sent_ns = now_ns() if commands else None
        try:
            for command in commands:
                await stream.write(command)
        except DriverIOError as exc:
            await stream.aclose()
            self._failed(link, str(exc), now)
            return
        except asyncio.CancelledError:
            await stream.aclose()
            raise
        link.stream = stream
        link.opens += 1
        self._report(link, True)
        if self.several and link.opens > 1:
            log.info("wmbus.receiver_reopened", driver=self.device, receiver=link.name)

    def _failed(self, link: Link, error: str, now: float) -> None:
        link.last_error, link.last_error_ns = error, now_ns()
        link.retry_at = now + link.backoff.next_delay()
        if self.several and link.reported_open is not False:
            log.warning("wmbus.receiver_down", driver=self.device, receiver=link.name, error=error)
        self._report(link, False)

    def _report(self, link: Link, is_open: bool) -> None:
        if self.several and link.reported_open is not is_open:
            link.reported_open = is_open
            self.changes.append((link, is_open, now_ns()))

    async def _lost(self, link: Link, error: str) -> None:
        await self._close(link)
        self._failed(link, error, asyncio.get_running_loop().time())

    async def _close(self, link: Link) -> None:
        for task in (link.reading, link.opening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, DriverIOError):
                    await task
        link.reading = link.opening = None
        stream, link.stream = link.stream, None
        if stream is not None:
            await stream.aclose()

    def _all_down(self, what: str) -> str:
        if not self.several:
            return self.links[0].last_error or f"{self.device}: {what}"
        errors = "; ".join(f"{link.name}: {link.last_error}" for link in self.links)
        return f"{self.device}: {what} ({errors})"
