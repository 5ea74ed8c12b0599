"""Backlog drain after an outage: 10 minutes at 1,000 readings/s to a local Mosquitto.

The outbox is filled the way the pipeline would have filled it during the outage (one row per
stream per 200 ms flush: 5 streams x 40 readings), then the uplink is started and timed until
every row is acknowledged and deleted. One live row is appended right after the start; the figure
`backlog.live_latency` is how long it took to be acknowledged while the backlog drained (the
two-lane uplink: live data does not wait behind the backlog). Prints figures, never fails.
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
OUTAGE_S = 600
RATE = 1000
STREAMS = 5
FLUSH_S = 0.2
PER_ROW = int(RATE * FLUSH_S / STREAMS)


class _Watch:
    """Delegates to the outbox; notes when all backlog rows and the live row are acknowledged."""

    def __init__(self, inner: AsyncOutbox, backlog: int) -> None:
        self._inner = inner
        self._left = backlog
        self.live_id = -1
        self.done = asyncio.Event()
        self.live_acked_at: float | None = None

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        return await self._inner.lease(after_id, limit, upto_id)

    async def last_id(self) -> int:
        return await self._inner.last_id()

    async def ack(self, row_ids: Sequence[int]) -> None:
        await self._inner.ack(row_ids)
        if self.live_id in row_ids:
            self.live_acked_at = time.perf_counter()
        self._left -= sum(1 for i in row_ids if i != self.live_id)
        if self._left <= 0 and self.live_acked_at is not None:
            self.done.set()


def _outage_batches() -> list[Batch]:
    out = []
    for flush in range(int(OUTAGE_S / FLUSH_S)):
        ts = T0_NS + int(flush * FLUSH_S * 1e9)
        for s in range(STREAMS):
            readings = [
                Reading(f"plc{s}", f"pump{j % 8}.tag{j}", ts, 12.75 + j, "good", "bar")
                for j in range(PER_ROW)
            ]
            out.append(Batch(f"plc{s}", readings=readings))
    return out


async def _drain(broker: Mosquitto, db: Path) -> dict[str, float]:
    async with await AsyncOutbox.open(db, max_bytes=1 << 31, synchronous="normal") as box:
        batches = _outage_batches()
        for i in range(0, len(batches), 500):
            await box.append(batches[i : i + 500])
        watch = _Watch(box, len(batches))
        uplink = MqttUplink(MqttConfig(host=broker.host, port=broker.port), watch, "bench", "gw")
        started = time.perf_counter()
        task = asyncio.create_task(uplink.run())
        await asyncio.sleep(0.05)
        live_at = time.perf_counter()
        (watch.live_id,) = await box.append([Batch("live", readings=[Reading("x", "y", T0_NS, 1.0)])])
        uplink.notify()
        await watch.done.wait()
        elapsed = time.perf_counter() - started
        await uplink.stop()
        await task
    return {
        "elapsed": elapsed,
        "rows": len(batches),
        "live_latency": (watch.live_acked_at or 0) - live_at,
    }


def run(tmpdir: Path) -> list[dict[str, Any]]:
    """Measure and return one dict per figure: name, value, unit, target."""
    with Mosquitto() as broker:
        r = asyncio.run(_drain(broker, tmpdir / "backlog.db"))
    readings = r["rows"] * PER_ROW
    return [
        figure("backlog.drain", readings / r["elapsed"], "readings/s", ">= 50000"),
        figure("backlog.drain_msgs", r["rows"] / r["elapsed"], "msg/s", "reference"),
        figure("backlog.drain_time_10min_outage", r["elapsed"], "s", "reference"),
        figure(
            "backlog.live_latency",
            r["live_latency"] * 1000,
            "ms",
            "live row acknowledged while the backlog drains (<< drain time)",
        ),
    ]


if __name__ == "__main__":
    run_alone(run)
