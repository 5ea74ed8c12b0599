"""The command inbox: messages from `{base}/cmd/#` checked, queued (bounded) and handed to one handler task.

The drain never waits for a handler: `offer()` runs on the loop thread as a message arrives and
only checks and enqueues; one worker (`run()`) calls the handler, each call bounded by a timeout.
A full queue drops the command, a payload over the size limit or a topic that is not a command
topic rejects it; both are counted and logged, never raised. The timeout is a last resort: a
handler that names its own time limit (`time_limit_s`) answers a command that runs out of time
itself, so the inbox waits beyond that.

A handler with the `SizedCommandHandler` capability sets the size limit (`max_bytes`) and is told
of each oversized command (`refuse_oversize`, through the same queue), so that refusal is audited
and answered like any other; the payload itself is not kept.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import structlog

from water_edge.agent.uplink.health import CommandStats
from water_edge.agent.uplink.topics import Topics

log = structlog.get_logger(__name__)

CommandHandler = Callable[[str, bytes], Awaitable[None]]

MAX_COMMAND_BYTES: Final = 64 * 1024
COMMAND_QUEUE: Final = 16
COMMAND_TIMEOUT_S: Final = 30.0


@runtime_checkable
class SizedCommandHandler(Protocol):
    """A command handler that names its size limit and answers commands refused for their size."""

    @property
    def max_bytes(self) -> int: ...

    async def __call__(self, suffix: str, payload: bytes) -> None: ...

    async def refuse_oversize(self, suffix: str, size: int, digest: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Oversize:
    size: int
    digest: str


def command_limit(handler: CommandHandler | None) -> int:
    """The largest command payload `handler` takes."""
    return handler.max_bytes if isinstance(handler, SizedCommandHandler) else MAX_COMMAND_BYTES


def command_timeout(handler: CommandHandler) -> float:
    """The inbox's bound on one call of `handler`: beyond the handler's own time limit when it
    names one (`time_limit_s`), so that the handler answers a command it ran out of time on."""
    own = getattr(handler, "time_limit_s", None)
    return COMMAND_TIMEOUT_S if not isinstance(own, int | float) else max(COMMAND_TIMEOUT_S, own + 10.0)


class CommandInbox:
    """Checks and queues command messages for `handler(suffix, payload)`; counts what became of each."""

    def __init__(
        self,
        topics: Topics,
        handler: CommandHandler,
        *,
        size: int = COMMAND_QUEUE,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._topics = topics
        self._handler = handler
        self._sized = handler if isinstance(handler, SizedCommandHandler) else None
        self.max_bytes = command_limit(handler) if max_bytes is None else max_bytes
        self._timeout_s = command_timeout(handler) if timeout_s is None else timeout_s
        self._queue: asyncio.Queue[tuple[str, bytes | _Oversize]] = asyncio.Queue(size)
        self.received = 0
        self.handled = 0
        self.dropped = 0
        self.rejected = 0
        self.failed = 0

    @property
    def queued(self) -> int:
        """Commands accepted and not yet taken by the worker."""
        return self._queue.qsize()

    def stats(self) -> CommandStats:
        return CommandStats(self.received, self.handled, self.dropped, self.rejected, self.failed)

    def offer(self, topic: str, payload: bytes) -> bool:
        """A message arrived on `topic`: queue it for the handler; False if rejected or dropped."""
        self.received += 1
        suffix = self._topics.command_suffix(topic)
        if suffix is None or len(payload) > self.max_bytes:
            self.rejected += 1
            log.warning("uplink.command_rejected", topic=topic[:200], size=len(payload))
            if suffix is not None and self._sized is not None:
                # Answered through the worker; only the size and a digest are kept.
                oversize = _Oversize(len(payload), hashlib.sha256(payload).hexdigest()[:16])
                self._enqueue(suffix[:64], oversize)
            return False
        return self._enqueue(suffix, payload)

    def _enqueue(self, suffix: str, item: bytes | _Oversize) -> bool:
        try:
            self._queue.put_nowait((suffix, item))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("uplink.command_dropped", command=suffix[:64], reason="handler busy")
            return False
        return True

    async def run(self) -> None:
        """Hand queued commands to the handler one at a time, until cancelled."""
        while True:
            suffix, item = await self._queue.get()
            try:
                async with asyncio.timeout(self._timeout_s):
                    if not isinstance(item, _Oversize):
                        await self._handler(suffix, item)
                    elif self._sized is not None:  # always so: only a sized handler gets these
                        await self._sized.refuse_oversize(suffix, item.size, item.digest)
                        continue
                self.handled += 1
            except TimeoutError:
                self.failed += 1
                log.error("uplink.command_timeout", command=suffix[:64], after_s=self._timeout_s)
            except Exception:
                # Last resort for a plug-in handler: one bad command must not end the channel.
                self.failed += 1
                log.exception("uplink.command_failed", command=suffix[:64])
