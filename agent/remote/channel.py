"""Adapts `CommandProcessor` to the uplink's `on_command(topic_suffix, payload)` hook.

The result goes to the outbox as a `command_result` event (stream `events`), so the centre hears
about it with the same no-loss promise as any reading, even when the uplink is down right now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from water_edge.agent.remote.processor import CommandProcessor
from water_edge.agent.remote.result import CommandResult
from water_edge.core.reading import Event

log = structlog.get_logger(__name__)


class CommandChannel:
    """`await channel(topic_suffix, payload)`: verify, run, emit the result, then run its follow-up."""

    def __init__(self, processor: CommandProcessor, emit: Callable[[Event], Awaitable[None]]) -> None:
        self._processor = processor
        self._emit = emit

    async def __call__(self, topic_suffix: str, payload: bytes) -> None:
        result: CommandResult = await self._processor.handle(topic_suffix, payload)
        await self._emit(result.to_event())
        if result.after is not None:
            await result.after()
