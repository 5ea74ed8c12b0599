"""A driver run under the agent's device supervisor, as the agent runs it, with what it hands on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from water_edge.agent.learnt_tags import LearntTags
from water_edge.agent.supervisor import DeviceRunner
from water_edge.core.reading import Event, Reading
from water_edge.drivers.base import DeviceConfig, Driver


@dataclass
class Supervised:
    runner: DeviceRunner
    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@contextlib.asynccontextmanager
async def supervised(
    config: DeviceConfig,
    driver: Driver,
    *,
    backoff_min_s: float = 0.2,
    backoff_max_s: float = 0.5,
    learnt: LearntTags | None = None,
) -> AsyncIterator[Supervised]:
    """`driver` reopened by the supervisor with a short backoff (and the record of learnt tags, as
    the agent keeps it); its readings and events collected until the block ends."""
    readings: list[Reading] = []
    events: list[Event] = []

    async def on_readings(_stream: str, batch: list[Reading]) -> None:
        readings.extend(batch)

    async def on_event(event: Event) -> None:
        events.append(event)

    runner = DeviceRunner(
        config,
        driver,
        on_readings,
        on_event,
        backoff_min_s=backoff_min_s,
        backoff_max_s=backoff_max_s,
        learnt=learnt,
    )
    task = asyncio.create_task(runner.run())
    try:
        yield Supervised(runner, readings, events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
