"""The command inbox: messages from `{base}/cmd/#` checked, queued (bounded) and handed to one handler task.

The drain never waits for a handler: `offer()` runs on the loop thread as a message arrives and
only checks and enqueues; one worker (`run()`) calls the handler, each call bounded by a timeout.
A full queue drops the command, a payload over `MAX_COMMAND_BYTES` or a topic that is not a
command topic rejects it; both are counted and logged, never raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from water_edge.agent.uplink.health import CommandStats
from water_edge.agent.uplink.topics import Topics

log = structlog.get_logger(__name__)

CommandHandler = Callable[[str, bytes], Awaitable[None]]

MAX_COMMAND_BYTES: Final = 64 * 1024
COMMAND_QUEUE: Final = 16
COMMAND_TIMEOUT_S: Final = 30.0


class CommandInbox:
    """Checks and queues command messages for `handler(suffix, payload)`; counts what became of each."""

    def __init__(
        self,
        topics: Topics,
        handler: CommandHandler,
        *,
        size: int = COMMAND_QUEUE,
        max_bytes: int = MAX_COMMAND_BYTES,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self._topics = topics
        self._handler = handler
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(size)
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
        if suffix is None or len(payload) > self._max_bytes:
            self.rejected += 1
            log.warning("uplink.command_rejected", topic=topic, size=len(payload))
            return False
        try:
            self._queue.put_nowait((suffix, payload))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("uplink.command_dropped", command=suffix, reason="handler busy")
            return False
        return True

    async def run(self) -> None:
        """Hand queued commands to the handler one at a time, until cancelled."""
        while True:
            suffix, payload = await self._queue.get()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._handler(suffix, payload)
                self.handled += 1
            except TimeoutError:
                self.failed += 1
                log.error("uplink.command_timeout", command=suffix, after_s=self._timeout_s)
            except Exception:
                # Last resort for a plug-in handler: one bad command must not end the channel.
                self.failed += 1
                log.exception("uplink.command_failed", command=suffix)
