"""Drain rate of the MQTT uplink: a pre-filled outbox to a local Mosquitto; prints figures, never fails.

The bench starts its own Mosquitto (the test suite's launcher, on a free port), fills a real
outbox (WAL, synchronous=normal) with rows of `READINGS_PER_ROW` readings, then times the uplink
from start until every row is acknowledged and deleted. Two shapes are measured: large rows
(what a pipeline flushing many tags a second commits) and one-reading rows (per-message cost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.figures import figure, run_alone
from tests.support.broker import Mosquitto
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.types import Batch, OutboxRow
from water_edge.core.reading import Reading

T0_NS = 1_750_000_000_000_000_000


class _CountingOutbox:
    """Delegates lease/ack and fires an event when `expected` rows have been acknowledged."""

    def __init__(self, inner: AsyncOutbox, expected: int) -> None:
        self._inner = inner
        self._left = expected
        self.done = asyncio.Event()

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        return await self._inner.lease(after_id, limit, upto_id)

    async def last_id(self) -> int:
        return await self._inner.last_id()

    async def ack(self, row_ids: Sequence[int]) -> None:
        await self._inner.ack(row_ids)
        self._left -= len(row_ids)
        if self._left <= 0:
            self.done.set()


def _batches(rows: int, per_row: int) -> list[Batch]:
    out = []
    for i in range(rows):
        readings = [
            Reading("plc1", f"pump{j % 97}.tag{j % 13}", T0_NS + i * per_row + j, 12.75 + j, "good", "bar")
            for j in range(per_row)
        ]
        out.append(Batch("plc1", readings=readings))
    return out


async def _drain(broker: Mosquitto, db: Path, rows: int, per_row: int) -> tuple[float, int]:
    async with await AsyncOutbox.open(db, max_bytes=1 << 30, synchronous="normal") as box:
        batches = _batches(rows, per_row)
        for i in range(0, rows, 500):
            await box.append(batches[i : i + 500])
        payload = sum(len(r.body) for r in await box.lease(0, 10))
        counting = _CountingOutbox(box, rows)
        uplink = MqttUplink(MqttConfig(host=broker.host, port=broker.port), counting, "bench", "gw")
        started = time.perf_counter()
        task = asyncio.create_task(uplink.run())
        await counting.done.wait()
        elapsed = time.perf_counter() - started
        await uplink.stop()
        await task
    return elapsed, payload // 10


def run(tmpdir: Path) -> list[dict[str, Any]]:
    """Measure and return one dict per figure: name, value, unit, target."""
    figures = []
    with Mosquitto() as broker:
        for name, rows, per_row in (("rows500", 400, 500), ("rows1", 20_000, 1)):
            elapsed, body = asyncio.run(_drain(broker, tmpdir / f"{name}.db", rows, per_row))
            figures += [
                figure(
                    f"uplink.drain_{name}",
                    rows * per_row / elapsed,
                    "readings/s",
                    ">= 10000 (peer: ~1300 at 10k tags)",
                ),
                figure(
                    f"uplink.drain_{name}_msgs",
                    rows / elapsed,
                    "msg/s",
                    "reference (paho ~19000 QoS 1 msg/s of 1 KB)",
                ),
                figure(f"uplink.body_{name}", body, "bytes/row", "reference"),
            ]
    return figures


if __name__ == "__main__":
    run_alone(run)
