"""The outbox's append / lease / ack contract on real SQLite files: order, seq, durability."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from water_edge.buffer.codec import decode_events, decode_readings
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.stats import read_stats
from water_edge.buffer.types import Batch
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading, now_ns

BIG = 1 << 30


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("plc1", f"tag{i}", start + i, float(i)) for i in range(n)]


def tele(stream: str, n: int = 3, start: int = 0) -> Batch:
    return Batch(stream, readings=readings(n, start))


def events(n: int = 1) -> Batch:
    return Batch("events", events=[Event("leak", "hyd1", i, "alarm", 0.9) for i in range(n)])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


def test_append_returns_ids_and_lease_is_oldest_first(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        first = outbox.append([tele("a"), tele("b")])
        second = outbox.append([events(), tele("a")])
        ids = first + second
        assert ids == sorted(ids)
        assert len(set(ids)) == 4

        assert [r.id for r in outbox.lease(0, 10)] == ids
        assert [r.id for r in outbox.lease(0, 2)] == ids[:2]
        assert [r.id for r in outbox.lease(ids[1], 10)] == ids[2:]
        assert outbox.lease(ids[-1], 10) == []


def test_rows_carry_what_was_appended(db: Path) -> None:
    before = now_ns()
    with Outbox(db, max_bytes=BIG) as outbox:
        outbox.append([tele("a", n=5, start=100), events(2)])
        after = now_ns()
        telemetry, event = outbox.lease(0, 10)
    assert (telemetry.stream, telemetry.row_class, telemetry.count) == ("a", "telemetry", 5)
    assert decode_readings(telemetry.body) == readings(5, start=100)
    assert (event.stream, event.row_class, event.count) == ("events", "event", 2)
    assert decode_events(event.body) == events(2).events
    assert before <= telemetry.created_ns <= after


def test_seq_is_plus_one_per_stream_and_survives_reopen(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        outbox.append([tele("a"), tele("b"), tele("a")])
        outbox.append([tele("a")])
    with Outbox(db, max_bytes=BIG) as outbox:
        outbox.append([tele("b"), tele("a")])
        rows = outbox.lease(0, 10)
    assert [(r.stream, r.seq) for r in rows] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("a", 3),
        ("b", 2),
        ("a", 4),
    ]


def test_seq_and_ids_are_never_reused_after_everything_is_acked(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        ids = outbox.append([tele("a"), tele("a")])
        outbox.ack(ids)
    with Outbox(db, max_bytes=BIG) as outbox:
        [new_id] = outbox.append([tele("a")])
        [row] = outbox.lease(0, 10)
    assert new_id > max(ids)
    assert row.seq == 3


def test_ack_deletes_exactly_the_acked_rows(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        ids = outbox.append([tele("a"), tele("b"), tele("c"), tele("d")])
        outbox.ack([ids[1], ids[3], ids[3]])
        assert [r.id for r in outbox.lease(0, 10)] == [ids[0], ids[2]]
        outbox.ack([ids[1], 999_999])  # already gone or never existed: fine
        assert [r.id for r in outbox.lease(0, 10)] == [ids[0], ids[2]]
        outbox.ack([])


def test_an_ack_commits_without_a_sync_of_its_own_and_appends_stay_synced(db: Path) -> None:
    """Acks were most of an SD card's fsyncs: their deletes ride on the next append's synced
    commit. Appends keep synchronous FULL: a reading is safe once append returns."""
    with Outbox(db, max_bytes=BIG) as outbox:
        statements: list[str] = []
        outbox._conn.set_trace_callback(statements.append)  # the statements as SQLite runs them
        ids = outbox.append([tele("a"), tele("b")])
        appended = list(statements)
        statements.clear()
        outbox.ack(ids[:1])
        assert [s for s in statements if s.startswith(("PRAGMA", "BEGIN", "COMMIT"))] == [
            "PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE", "COMMIT", "PRAGMA synchronous = FULL",
        ]  # fmt: skip
        assert not [s for s in appended if "synchronous" in s]
        assert outbox.pragmas()["synchronous"] == 2
    with Outbox(db, max_bytes=BIG) as outbox:
        assert [r.id for r in outbox.lease(0, 10)] == ids[1:]  # the ack is committed all the same


def test_unacked_rows_come_back_after_reopen(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        ids = outbox.append([tele("a"), tele("a"), tele("a")])
        outbox.lease(0, 3)  # leasing marks nothing
        outbox.ack([ids[0]])
    with Outbox(db, max_bytes=BIG) as outbox:
        assert [r.id for r in outbox.lease(0, 10)] == ids[1:]


def test_one_bad_batch_stores_nothing_of_the_call(db: Path) -> None:
    bad = Batch("a", readings=[Reading("plc1", "t", 1, 2**70)])
    with Outbox(db, max_bytes=BIG) as outbox:
        with pytest.raises(BufferError):
            outbox.append([tele("a"), bad])
        with pytest.raises(BufferError, match="neither"):
            outbox.append([tele("a"), Batch("a")])
        with pytest.raises(BufferError, match="non-empty string"):  # no topic can be made of it
            outbox.append([tele("a"), Batch("", readings=[Reading("plc1", "t", 1, 1.0)])])
        assert outbox.lease(0, 10) == []
        outbox.append([tele("a")])
        assert [r.seq for r in outbox.lease(0, 10)] == [1]


def test_append_is_committed_when_it_returns(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        ids = outbox.append([tele("a"), tele("b")])
        other = sqlite3.connect(db)
        try:
            assert [r[0] for r in other.execute("SELECT id FROM outbox ORDER BY id")] == ids
        finally:
            other.close()


def test_kill_9_after_append_loses_nothing(db: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os
        from water_edge.core.reading import Reading
        from water_edge.buffer.outbox import Outbox
        from water_edge.buffer.types import Batch
        outbox = Outbox({str(db)!r}, max_bytes={BIG})
        for i in range(5):
            outbox.append([Batch("a", readings=[Reading("plc1", "t", i, i)])])
        os._exit(9)  # no close, no checkpoint: only what was committed survives
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path.cwd(), check=False)
    assert result.returncode == 9
    assert read_stats(db).rows == 5  # the read-only reader sees the committed WAL too
    with Outbox(db, max_bytes=BIG) as outbox:
        rows = outbox.lease(0, 10)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("setting", "code"), [("full", 2), ("normal", 1)])
def test_wal_and_synchronous_are_applied(db: Path, setting: str, code: int) -> None:
    with Outbox(db, max_bytes=BIG, synchronous=setting) as outbox:  # type: ignore[arg-type]
        pragmas = outbox.pragmas()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == code
    assert pragmas["busy_timeout"] == 5000
    other = sqlite3.connect(db)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persisted in file
    finally:
        other.close()


def test_running_byte_total_matches_the_database(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        ids = outbox.append([tele("a", n=7), events(3), tele("b", n=50)])
        outbox.ack([ids[0]])
        outbox.append([tele("c", n=2)])
        assert outbox.bytes_used == read_stats(db).bytes == outbox.stats().bytes
    with Outbox(db, max_bytes=BIG) as outbox:
        assert outbox.bytes_used == read_stats(db).bytes


def test_stats_counts_rows_readings_and_streams(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        assert outbox.stats().oldest_created_ns is None
        outbox.append([tele("a", n=4), tele("a", n=6), events(2)])
        [first] = outbox.lease(0, 1)
        stats = outbox.stats()
    assert (stats.rows, stats.readings) == (3, 12)
    assert stats.streams == {"a": 2, "events": 1}
    assert stats.oldest_created_ns == first.created_ns
    assert stats.max_bytes == BIG
    assert (stats.evicted_rows, stats.evicted_readings) == (0, 0)


def test_closed_outbox_raises_buffer_error(db: Path) -> None:
    outbox = Outbox(db, max_bytes=BIG)
    outbox.close()
    outbox.close()
    with pytest.raises(BufferError, match=re.escape(str(db))):
        outbox.lease(0, 1)


def test_empty_append_is_a_no_op(db: Path) -> None:
    with Outbox(db, max_bytes=BIG) as outbox:
        assert outbox.append([]) == []
        assert outbox.stats().rows == 0
