"""`AudioLeakProcessor`: the leak detector on one audio device's analysis windows, as the agent runs it.

It takes no readings feed (`streams` is empty): windows come straight from the device's
`WindowSource` capability, on the event loop. A scorer that falls behind loses windows (counted
in its health), never blocks capture.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from water_edge.core.processor import AudioWindowLike, EventSink, ReadingSource, WindowSource
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.detector import LeakProcessor, LeakScorer
from water_edge.models.runtime import load_model


@dataclass(frozen=True)
class LeakHealth:
    windows_scored: int
    windows_dropped: int
    leak_probability: float | None  # the latest window's, before smoothing

    def status_lines(self) -> list[str]:
        return [f"{self.windows_scored} windows scored, leak probability {self.leak_probability}"]


class AudioLeakProcessor:
    """The leak detector on one audio device's analysis windows (it needs no readings feed)."""

    streams: frozenset[str] = frozenset()  # the runtime's feed then carries nothing

    def __init__(self, section: LeakModelSection, driver: WindowSource, *, max_queued: int = 8) -> None:
        scorer = LeakScorer(load_model(section.model)) if section.model else LeakScorer()
        self.slot = scorer.slot  # `model_update` commands swap the model in here
        self.name = f"leak:{section.device}"
        self.leak = LeakProcessor(
            scorer,
            source=section.device,
            alpha=section.alpha,
            on_windows=section.on_windows,
            off_windows=section.off_windows,
        )
        self._driver = driver
        self._max_queued = max_queued
        self.windows_dropped = 0

    async def run(self, source: ReadingSource, emit: EventSink) -> None:
        queue: asyncio.Queue[AudioWindowLike] = asyncio.Queue(self._max_queued)

        def offer(window: AudioWindowLike) -> None:
            if queue.full():
                self.windows_dropped += 1
            else:
                queue.put_nowait(window)

        async def windows() -> AsyncIterator[AudioWindowLike]:
            while True:
                yield await queue.get()

        remove = self._driver.add_window_listener(offer)
        try:
            await self.leak.run(windows(), emit)
        finally:
            remove()

    def health(self) -> LeakHealth:
        trend = list(self.leak.trend)
        return LeakHealth(
            windows_scored=self.leak.windows_scored,
            windows_dropped=self.windows_dropped,
            leak_probability=round(trend[-1], 4) if trend else None,
        )
