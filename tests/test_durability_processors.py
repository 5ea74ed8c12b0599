"""The processors hook in the real runtime: a processor gets every reading through its feed, and
one that raises is counted, announced as an event and restarted (in-process `Agent`, real outbox)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from tests.support.testing import eventually, write_agent_config
from water_edge.agent.config import load_config
from water_edge.agent.runtime import Agent
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.codec import decode_events
from water_edge.core.processor import EventSink, ReadingSource
from water_edge.core.reading import Event, Reading


@dataclass(frozen=True)
class FlakyHealth:
    runs: int
    seen: int

    def status_lines(self) -> list[str]:
        return [f"{self.runs} runs, {self.seen} readings seen"]


class FlakyProcessor:
    """Raises on its first batch; afterwards counts readings and emits one event per batch."""

    name = "flaky"

    def __init__(self) -> None:
        self.runs = 0
        self.seen: list[float] = []

    async def run(self, source: ReadingSource, emit: EventSink) -> None:
        self.runs += 1
        async for stream, batch in source:
            if self.runs == 1:
                raise RuntimeError("model file missing")
            self.seen += [float(r.value or 0) for r in batch]
            await emit(Event("leak", stream, batch[0].ts_ns, "alarm", 0.9))

    def health(self) -> FlakyHealth:
        return FlakyHealth(self.runs, len(self.seen))


async def test_a_crashing_processor_is_restarted_counted_and_announced(tmp_path: Path) -> None:
    config = load_config(write_agent_config(tmp_path))
    processor = FlakyProcessor()
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=1 << 26) as box:
        agent = Agent(config, box, processors=[processor])
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await agent.pipeline.submit("plc1", [Reading("plc1", "a", 1, 1.0)])  # lost to the crash
        await eventually(lambda: processor.runs == 2, what="the processor restarted after its crash")
        for i in range(2, 6):
            await agent.pipeline.submit("plc1", [Reading("plc1", "a", i, float(i))])
        await eventually(lambda: len(processor.seen) >= 4, what="the restarted processor seeing 4 readings")
        snapshot = agent.snapshot()
        stop.set()
        await asyncio.wait_for(task, 15)
        rows = await box.lease(0, 1000)
    kinds = [e.kind for r in rows if r.stream == "events" for e in decode_events(r.body)]
    (entry,) = snapshot["processors"]
    assert entry["crashes"] == 1
    assert processor.runs == 2
    assert processor.seen == [2.0, 3.0, 4.0, 5.0], "the restarted processor gets what came after it"
    assert entry["feed"]["dropped_readings"] == 0
    assert entry["health"]["runs"] == 2  # the processor's typed health, as JSON and as its own lines
    # its own lines, with the runtime's crash count added to the first
    assert entry["lines"] == [f"2 runs, {entry['health']['seen']} readings seen  crashes 1"]
    assert "processor_crashed" in kinds
    assert "leak" in kinds
