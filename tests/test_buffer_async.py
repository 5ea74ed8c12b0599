"""AsyncOutbox from asyncio: the same contract as Outbox, with SQLite on one worker thread."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest

from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.codec import decode_readings
from water_edge.buffer.types import Batch
from water_edge.core.errors import BufferError
from water_edge.core.reading import Reading

BIG = 1 << 30


def tele(stream: str, i: int) -> Batch:
    return Batch(stream, readings=[Reading("plc1", "t", i, i)])


async def test_append_lease_ack_stats(tmp_path: Path) -> None:
    async with await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=BIG) as outbox:
        ids = await outbox.append([tele("a", 1), tele("b", 2)])
        rows = await outbox.lease(0, 10)
        assert [r.id for r in rows] == ids
        assert decode_readings(rows[1].body) == tele("b", 2).readings
        await outbox.ack(ids[:1])
        stats = await outbox.stats()
        assert (stats.rows, stats.streams) == (1, {"b": 1})


async def test_concurrent_tasks_are_serialised_in_call_order(tmp_path: Path) -> None:
    async with await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=BIG) as outbox:
        results = await asyncio.gather(*(outbox.append([tele("a", i)]) for i in range(50)))
        rows = await outbox.lease(0, 100)
    assert [ids[0] for ids in results] == [r.id for r in rows]
    assert [r.seq for r in rows] == list(range(1, 51))
    assert [decode_readings(r.body)[0].ts_ns for r in rows] == list(range(50))


async def test_sqlite_runs_on_one_worker_thread_not_the_loop(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    async with await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=BIG) as outbox:
        for i in range(5):
            await outbox.append([tele("a", i)])
        started = [t for t in set(threading.enumerate()) - before if t.name.startswith("outbox")]
    assert len(started) == 1
    assert started[0] is not threading.current_thread()


async def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = await AsyncOutbox.open(path, max_bytes=BIG)
    ids = await outbox.append([tele("a", 1), tele("a", 2)])
    await outbox.close()
    await outbox.close()  # idempotent
    with pytest.raises(BufferError, match="closed"):
        await outbox.lease(0, 10)
    async with await AsyncOutbox.open(path, max_bytes=BIG, synchronous="normal") as again:
        assert [r.id for r in await again.lease(0, 10)] == ids


async def test_open_errors_are_buffer_errors(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(BufferError, match=re.escape(str(path))):
        await AsyncOutbox.open(path, max_bytes=BIG)
