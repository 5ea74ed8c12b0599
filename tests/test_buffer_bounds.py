"""The outbox stays bounded: by bytes, by age and by a full disk, always by the documented policy
(telemetry before events), counted, announced by an event, and with cheap running stats.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.testing import damage_sqlite_under_its_owner
from water_edge.buffer import schema
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.codec import decode_events
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.types import Batch
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading

T0 = 1_800_000_000 * 10**9


def telemetry(n: int, per_row: int = 50, stream: str = "plc1") -> list[Batch]:
    return [
        Batch(stream, readings=[Reading(stream, f"t{j}", T0 + i, float(i * j)) for j in range(per_row)])
        for i in range(n)
    ]


def alarm(i: int) -> Batch:
    return Batch("events", events=[Event("leak", "hydrophone1", T0 + i, "alarm", 0.9, {"i": i})])


def removal_events(box: Outbox) -> list[Event]:
    out = []
    for row in box.lease(0, 100_000):
        if row.stream == "events":
            out += [e for e in decode_events(row.body) if e.kind == "buffer_eviction"]
    return out


def test_running_stats_equal_a_full_scan_through_appends_acks_and_evictions(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=40_000) as box:
        for i in range(40):
            box.append([*telemetry(3, stream=f"s{i % 3}"), alarm(i)])
            rows = box.lease(0, 5)
            box.ack([r.id for r in rows[::2]])
            assert box.stats() == schema.query_stats(box._conn, box.max_bytes)
        assert box.stats().evicted_rows > 0
    with Outbox(tmp_path / "o.db", max_bytes=40_000) as box:
        assert box.stats() == schema.query_stats(box._conn, box.max_bytes)


def test_telemetry_older_than_max_age_expires_events_stay(tmp_path: Path) -> None:
    now = [T0]
    with Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=3600, clock=lambda: now[0]) as box:
        box.append([*telemetry(5), alarm(0)])
        now[0] += 1800 * 10**9
        box.append(telemetry(2, stream="plc2"))
        now[0] += 1801 * 10**9  # the first five rows are now older than an hour; plc2's are not
        box.append(telemetry(1, stream="plc3"))
        streams = [r.stream for r in box.lease(0, 100)]
        stats = box.stats()
    assert streams.count("plc1") == 0
    assert streams.count("plc2") == 2
    assert "leak" in str(streams) or streams.count("events") >= 2  # the alarm and the notice
    assert (stats.expired_rows, stats.expired_readings, stats.evicted_rows) == (5, 250, 0)
    with Outbox(tmp_path / "o.db", max_bytes=10**9) as box:
        (notice,) = removal_events(box)
        kept = [e.kind for r in box.lease(0, 100) if r.stream == "events" for e in decode_events(r.body)]
    assert notice.detail["reason"] == "age"
    assert notice.detail["streams"] == {"plc1": [1, 5]}
    assert "leak" in kept


def test_full_disk_evicts_telemetry_by_policy_and_keeps_every_event(tmp_path: Path) -> None:
    """max_page_count makes "disk full" deterministic: the quota is far away, the file is not."""
    db = tmp_path / "o.db"
    with Outbox(db, max_bytes=10**9, max_page_count=120) as box:
        for i in range(200):
            box.append([*telemetry(2, per_row=40), alarm(i)])
        stats = box.stats()
        events = [e for r in box.lease(0, 100_000) if r.stream == "events" for e in decode_events(r.body)]
        pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages <= 120
    assert stats.disk_full > 0
    assert stats.evicted_rows > 0
    # every alarm ever appended is still there: only telemetry made room
    assert sorted(e.detail["i"] for e in events if e.kind == "leak") == list(range(200))
    notices = [e for e in events if e.kind == "buffer_eviction"]
    assert notices
    assert all(n.detail["reason"] == "disk_full" and n.severity == "alarm" for n in notices)
    assert sum(n.detail["rows"] for n in notices) == stats.evicted_rows
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # `buffer stats` and status read the counters after a restart too: a full disk stays on record
    with Outbox(db, max_bytes=10**9) as box:
        reopened = box.stats()
    assert (reopened.disk_full, reopened.evicted_rows) == (stats.disk_full, stats.evicted_rows)


def test_disk_full_with_only_events_left_evicts_the_oldest_events(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=10**9, max_page_count=12) as box:
        for i in range(600):
            box.append([alarm(i)])
        kept = [
            int(e.detail["i"])
            for r in box.lease(0, 10_000)
            if r.stream == "events"
            for e in decode_events(r.body)
            if e.kind == "leak"
        ]
        stats = box.stats()
        before = box.lease(0, 10_000)
        too_big = [Batch("events", events=[Event("x", "y", T0, detail={"pad": "z" * 200_000})])]
        with pytest.raises(BufferError, match="disk is full"):
            box.append(too_big)
        after = box.lease(0, 10_000)
    assert stats.disk_full > 0
    assert stats.evicted_rows > 0
    assert kept[-1] == 599, "the newest alarm is kept; the oldest went first"
    assert kept == sorted(kept)
    assert after == before, "a refused append removes nothing"


async def test_a_corrupt_file_is_quarantined_kept_and_replaced(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    garbage = b"SQLite format 3\x00" + b"\xff" * 8000
    db.write_bytes(garbage)
    async with await AsyncOutbox.open(db, max_bytes=10**8, quarantine_unusable=True) as box:
        assert box.quarantined is not None
        moved, reason = box.quarantined
        await box.append(telemetry(1))
        assert (await box.stats()).rows == 1
    assert moved.read_bytes() == garbage
    assert moved.name.startswith("outbox.sqlite.quarantined-")
    assert "outbox" in reason


async def test_a_damaged_page_is_found_at_open_and_quarantined(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    with Outbox(db, max_bytes=10**9) as box:
        box.append(telemetry(300))
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page + 8 : 3 * page + 4000] = b"\x07" * (4000 - 8)  # scribble over a b-tree page
    db.write_bytes(bytes(data))
    async with await AsyncOutbox.open(db, max_bytes=10**9, quarantine_unusable=True) as box:
        assert box.quarantined is not None
        assert (await box.stats()).rows == 0


async def test_damage_found_while_in_use_is_told_apart_and_reported_once(tmp_path: Path) -> None:
    # A card going bad under a running agent: every append would fail from here on, so the agent
    # must learn that this is damage (and restart, so its open moves the file aside), not a full
    # disk or a lock, which it rides out.
    db = tmp_path / "outbox.sqlite"
    reported: list[str] = []
    async with await AsyncOutbox.open(db, max_bytes=10**9, quarantine_unusable=True) as box:
        box.on_damaged = reported.append
        await box.append(telemetry(300))
        damage_sqlite_under_its_owner(db, seed=7)
        with pytest.raises(schema.OutboxDamagedError, match=r"malformed|not a database"):
            await box.append(telemetry(1))
        with pytest.raises(schema.OutboxDamagedError):
            await box.lease(0, 10)
        assert box.damaged is not None
        assert reported == [box.damaged]  # once, at the first call that found it
    async with await AsyncOutbox.open(db, max_bytes=10**9, quarantine_unusable=True) as box:
        assert box.quarantined is not None  # the next start moves it aside
        assert box.damaged is None


async def test_without_quarantine_a_foreign_file_still_raises(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(BufferError):
        await AsyncOutbox.open(db, max_bytes=10**8)
    assert db.read_bytes() == b"not a database" * 100


def test_lease_upto_bounds_the_backlog_lane(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=10**9) as box:
        box.append(telemetry(10))
        split = box.last_id()
        box.append(telemetry(5))
        assert [r.id for r in box.lease(0, 100, split)] == list(range(1, split + 1))
        assert [r.id for r in box.lease(split, 100)] == list(range(split + 1, box.last_id() + 1))


def test_rows_ageing_out_append_after_append_are_announced_in_one_notice(tmp_path: Path) -> None:
    now = [T0]
    with Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=60, clock=lambda: now[0]) as box:
        for _ in range(300):
            box.append(telemetry(1))
            now[0] += 10**9
        stats = box.stats()
        (notice,) = removal_events(box)
    assert notice.detail["reason"] == "age"
    assert notice.detail["streams"] == {"plc1": [1, stats.expired_rows]}
    assert stats.expired_rows == 300 - 61
