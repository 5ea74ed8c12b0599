"""Quota and eviction: telemetry before events, counted, announced by an Event, never over quota."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from water_edge.buffer.codec import decode_events, encode_events, encode_readings
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.schema import ROW_OVERHEAD
from water_edge.buffer.stats import read_stats
from water_edge.buffer.types import Batch, OutboxRow
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading


def tele(stream: str, n: int = 10) -> Batch:
    return Batch(stream, readings=[Reading("plc1", f"tag{i}", i, float(i)) for i in range(n)])


def alarm(n: int = 1) -> Batch:
    return Batch("alarms", events=[Event("leak", "hyd1", i, "alarm", 0.9) for i in range(n)])


ROW = len(encode_readings(tele("a").readings or [])) + ROW_OVERHEAD
ALARM_ROW = len(encode_events(alarm().events or [])) + ROW_OVERHEAD


def eviction_events(rows: list[OutboxRow]) -> list[Event]:
    found = [e for r in rows if r.stream == "events" for e in decode_events(r.body)]
    assert all(e.kind == "buffer_eviction" for e in found)
    return found


def assert_totals_match_the_file(outbox: Outbox) -> None:
    """What `stats()` keeps as running totals (what status and the quota go by) is what `buffer
    stats` finds in a full pass over the file."""
    assert outbox.stats() == read_stats(outbox.path)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


def test_oldest_telemetry_goes_first_and_events_stay(db: Path) -> None:
    quota = 8 * ROW
    with Outbox(db, max_bytes=quota) as outbox:
        [alarm_id] = outbox.append([alarm()])  # the oldest row of all
        a1, b1, a2 = outbox.append([tele("a"), tele("b"), tele("a")])
        a3, b2, a4, b3 = outbox.append([tele("a"), tele("b"), tele("a"), tele("b")])
        assert outbox.stats().evicted_rows == 0
        c1, c2 = outbox.append([tele("c"), tele("c")])

        rows = outbox.lease(0, 100)
        stats = outbox.stats()
    kept = {r.id for r in rows}
    assert alarm_id in kept
    assert {c1, c2} <= kept
    telemetry = [a1, b1, a2, a3, b2, a4, b3]
    evicted = [i for i in telemetry if i not in kept]
    assert evicted == telemetry[: len(evicted)]  # a prefix: oldest first
    assert len(evicted) >= 2
    assert stats.bytes <= quota
    assert stats.evicted_rows == len(evicted)
    assert stats.evicted_readings == 10 * len(evicted)

    [event] = eviction_events(rows)
    assert (event.source, event.severity) == ("buffer", "warning")
    assert event.detail["rows"] == len(evicted)
    assert event.detail["readings"] == 10 * len(evicted)
    seq_of = {a1: ("a", 1), b1: ("b", 1), a2: ("a", 2), a3: ("a", 3), b2: ("b", 2)}
    spans: dict[str, list[int]] = {}
    for row_id in evicted:
        stream, seq = seq_of[row_id]
        spans.setdefault(stream, [seq, seq])[1] = seq
    assert event.detail["streams"] == spans


def test_events_are_evicted_only_when_no_telemetry_is_left(db: Path) -> None:
    quota = 2 * ROW + 4 * ALARM_ROW
    with Outbox(db, max_bytes=quota) as outbox:
        alarms = [outbox.append([alarm()])[0] for _ in range(4)]
        [old] = outbox.append([tele("a")])
        # Twice a normal row: fits only once the telemetry and some alarms are gone.
        [big] = outbox.append([tele("b", n=20)])
        rows = outbox.lease(0, 100)
        assert outbox.stats().bytes <= quota
    kept = {r.id for r in rows}
    assert old not in kept
    assert big in kept
    gone = [i for i in alarms if i not in kept]
    assert gone, "alarms go once no telemetry is left"
    assert gone == alarms[: len(gone)]
    [event] = eviction_events(rows)
    assert event.detail["streams"] == {"a": [1, 1], "alarms": [1, len(gone)]}
    assert event.detail["rows"] == 1 + len(gone)
    assert event.detail["readings"] == 10 + len(gone)


def test_quota_is_never_exceeded_and_every_item_is_accounted_for(db: Path) -> None:
    rng = random.Random(7)
    quota = 20 * ROW
    appended = acked = notices = 0
    with Outbox(db, max_bytes=quota) as outbox:
        for _ in range(150):
            batches = [
                tele(rng.choice("abc"), rng.randint(0, 40))
                if rng.random() < 0.85
                else alarm(rng.randint(1, 5))
                for _ in range(rng.randint(1, 4))
            ]
            before = outbox.lease(0, 10_000)
            evicted_before = outbox.stats().evicted_rows
            outbox.append(batches)
            appended += sum(len(b.readings or b.events or []) for b in batches)
            stats = outbox.stats()
            assert stats.bytes <= quota
            assert outbox.bytes_used == stats.bytes
            assert_totals_match_the_file(outbox)
            if stats.evicted_rows > evicted_before:
                notices += 1
                kept = {r.id for r in outbox.lease(0, 10_000)}
                lost = [r for r in before if r.id not in kept]
                if any(r.row_class == "event" for r in lost):
                    assert all(r.id not in kept for r in before if r.row_class == "telemetry")
            if rng.random() < 0.2:
                leased = outbox.lease(0, rng.randint(1, 5))
                outbox.ack([r.id for r in leased])
                acked += sum(r.count for r in leased)
                assert_totals_match_the_file(outbox)
        in_box = sum(r.count for r in outbox.lease(0, 10_000))
        stats = outbox.stats()
    assert notices > 0
    # Each eviction adds one notice event (one item); nothing else appears or vanishes.
    assert in_box + acked + stats.evicted_readings == appended + notices


def test_evicted_seqs_are_never_reissued_and_counters_persist(db: Path) -> None:
    with Outbox(db, max_bytes=4 * ROW) as outbox:
        for _ in range(6):
            outbox.append([tele("a")])
        evicted = outbox.stats().evicted_rows
        assert evicted > 0
    with Outbox(db, max_bytes=4 * ROW) as outbox:
        outbox.append([tele("a")])
        seqs = [r.seq for r in outbox.lease(0, 100) if r.stream == "a"]
        stats = outbox.stats()
    assert seqs == sorted(seqs)
    assert seqs[-1] == 7
    assert stats.evicted_rows >= evicted
    assert read_stats(db).evicted_rows == stats.evicted_rows


def test_acking_an_evicted_row_is_fine(db: Path) -> None:
    with Outbox(db, max_bytes=3 * ROW) as outbox:
        [first] = outbox.append([tele("a")])
        for _ in range(4):
            outbox.append([tele("a")])
        assert first not in {r.id for r in outbox.lease(0, 100)}
        before = outbox.bytes_used
        outbox.ack([first])
        assert outbox.bytes_used == before


def test_batch_larger_than_the_quota_is_refused_and_nothing_is_lost(db: Path) -> None:
    with Outbox(db, max_bytes=3 * ROW) as outbox:
        ids = outbox.append([tele("a"), tele("a")])
        with pytest.raises(BufferError, match=re.escape(str(db))):
            outbox.append([tele("a", n=100)])
        with pytest.raises(BufferError, match="quota"):
            outbox.append([tele("b"), tele("b"), tele("b"), tele("b")])
        assert [r.id for r in outbox.lease(0, 10)] == ids
        assert outbox.stats().evicted_rows == 0
        outbox.append([tele("a")])
        assert [r.seq for r in outbox.lease(0, 10)] == [1, 2, 3]


def test_a_long_outage_keeps_a_quota_of_telemetry_and_one_notice_not_a_notice_per_append(db: Path) -> None:
    # Nothing is leased (the uplink is offline): every append evicts a row or two. Each used to add
    # a notice of its own, and notices are not evicted while telemetry is left, so they crowded the
    # telemetry out: after 500 appends into 20 rows of quota, 1 row of telemetry was left.
    quota = 20 * ROW
    with Outbox(db, max_bytes=quota) as outbox:
        for _ in range(500):
            outbox.append([tele("a")])
        rows = outbox.lease(0, 1000)
        stats = outbox.stats()
    kept = [r.seq for r in rows if r.stream == "a"]
    assert len(kept) >= 18
    assert kept == list(range(501 - len(kept), 501)), "the newest telemetry, with no hole"
    [notice] = eviction_events(rows)
    assert notice.detail["streams"] == {"a": [1, 500 - len(kept)]}
    assert notice.detail["rows"] == stats.evicted_rows == 500 - len(kept)
    assert notice.detail["readings"] == stats.evicted_readings
    assert notice.detail["last_ns"] >= notice.ts_ns
    assert stats.bytes <= quota


def test_one_append_that_evicts_hundreds_of_rows_counts_each_once(db: Path) -> None:
    """Candidates for eviction are read a page at a time: a removal longer than a page (a large
    batch into an outbox full of small rows after a long outage) names and counts every row once."""
    quota = 700 * ROW
    with Outbox(db, max_bytes=quota) as outbox:
        for _ in range(600):
            outbox.append([tele("a")])
        before = {r.id: r for r in outbox.lease(0, 10_000)}
        outbox.append([tele("b", n=4000)])  # room for this needs several hundred small rows gone
        rows = outbox.lease(0, 10_000)
        stats = outbox.stats()
        assert_totals_match_the_file(outbox)
    gone = [r for i, r in before.items() if i not in {r.id for r in rows}]
    assert len(gone) > 300
    [notice] = eviction_events(rows)
    assert notice.detail["rows"] == stats.evicted_rows == len(gone)
    assert notice.detail["readings"] == stats.evicted_readings == sum(r.count for r in gone)
    assert notice.detail["streams"] == {"a": [1, len(gone)]}
    assert stats.bytes <= quota


def test_a_notice_a_reader_has_seen_is_never_rewritten(db: Path) -> None:
    with Outbox(db, max_bytes=6 * ROW) as outbox:
        for _ in range(10):
            outbox.append([tele("a")])
        seen = {r.id: r.body for r in outbox.lease(0, 1000) if r.stream == "events"}
        for _ in range(10):
            outbox.append([tele("a")])
        rows = outbox.lease(0, 1000)
    assert {r.id: r.body for r in rows if r.id in seen} == seen, "what was leased may have been sent"
    first, second = eviction_events(rows)
    assert first.detail["streams"]["a"][1] + 1 == second.detail["streams"]["a"][0]
    # After a restart nothing is known of what the last process sent: a new notice, too.
    with Outbox(db, max_bytes=6 * ROW) as outbox:
        outbox.append([tele("a")])
        assert len(eviction_events(outbox.lease(0, 1000))) == 3


def test_a_notice_that_has_to_go_itself_is_announced_by_the_next(tmp_path: Path) -> None:
    """Events go once no telemetry is left, the unsent notice among them: the removal it would have
    gathered gets a notice of its own, which names the old notice's seq."""
    quota = 4 * ROW
    for pad in range(1000, 1700, 4):  # the batch size at which everything but a new notice must go
        with Outbox(tmp_path / f"{pad}.db", max_bytes=quota) as outbox:
            for _ in range(6):
                outbox.append([tele("a")])  # one notice (events seq 1) gathers these, unleased
            big = Batch("b", readings=[Reading("plc1", "blob", 0, "x" * pad)])
            try:
                outbox.append([big])
            except BufferError:
                break
            rows = outbox.lease(0, 100)
            stats = outbox.stats()
        [notice] = eviction_events(rows)
        if "events" not in notice.detail["streams"]:
            continue
        assert [r.stream for r in rows] == ["events", "b"]
        assert notice.detail["streams"] == {"a": [4, 6], "events": [1, 1]}
        assert (notice.detail["rows"], stats.evicted_rows) == (4, 7)
        assert stats.bytes <= quota
        return
    pytest.fail("no batch size made the notice itself go")
