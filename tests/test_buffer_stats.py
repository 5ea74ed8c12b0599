"""`edge-agent buffer stats`: read-only stats while the agent writes, and their text and JSON forms."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import orjson
import pytest

from water_edge.buffer.outbox import Outbox
from water_edge.buffer.stats import format_stats, read_stats, stats_to_json
from water_edge.buffer.types import Batch, OutboxStats
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading, now_ns

BIG = 1 << 30


def tele(stream: str, n: int) -> Batch:
    return Batch(stream, readings=[Reading("plc1", f"t{i}", i, i) for i in range(n)])


def test_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with pytest.raises(BufferError, match=re.escape(str(path))):
        read_stats(path)
    assert list(tmp_path.iterdir()) == []


def test_stats_read_while_another_connection_writes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=BIG) as outbox:
        outbox.append([tele("a", 5), tele("b", 3)])
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE counters SET value = 5 WHERE name = 'evicted_rows'")
            # The write lock is held; a WAL reader still sees the last commit, without waiting.
            stats = read_stats(path)
            assert (stats.rows, stats.readings, stats.evicted_rows) == (2, 8, 0)
            assert stats.streams == {"a": 1, "b": 1}
            writer.execute("COMMIT")
        finally:
            writer.close()
        assert read_stats(path).evicted_rows == 5
        outbox.append([tele("a", 1)])
        assert read_stats(path).rows == 3


def test_stats_after_the_writer_has_closed_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=12345) as outbox:
        outbox.append([tele("a", 5)])
        expected = outbox.stats()
    files = sorted(p.name for p in tmp_path.iterdir())
    content = path.read_bytes()
    stats = read_stats(path)
    assert stats == expected
    assert stats.max_bytes == 12345
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def sample() -> OutboxStats:
    return OutboxStats(
        rows=1200,
        readings=600_000,
        bytes=48 * 1024 * 1024,
        max_bytes=64 * 1024 * 1024,
        oldest_created_ns=1_000_000_000_000,
        evicted_rows=3,
        evicted_readings=1500,
        streams={"plc1": 1100, "events": 100},
        epoch=6143980127734471,
    )


def test_format_stats_says_depth_quota_age_evictions_and_streams() -> None:
    text = format_stats(sample(), now_ns=1_000_000_000_000 + 3_725 * 10**9)
    assert "1,200 rows, 600,000 readings" in text
    assert "48.0 MiB of 64.0 MiB (75.0 %)" in text
    assert "1 h 2 min ago" in text
    assert "3 rows, 1,500 readings" in text
    assert re.search(r"plc1\s+1,100 rows", text)
    assert re.search(r"events\s+100 rows", text)
    assert "epoch:    6143980127734471" in text, "what the centre's data carries, to match them"


def test_format_stats_of_an_empty_outbox() -> None:
    empty = OutboxStats(0, 0, 0, 1024, None, 0, 0, {})
    text = format_stats(empty, now_ns=now_ns())
    assert "oldest:   -" in text
    assert "streams:  none" in text


def test_stats_to_json_is_json_ready() -> None:
    doc = stats_to_json(sample(), now_ns=1_000_000_000_000 + 10 * 10**9)
    assert orjson.loads(orjson.dumps(doc)) == doc
    assert doc["used_pct"] == 75.0
    assert doc["oldest_age_s"] == 10.0
    assert doc["streams"] == {"events": 100, "plc1": 1100}


def test_stats_of_a_real_outbox_with_events(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=BIG) as outbox:
        outbox.append([tele("a", 4), Batch("events", events=[Event("leak", "hyd1", 1)])])
        epoch = outbox.epoch
    doc = stats_to_json(read_stats(path), now_ns=now_ns())
    assert (doc["rows"], doc["readings"], doc["epoch"]) == (2, 5, epoch)
    assert epoch > 0
    assert doc["oldest_age_s"] is not None
    assert doc["oldest_age_s"] >= 0
