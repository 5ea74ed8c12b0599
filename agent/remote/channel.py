"""Adapts `CommandProcessor` to the uplink's command inbox: `await channel(topic_suffix, payload)`.

The result goes to the outbox as a `command_result` event (stream `events`), so the centre hears
about it with the same no-loss promise as any reading, even when the uplink is down right now. A
command the inbox refused for its size reaches `refuse_oversize` instead, and is audited and
answered like any other refusal. `max_bytes` tells the inbox (and through it the MQTT Maximum
Packet Size) the largest command the processor accepts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from water_edge.agent.remote.processor import CommandProcessor
from water_edge.agent.remote.result import CommandResult
from water_edge.core.errors import AgentError
from water_edge.core.reading import Event

log = structlog.get_logger(__name__)

Emit = Callable[[Event], Awaitable[None]]


class CommandChannel:
    """Verify, run, emit the result, then run its follow-up; `emit` may be bound after construction."""

    def __init__(self, processor: CommandProcessor, emit: Emit | None = None) -> None:
        self._processor = processor
        self._emit = emit

    @property
    def max_bytes(self) -> int:
        return self._processor.max_bytes

    @property
    def time_limit_s(self) -> float:
        return self._processor.time_limit_s

    def bind(self, emit: Emit) -> None:
        self._emit = emit

    async def __call__(self, topic_suffix: str, payload: bytes) -> None:
        await self._answer(await self._processor.handle(topic_suffix, payload))

    async def refuse_oversize(self, topic_suffix: str, size: int, digest: str) -> None:
        """The inbox turned away a command of `size` bytes before it was parsed: audit and answer it."""
        limit = self._processor.max_bytes
        await self._answer(
            self._processor.refuse("too_large", f"{size} bytes > {limit}", topic_suffix, digest, size=size)
        )

    async def _answer(self, result: CommandResult) -> None:
        if self._emit is None:
            raise AgentError("command channel used before the agent bound its emit")
        if not result.quiet:
            await self._emit(result.to_event())
        if result.after is not None:
            await result.after()
