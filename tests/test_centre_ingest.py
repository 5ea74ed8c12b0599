"""The reference ingest into a real PostgreSQL: exactly once, gaps reported, the load shared.

PostgreSQL from Debian's package (tests/support/postgres.py); the broker a real Mosquitto with
MQTT 5 shared subscriptions; consumers are real `edge-centre ingest` processes, one killed -9.
The same ingest through a RabbitMQ cluster with a broker node killed: test_fleet_cluster.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Publisher
from tests.support.centre import (
    IngestProcess,
    committed_in_last_run,
    committed_seqs,
    eviction,
    ingest_process,
    messages,
    query,
)
from tests.support.pki import SHIPPED_ACL, Pki, TlsClient
from tests.support.plant import running_plant
from tests.support.testing import demo_devices, eventually, outbox_last_seqs, wait_until, write_agent_config
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.buffer.stats import read_stats
from water_edge.centre import store as store_module
from water_edge.centre.loadgen import FleetResult, FleetSpec, payload
from water_edge.centre.loadgen import run as run_fleet
from water_edge.centre.payload import Message, parse
from water_edge.centre.store import Store, migrate, migrations

pytestmark = pytest.mark.slow


def test_migrations_apply_once(centre_db: str) -> None:
    assert migrate(centre_db) == []
    names = [row[0] for row in query(centre_db, "SELECT name FROM centre_migrations ORDER BY name")]
    assert names == [name for name, _ in migrations()]


def test_a_database_made_under_the_c_locale_is_migrated_once_and_ingested(postgres_server: Any) -> None:
    """initdb where LANG is unset (many containers) makes SQL_ASCII databases, in which psycopg
    hands text back as bytes: the applied migrations were not recognised, and the ingest's start
    failed on the second run ("relation streams already exists")."""
    name = "sql_ascii_" + secrets.token_hex(3)
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    dsn = postgres_server.dsn(name)
    assert migrate(dsn) == [name for name, _ in migrations()]
    assert migrate(dsn) == []
    store = Store(dsn)
    try:
        assert store.commit(messages("gw1", range(1, 4))).messages == 3
    finally:
        store.close()
    assert committed_seqs(dsn) == {("s1", "gw1", "plc1"): [1, 2, 3]}


def test_the_same_messages_from_two_consumers_at_once_are_committed_exactly_once(centre_db: str) -> None:
    batch = messages("gw1", range(1, 201))
    stores = [Store(centre_db), Store(centre_db)]
    results = []

    def commit(store: Store) -> None:
        for i in range(0, len(batch), 20):
            results.append(store.commit(batch[i : i + 20]))

    threads = [threading.Thread(target=commit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sum(r.messages for r in results) == 200
    assert sum(r.duplicates for r in results) == 200
    assert committed_seqs(centre_db) == {("s1", "gw1", "plc1"): list(range(1, 201))}
    assert query(centre_db, "SELECT count(*) FROM readings") == [(2000,)]
    # What a BI tool reads: names and timestamps, and the latest value per tag.
    latest = query(centre_db, "SELECT tag, value FROM tag_latest WHERE gateway = 'gw1' ORDER BY tag")
    assert len(latest) == 10


def test_a_second_gateway_publishing_under_the_same_identity_is_told_from_a_resend(centre_db: str) -> None:
    """An SD card cloned from a running gateway carries its identity and its outbox's epoch: both
    number their rows alike. The centre kept the first message of each seq and dropped the other
    gateway's as duplicates, without a word; a resend (the same row again) must stay harmless."""
    first = messages("gw1", range(1, 11))
    resend = messages("gw1", range(1, 11))  # the same rows again, sent later
    clone = [  # the clone's rows: the same seqs, its own readings taken a little later
        parse("water/s1/gw1/plc1", payload("s1", "gw1", seq, 10**18 + seq + 250_000_000, 10, epoch=1))
        for seq in range(6, 16)
    ]
    store = Store(centre_db)
    try:
        assert store.commit(first).messages == 10
        again = store.commit(resend)
        assert (again.messages, again.duplicates, again.conflicts) == (0, 10, 0)
        both = store.commit(clone)
    finally:
        store.close()
    assert (both.messages, both.duplicates, both.conflicts) == (5, 5, 5)
    seqs = [
        row[0]
        for row in query(centre_db, "SELECT seq FROM gateway_conflicts WHERE gateway = 'gw1' ORDER BY seq")
    ]
    assert seqs == [6, 7, 8, 9, 10]


def test_a_missing_seq_is_reported_after_its_timeout_with_the_eviction_that_explains_it(
    centre_db: str,
) -> None:
    store = Store(centre_db)
    store.commit(messages("gw1", [1, 2, 5, 6]))
    store.commit(messages("gw2", [100, 101]))  # met the ingest at seq 100: 1..99 is history, not a gap
    assert store.check_gaps(timeout_s=3600) == [], "a young hole may be the backlog lane still arriving"
    (gap,) = store.check_gaps(timeout_s=0) or []
    assert (gap.gateway, gap.first_seq, gap.last_seq, gap.explained) == ("gw1", 3, 4, None)

    store.commit([eviction("gw1", 1, 7, 9), *messages("gw1", [10])])
    (gap,) = store.check_gaps(timeout_s=0) or []
    assert (gap.first_seq, gap.last_seq, gap.explained) == (7, 9, "buffer_eviction: quota")
    assert store.check_gaps(timeout_s=0) == [], "a gap is reported once"

    store.commit(messages("gw1", [3, 4]))  # late after all
    store.check_gaps(timeout_s=0)
    open_gaps = query(centre_db, "SELECT gateway, first_seq, last_seq, explained FROM open_gaps")
    store.close()
    assert open_gaps == [("gw1", 7, 9, "buffer_eviction: quota")]


def test_a_gateway_with_a_new_outbox_starts_again_at_seq_1_and_none_of_it_is_dropped(centre_db: str) -> None:
    """A replaced card or a damaged outbox moved aside: the gateway's seqs restart at 1 under a new
    epoch. Version 1 deduplicated them against the old outbox's and dropped them all."""
    store = Store(centre_db)
    old = store.commit([*messages("gw1", range(1, 6), epoch=11), eviction("gw1", 1, 3, 4, epoch=11)])
    new = store.commit(messages("gw1", [1, 2, 5], epoch=22))
    resent = store.commit(messages("gw1", [2], epoch=22))
    assert (old.messages, new.messages, new.duplicates, resent.duplicates) == (6, 3, 0, 1)
    by_epoch = query(
        centre_db,
        "SELECT s.epoch, array_agg(m.seq ORDER BY m.seq) FROM messages m JOIN streams s ON s.id = m.stream_id"
        " WHERE s.stream = 'plc1' GROUP BY s.epoch ORDER BY s.epoch",
    )
    assert by_epoch == [(11, [1, 2, 3, 4, 5]), (22, [1, 2, 5])]
    assert query(centre_db, "SELECT count(*) FROM readings") == [(80,)]
    # The old outbox's eviction of its seqs 3..4 says nothing of the new outbox's 3..4.
    (gap,) = store.check_gaps(timeout_s=0) or []
    store.close()
    assert (gap.epoch, gap.first_seq, gap.last_seq, gap.explained) == (22, 3, 4, None)
    assert query(centre_db, "SELECT epoch, first_seq, missing FROM open_gaps") == [(22, 3, 2)]


def test_two_consumers_share_a_fleet_with_an_outage_burst_and_one_killed_midway_lose_and_double_nothing(
    centre_db: str, tmp_path: Path
) -> None:
    with Mosquitto() as broker:
        uri = [f"mqtt://{broker.host}:{broker.port}"]
        consumers = [
            ingest_process(tmp_path, f"c{i}", centre_db, uri, "--group", "g1").start() for i in range(2)
        ]
        try:
            for c in consumers:
                c.wait_subscribed()
            # With an outage from 1.0 to 1.5 s: every gateway's backlog arrives at once after it.
            spec = FleetSpec(broker.host, broker.port, gateways=20, tags=20, interval_s=0.1, duration_s=4.0,
                             connections=2, outage_at_s=1.0, outage_s=0.5)  # fmt: skip
            result: list[FleetResult] = []
            fleet = threading.Thread(target=lambda: result.append(run_fleet(spec)))
            fleet.start()
            wait_until(lambda: query(centre_db, "SELECT count(*) FROM messages")[0][0] >= 200, 30)
            consumers[0].kill()
            consumers[0].start()
            consumers[0].wait_subscribed(times=2)
            fleet.join()
            (offered,) = result
            assert offered.acked == offered.messages == 800
            wait_until(lambda: query(centre_db, "SELECT count(*) FROM messages")[0][0] >= 800, 60)
        finally:
            for c in consumers:
                c.stop()
            logs = [c.log() for c in consumers]
    seqs = committed_seqs(centre_db)
    assert seqs == {("site000", f"gw{i:05d}", "plc1"): list(range(1, 41)) for i in range(20)}
    assert query(centre_db, "SELECT count(*) FROM readings") == [(800 * 20,)]
    # Both shared the load: each committed some of the fleet's messages in its last run.
    assert all(committed_in_last_run(log) > 0 for log in logs), logs


def _data(seq: int, **reading: object) -> bytes:
    body = orjson.loads(payload("s1", "gw1", seq, 10**18 + seq, 1))
    body["readings"][0].update(reading)
    return orjson.dumps(body)


@contextlib.contextmanager
def one_ingest(tmp_path: Path, dsn: str, broker: Mosquitto, *extra: str) -> Iterator[IngestProcess]:
    """One `edge-centre ingest` process subscribed to `broker`; stopped on the way out."""
    ingest = ingest_process(tmp_path, "c1", dsn, [f"mqtt://{broker.host}:{broker.port}"], *extra)
    ingest.start()
    try:
        ingest.wait_subscribed()
        yield ingest
    finally:
        ingest.stop()


def test_a_gateway_on_a_new_card_is_stored_in_full_beside_what_its_old_card_sent(
    centre_db: str, tmp_path: Path
) -> None:
    """The real agent, broker and ingest: a gateway runs, its card is replaced (the outbox is gone,
    as after a quarantine), it runs again from seq 1. Both outboxes' messages are stored whole."""
    sent: dict[int, dict[str, int]] = {}
    with running_plant(seed=3) as plant, Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker):
        (tmp_path / "gw").mkdir()
        config = write_agent_config(  # the demo's PLC polled every 0.2 s, not 1 s: 3 polls come sooner
            tmp_path / "gw", broker_port=broker.port, devices=demo_devices(plant.port, poll_interval_ms=200)
        )
        outbox = config.parent / "state" / "outbox.sqlite"
        for _card in range(2):
            with running_agent(config) as agent:
                agent.wait_status(lambda s: s["uplink"]["readings_acked"] >= 3 * 43)
                assert agent.stop() == 0
            stats = read_stats(outbox)  # what `edge-agent buffer stats` shows the technician
            assert stats.rows == 0, "all delivered"
            sent[stats.epoch] = outbox_last_seqs(outbox)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{outbox}{suffix}").unlink(missing_ok=True)

        def stored() -> dict[int, dict[str, list[int]]]:
            rows = query(
                centre_db,
                "SELECT s.epoch, s.stream, array_agg(m.seq ORDER BY m.seq) FROM messages m"
                " JOIN streams s ON s.id = m.stream_id GROUP BY 1, 2",
            )
            out: dict[int, dict[str, list[int]]] = {}
            for epoch, stream, seqs in rows:
                out.setdefault(epoch, {})[stream] = seqs
            return out

        want = {e: {s: list(range(1, n + 1)) for s, n in last.items()} for e, last in sent.items()}
        wait_until(lambda: stored() == want, 30, what=lambda: f"stored {stored()}, sent {sent}")
    assert len(sent) == 2, "each card's outbox has an epoch of its own"
    assert all(last["pump-station"] >= 3 for last in sent.values())


def test_a_message_the_database_cannot_store_is_rejected_and_the_ingest_goes_on(
    centre_db: str, tmp_path: Path
) -> None:
    """Valid JSON in the documented shape whose values PostgreSQL refuses (a NUL in a text, an
    integer beyond bigint, an object as reason, a tag twice at one ts, a NUL in an event's detail)
    used to end the consumer with a traceback; restarted, it met the same unacknowledged batch
    again. Now each is kept in `rejected` with the database's reason, and the good ones committed."""
    twice = orjson.loads(payload("s1", "gw1", 5, 10**18, 1))
    twice["readings"] *= 2
    event = {
        "v": 1, "stream": "events", "seq": 1, "site": "s1", "gateway": "gw1", "sent_ns": 1,
        "events": [{"kind": "k", "source": "agent", "ts": 1, "severity": "info", "detail": {"x": "\u0000"}}],
    }  # fmt: skip
    hostile = [
        ("water/s1/gw1/plc1", _data(2, tag="flow\u0000")),
        ("water/s1/gw1/plc1", _data(3, ts=2**63)),
        ("water/s1/gw1/plc1", _data(4, reason={"not": "text"})),
        ("water/s1/gw1/plc1", orjson.dumps(twice)),
        ("water/s1/gw1/events", orjson.dumps(event)),
        ("water/s1/gw1/plc1", b'{"v": 1, "site": "\xff"}'),
        ("water/s1/gw1/plc1", b"[" * 100_000),
    ]
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            pub.publish("water/s1/gw1/plc1", _data(1))
            for topic, body in hostile:
                pub.publish(topic, body)
            pub.publish("water/s1/gw1/plc1", _data(6))
        process = ingest.process
        assert process is not None

        def done() -> bool:
            rejected = query(centre_db, "SELECT count(*) FROM rejected")[0][0]
            return rejected == len(hostile) and 6 in committed_seqs(centre_db).get(("s1", "gw1", "plc1"), [])

        wait_until(lambda: done() or process.poll() is not None, 30)
        assert process.poll() is None, ingest.log()[-3000:]
    assert committed_seqs(centre_db) == {("s1", "gw1", "plc1"): [1, 6]}
    rejected = {
        bytes(body): (topic, reason)
        for topic, reason, body in query(centre_db, "SELECT topic, reason, payload FROM rejected")
    }
    assert {(topic, body) for body, (topic, _) in rejected.items()} == set(hostile)  # kept as received
    reasons = [rejected[body][1] for _, body in hostile]
    # Since 2026-12-07 the NUL and the integer beyond bigint are rejected as read (docs/fleet.md, "A
    # hostile gateway"); a tag twice at one ts is still the database's to refuse.
    assert reasons[0] == "readings[0].tag holds a NUL character (\\u0000), which PostgreSQL refuses"
    assert reasons[4] == "events[0].detail.x holds a NUL character (\\u0000), which PostgreSQL refuses"
    assert reasons[1] == f"ts must be at most 2^63 - 1 (got {2**63})"
    assert reasons[3].startswith("refused by the database: "), reasons
    assert "duplicate key" in reasons[3]
    assert reasons[2] == "reason must be a string (got dict)"
    assert "Traceback" not in ingest.log()


def test_a_message_that_cannot_be_stored_or_kept_as_rejected_does_not_wedge_every_other_gateway(
    centre_db: str, tmp_path: Path
) -> None:
    """Two messages of one gateway each stopped the whole ingest. A NUL in the body's site (which
    does not match the topic) went into the rejection's reason, which PostgreSQL then refused:
    the consumer ended, and met the same unacknowledged batch at every restart. A tag longer than
    an index entry may be (a few KB) was taken for the database being down and retried forever,
    while every other gateway's messages waited behind it."""
    nul_site = orjson.loads(_data(2))
    nul_site["site"] = "s\u0000"
    hostile = [
        ("water/s1/gw1/plc1", orjson.dumps(nul_site)),
        ("water/s1/gw1/plc1", _data(3, tag=secrets.token_hex(4000))),
    ]
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for topic, body in hostile:
                pub.publish(topic, body)
            pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", 1, 10**18, 1))
        process = ingest.process
        assert process is not None

        def done() -> bool:
            rejected = query(centre_db, "SELECT count(*) FROM rejected")[0][0]
            return rejected == len(hostile) and ("s2", "gw2", "plc1") in committed_seqs(centre_db)

        wait_until(lambda: done() or process.poll() is not None, 30, what=lambda: ingest.log()[-3000:])
        assert process.poll() is None, ingest.log()[-3000:]
    reasons = dict(query(centre_db, "SELECT payload, reason FROM rejected"))
    assert reasons[hostile[0][1]] == "topic 'water/s1/gw1/plc1' does not end in 's\\x00/gw1/plc1'"
    assert reasons[hostile[1][1]] == "tag must be at most 512 characters (got 8000)"  # since 2026-12-07
    assert committed_seqs(centre_db) == {("s2", "gw2", "plc1"): [1]}
    assert "Traceback" not in ingest.log()
    assert "ingest.store_failed" not in ingest.log(), "a value is not an outage"


def _event(seq: int, **event: object) -> bytes:
    item = {"kind": "k", "source": "agent", "ts": 1, "severity": "info", "score": None, "detail": {}}
    body = {
        "v": 2, "epoch": 1, "stream": "events", "seq": seq, "site": "s1", "gateway": "gw1", "sent_ns": 1,
        "events": [item | event],
    }  # fmt: skip
    return orjson.dumps(body)


def test_readings_and_events_with_fields_of_the_wrong_type_are_rejected_not_stored_as_something_else(
    centre_db: str, tmp_path: Path
) -> None:
    """A broken gateway's fields of the wrong type were turned into rows: a tag that was an object
    became its Python repr, a missing unit the text 'None', an event's score "nan" a NaN (which
    turns every avg() over the column into NaN), a ts of "12" or 1.9 the integer 12 or 1, a negative
    ts a date before 1970, an unknown severity or a detail that is not an object kept as sent."""
    bad_readings: list[dict[str, object]] = [
        {"tag": 5}, {"tag": {"a": 1}}, {"unit": None}, {"source": [1]}, {"ts": -5},
    ]  # fmt: skip
    bad_events: list[dict[str, object]] = [
        {"kind": {"a": 1}}, {"source": 5}, {"ts": "12"}, {"ts": 1.9}, {"ts": -1}, {"severity": "apocalypse"},
        {"score": "nan"}, {"score": True}, {"detail": [1]}, {"detail": "x"},
    ]  # fmt: skip
    hostile = [("water/s1/gw1/plc1", _data(seq, **r)) for seq, r in enumerate(bad_readings, 2)]
    hostile += [("water/s1/gw1/events", _event(seq, **e)) for seq, e in enumerate(bad_events, 2)]
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for topic, body in hostile:
                pub.publish(topic, body)
            pub.publish("water/s1/gw1/plc1", _data(1))
            pub.publish("water/s1/gw1/events", _event(1))

        def done() -> bool:
            seqs = committed_seqs(centre_db)
            good = all(seqs.get(("s1", "gw1", s)) == [1] for s in ("plc1", "events"))
            return good and _rejected(centre_db) == len(hostile)

        wait_until(done, 30, what=lambda: f"{committed_seqs(centre_db)}\n{ingest.log()[-3000:]}")
    assert query(centre_db, "SELECT seq, tag, unit, source, ts_ns FROM readings") == [
        (1, "t000", "bar", "plc1", 10**18 + 1)
    ]
    assert query(centre_db, "SELECT seq, kind, source, ts_ns, severity, score FROM events") == [
        (1, "k", "agent", 1, "info", None)
    ]
    stored = {bytes(body) for (body,) in query(centre_db, "SELECT payload FROM rejected")}
    assert stored == {body for _, body in hostile}


def _twice(seq: int) -> bytes:
    body = orjson.loads(_data(seq))
    body["readings"] *= 2
    return orjson.dumps(body)


def test_a_gateway_sending_a_refused_message_now_and_then_does_not_slow_everyone_to_a_commit_per_message(
    centre_db: str, tmp_path: Path
) -> None:
    """A batch the database refuses was committed again message by message, a transaction (and a
    WAL flush) each: one gateway sending a NUL in a tag once in a while put every batch of every
    gateway on that path, and the ingest to about a tenth of its speed. A message's `received_at`
    is its transaction's start, so the number of distinct ones counts the transactions."""
    good, every = 1000, 100
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for seq in range(1, good + 1):
                pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", seq, 10**18, 10), wait=False)
                if seq % every == 0:  # a tag twice at one ts: the database refuses it (a NUL is read)
                    pub.publish("water/s1/gw1/plc1", _twice(seq), wait=False)
            pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", good + 1, 10**18, 10))
        wait_until(
            lambda: (
                query(centre_db, "SELECT count(*) FROM messages")[0][0] == good + 1
                and _rejected(centre_db) == good // every
            ),
            60,
            what=lambda: ingest.log()[-3000:],
        )
    (transactions,) = query(centre_db, "SELECT count(DISTINCT received_at) FROM messages")[0]
    assert transactions <= good // 4, f"{transactions} transactions for {good} messages"


def test_a_database_error_it_cannot_judge_ends_the_ingest_with_nothing_acknowledged(
    centre_db: str, tmp_path: Path
) -> None:
    """A table gone from under the ingest is neither a bad value nor an outage: the consumer's
    writer thread meets it, and the process ends with the error (for systemd to restart it and an
    operator to read) instead of hanging or acknowledging what it did not store; once the table is
    back, the restarted consumer gets the message again and stores it."""
    with psycopg.connect(centre_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings RENAME TO readings_aside")
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            pub.publish("water/s1/gw1/plc1", _data(1))
        process = ingest.process
        assert process is not None
        wait_until(lambda: process.poll() is not None, 30, what=lambda: ingest.log()[-3000:])
        assert process.returncode != 0
        assert 'relation "readings" does not exist' in ingest.log()
        assert query(centre_db, "SELECT count(*) FROM messages") == [(0,)]

        with psycopg.connect(centre_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE readings_aside RENAME TO readings")
        ingest.start()  # the same client id: its session holds the unacknowledged message
        wait_until(lambda: committed_seqs(centre_db), 30, what=lambda: ingest.log()[-3000:])
    assert committed_seqs(centre_db) == {("s1", "gw1", "plc1"): [1]}


def test_a_gateway_with_a_new_epoch_in_every_message_does_not_grow_the_ingest_without_bound(
    centre_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each (site, gateway, stream, epoch) gets a streams row, and its id was kept in memory for the
    life of the process: a gateway starting a new outbox in every message (or naming a new site or
    stream in each: its topics' site level is open to it) grew the consumer by ~300 bytes a message."""
    monkeypatch.setattr(store_module, "STREAM_IDS_CACHED", 100, raising=False)
    store = Store(centre_db)
    for first in range(1, 1001, 250):
        store.commit([messages("gw1", [1], tags=1, epoch=e)[0] for e in range(first, first + 250)])
    again = store.commit(messages("gw1", [1], tags=1, epoch=1))  # its id no longer in memory
    cached = len(store._stream_ids)
    store.close()
    assert cached <= 100
    assert (again.messages, again.duplicates) == (0, 1)
    assert query(centre_db, "SELECT count(*), count(DISTINCT epoch) FROM streams") == [(1000, 1000)]
    assert query(centre_db, "SELECT count(*) FROM readings") == [(1000,)]


def test_an_eviction_event_with_a_malformed_range_does_not_stop_the_gap_check(centre_db: str) -> None:
    """A `buffer_eviction` whose seq range is not two integers (a buggy or hostile gateway) made the
    gap check's explanation query fail on its cast; the error ended the consumer at every check."""
    store = Store(centre_db)
    bad = [["a", "b"], [4.5, 9], [5, 1e30], {"first": 1}, "3..4", [None, None]]  # none covers 3..4
    store.commit(
        [*(eviction("gw1", i, 0, 0, span=r) for i, r in enumerate(bad, 1)), *messages("gw1", [1, 2, 5])]
    )
    (gap,) = store.check_gaps(timeout_s=0) or []
    store.close()
    assert (gap.gateway, gap.first_seq, gap.last_seq, gap.explained) == ("gw1", 3, 4, None)


@pytest.mark.parametrize("compression", ["deflate", "zstd"])
async def test_a_gateway_that_compresses_its_json_is_ingested_like_any_other(
    compression: str, centre_db: str, tmp_path: Path, mosquitto: Mosquitto, start_uplink: StartUplink
) -> None:
    uri = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    consumer = ingest_process(tmp_path, "c1", centre_db, [uri]).start()
    try:
        consumer.wait_subscribed()
        box = MemoryOutbox()
        box.append_sync(reading_batches(5, streams=("plc1",), per_row=4))
        await start_uplink(mqtt_config(mosquitto, compression=compression), box)
        await eventually(
            lambda: query(centre_db, "SELECT count(*) FROM messages")[0][0] + _rejected(centre_db) >= 5,
            30,
            what=lambda: consumer.log()[-2000:],
        )
    finally:
        consumer.stop()
    assert query(centre_db, "SELECT reason FROM rejected") == []
    assert committed_seqs(centre_db) == {(SITE, GATEWAY, "plc1"): [1, 2, 3, 4, 5]}
    assert query(centre_db, "SELECT count(*), count(value) FROM readings") == [(20, 15)]


def _rejected(dsn: str) -> int:
    count: int = query(dsn, "SELECT count(*) FROM rejected")[0][0]
    return count


def test_a_heartbeat_repeats_a_reading_in_the_stream_without_doubling_it_in_the_tag_views(
    centre_db: str,
) -> None:
    t0, t1 = 10**18, 10**18 + 900 * 10**9

    def message(seq: int, *readings: dict[str, object]) -> Message:
        body = {"v": 1, "stream": "plc1", "seq": seq, "site": "s1", "gateway": "gw1", "sent_ns": t1,
                "readings": list(readings)}  # fmt: skip
        return parse("water/s1/gw1/plc1", orjson.dumps(body))

    def reading(tag: str, ts: int, value: float, **extra: object) -> dict[str, object]:
        base = {"tag": tag, "ts": ts, "value": value, "quality": "good", "unit": "bar", "source": "plc1"}
        return base | extra

    store = Store(centre_db)
    # Report by exception: p changed at t0 and is unchanged since; 900 s later its heartbeat.
    store.commit([message(1, reading("p", t0, 4.5), reading("q", t0, 1.0))])
    store.commit([message(2, reading("p", t0, 4.5, repeat=True), reading("q", t1, 2.0))])
    store.close()
    trend = query(centre_db, "SELECT tag, ts_ns, value FROM tag_readings ORDER BY tag, ts_ns")
    assert trend == [("p", t0, 4.5), ("q", t0, 1.0), ("q", t1, 2.0)]
    assert query(centre_db, "SELECT tag, value FROM tag_latest ORDER BY tag") == [("p", 4.5), ("q", 2.0)]
    # The heartbeat itself is kept, marked: it says the value still held when seq 2 was sent.
    assert query(centre_db, "SELECT seq, tag FROM readings WHERE repeat") == [(2, "p")]


def test_a_gap_evicted_over_several_appends_is_explained_by_their_events_together(centre_db: str) -> None:
    # A long outage with a full quota: each append of the gateway's outbox evicts a row or two and
    # announces just those (buffer/outbox.py), so one hole at the centre is covered by many events.
    store = Store(centre_db)
    store.commit(messages("gw1", [1, 2, 3, 4, 5, 13]))
    store.commit([eviction("gw1", 1, 6, 7), eviction("gw1", 2, 8, 8), eviction("gw1", 3, 9, 12)])
    (gap,) = store.check_gaps(timeout_s=0) or []
    assert (gap.first_seq, gap.last_seq, gap.explained) == (6, 12, "buffer_eviction: quota")
    # A hole the events leave uncovered stays unexplained: the gateway did not announce it (and an
    # event whose range is not two numbers explains nothing).
    odd = eviction("gw1", 6, 17, 17, span=["seventeen", 17])
    store.commit([*messages("gw1", [20]), eviction("gw1", 4, 14, 16), eviction("gw1", 5, 18, 19), odd])
    (gap,) = store.check_gaps(timeout_s=0) or []
    store.close()
    assert (gap.first_seq, gap.last_seq, gap.explained) == (14, 19, None)


def test_a_flood_of_bad_payloads_is_kept_whole_in_rejected_but_logged_as_a_burst(
    centre_db: str, tmp_path: Path
) -> None:
    """A gateway (or a fleet after a bad update) sending bad payloads wrote one log line each: at a
    few thousand a second journald drops every line of the ingest, the gap reports with them."""
    flood = 300
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for i in range(flood):
                pub.publish("water/s1/gw1/plc1", b"not json %d" % i, wait=False)
            pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", 1, 10**18, 10))
        wait_until(
            lambda: (
                _rejected(centre_db) == flood and query(centre_db, "SELECT count(*) FROM messages")[0][0] == 1
            ),
            60,
            what=lambda: ingest.log()[-3000:],
        )
        lines = ingest.log().count("ingest.rejected")
    assert 1 <= lines <= 20, f"{lines} log lines for {flood} rejected messages"


def test_a_cloned_gateway_conflicting_in_every_message_is_logged_as_a_burst_and_a_gap_still_shows(
    centre_db: str, tmp_path: Path
) -> None:
    """An SD card cloned from a running gateway makes a conflict of every message it sends: one log
    line each had buried the ingest's log (and journald, past its rate limit, drops every line, the
    gap reports with them). Every conflict is still recorded; another gateway's gap is still said."""
    flood = 300
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker, "--gap-timeout-s", "0") as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for seq in range(1, flood + 1):
                pub.publish("water/s1/gw1/plc1", payload("s1", "gw1", seq, 10**18 + seq, 10), wait=False)
            wait_until(lambda: len(committed_seqs(centre_db).get(("s1", "gw1", "plc1"), [])) == flood, 60)
            for seq in range(1, flood + 1):  # the clone: the same seqs, its own readings
                pub.publish("water/s1/gw1/plc1", payload("s1", "gw1", seq, 10**18 + seq + 7, 10), wait=False)
            for seq in (1, 2, 5, 6):
                pub.publish("water/s3/gw3/plc1", payload("s3", "gw3", seq, 10**18 + seq, 10))
        wait_until(
            lambda: (
                query(centre_db, "SELECT count(*) FROM gateway_conflicts")[0][0] == flood
                and re.search(r"ingest\.gap\s.*gateway=gw3", ingest.log()) is not None
            ),
            60,
            what=lambda: ingest.log()[-3000:],
        )
        log = ingest.log()
    lines = len(re.findall(r"ingest\.conflict\s", log))
    assert 1 <= lines <= 20, f"{lines} log lines for {flood} conflicts"
    gap = re.search(r"ingest\.gap\s.*gateway=gw3.*", log)
    assert gap is not None, log[-3000:]
    assert "first_seq=3 " in gap[0], gap[0]
    assert "last_seq=4 " in gap[0], gap[0]


def test_a_data_message_on_a_command_topic_is_rejected_not_stored_as_the_gateways_data(
    centre_db: str, tmp_path: Path
) -> None:
    """A service allowed to publish commands could publish on `water/<site>/<gw>/cmd` (the ACL's
    `cmd/#` matches zero levels), and the default subscription `water/+/+/+` stored it as stream
    `cmd` of that gateway: a forged `good` reading, gaps and conflicts attributed to the gateway.
    A reading without `source` was rejected as "KeyError('source')" rather than by its field."""
    forged = [orjson.loads(payload("s1", "gw1", seq, 10**18 + seq, 1)) for seq in (1, 2, 6)]
    for body in forged:
        body["stream"] = "cmd"
    no_source = orjson.loads(_data(2))
    del no_source["readings"][0]["source"]
    with Mosquitto() as broker, one_ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for body in forged:
                pub.publish("water/s1/gw1/cmd", orjson.dumps(body))
            pub.publish("water/s1/gw1/plc1", orjson.dumps(no_source))
            pub.publish("water/s1/gw1/plc1", _data(1))
        wait_until(
            lambda: _rejected(centre_db) == 4 and committed_seqs(centre_db) == {("s1", "gw1", "plc1"): [1]},
            30,
            what=lambda: f"{committed_seqs(centre_db)}\n{ingest.log()[-3000:]}",
        )
        ingest.stop()
        log = ingest.log()
    assert query(centre_db, "SELECT DISTINCT stream FROM tag_readings") == [("plc1",)]
    assert query(centre_db, "SELECT count(*) FROM open_gaps") == [(0,)]
    assert query(centre_db, "SELECT count(*) FROM gateway_conflicts") == [(0,)]
    reasons = sorted(r for (r,) in query(centre_db, "SELECT reason FROM rejected"))
    assert reasons == [
        "readings[0] has no 'source'",
        *["topic 'water/s1/gw1/cmd': stream 'cmd' is reserved (commands to the gateway and its presence,"
          " never its data)"] * 3,
    ]  # fmt: skip
    assert "stream 'cmd' is reserved" in log
    assert re.findall(r"ingest\.stopped.*?rejected=(\d+)", log) == ["4"]


def _tls_ingest(tmp_path: Path, name: str, dsn: str, broker: Mosquitto, *tls: str | Path) -> IngestProcess:
    return ingest_process(tmp_path, name, dsn, [f"mqtts://localhost:{broker.port}"], *map(str, tls)).start()


def test_two_consumers_share_the_shipped_mtls_broker_each_with_its_own_certificate(
    centre_db: str, tmp_path: Path
) -> None:
    """fleet.md's `edge-centre ingest --broker mqtts://…` spoke plain MQTT to the TLS port (no TLS,
    no certificate options) and logged `ingest.disconnected reason='Unspecified error'` 5 times a
    second. Now the broker as shipped (require_certificate, CN = user = client id), with the ACL
    blocks fleet.md gives, takes two consumers made as fleet.md says, and a gateway's data is stored."""
    pki = Pki(tmp_path / "pki")
    certs = {name: pki.client(name) for name in ("ingest-1", "ingest-2")}
    blocks = "".join(f"\nuser {name}\ntopic read water/#\n" for name in certs)
    gateway = pki.device("gw", "gw-07", "SER-0007", "site1")
    with pki.broker(SHIPPED_ACL.read_text() + blocks) as broker:
        ingests = [
            _tls_ingest(
                tmp_path, name, centre_db, broker,
                "--group", "ingest", "--ca-file", pki.ca_file, "--cert-file", cert, "--key-file", key,
            )
            for name, (cert, key) in certs.items()
        ]  # fmt: skip
        try:
            for ingest in ingests:
                ingest.wait_subscribed()
            device = TlsClient(
                broker, gateway.cert_file, gateway.key_file, gateway.ca_file, client_id="gw-07"
            )
            try:
                for seq in range(1, 21):
                    body = payload("site1", "gw-07", seq, 10**18 + seq, 3)
                    assert not device.publish("water/site1/gw-07/plc1", body).is_failure
            finally:
                device.client.disconnect()
                device.client.loop_stop()
            wait_until(
                lambda: committed_seqs(centre_db) == {("site1", "gw-07", "plc1"): list(range(1, 21))},
                30,
                what=lambda: f"{committed_seqs(centre_db)}\n{ingests[0].log()[-3000:]}",
            )
        finally:
            for ingest in ingests:
                ingest.stop()
    for ingest in ingests:
        assert "Unspecified error" not in ingest.log()
        assert "ingest.connect_failed" not in ingest.log()


def test_a_refused_tls_connection_is_logged_with_its_reason_and_retried_with_a_backoff(
    centre_db: str, tmp_path: Path
) -> None:
    """No client certificate, one from a CA the broker does not trust, a broker certificate from a
    CA we do not trust: each is one line saying which, retried 0.5 s, then 1 s later and so on
    (not 5 a second)."""
    pki = Pki(tmp_path / "pki")
    other = Pki(tmp_path / "other")
    with pki.broker() as broker:
        cases = {
            "no-cert": ("--ca-file", pki.ca_file),
            "other-ca": (
                "--ca-file",
                pki.ca_file,
                "--cert-file",
                other.centre_cert,
                "--key-file",
                other.centre_key,
            ),
            "wrong-ca": (
                "--ca-file",
                other.ca_file,
                "--cert-file",
                pki.centre_cert,
                "--key-file",
                pki.centre_key,
            ),
        }
        ingests = {
            name: _tls_ingest(tmp_path, name, centre_db, broker, *args) for name, args in cases.items()
        }
        first_seen: dict[str, float] = {}  # when each ingest's first refusal was read in its log
        third_seen: dict[str, float] = {}

        def three_attempts_each() -> bool:
            for name, ingest in ingests.items():
                count = ingest.log().count("ingest.connect_failed")
                if count >= 1:
                    first_seen.setdefault(name, time.monotonic())
                if count >= 3:
                    third_seen.setdefault(name, time.monotonic())
            return len(third_seen) == len(ingests)

        try:
            wait_until(three_attempts_each, 30, "three connection attempts by each ingest")
        finally:
            for ingest in ingests.values():
                ingest.stop()
    logs = {name: ingest.log() for name, ingest in ingests.items()}
    wanted = {
        "no-cert": "certificate refused: the broker requires a client certificate",
        "other-ca": "certificate refused: the broker does not trust the CA that issued our certificate",
        "wrong-ca": "the broker's certificate is not accepted: ",
    }
    for name, text in wanted.items():
        lines = [line for line in logs[name].splitlines() if "ingest.connect_failed" in line]
        assert lines, logs[name]
        assert all(text in line for line in lines), logs[name]
        # 0.5 s, then 1 s between the first three attempts: 1.5 s (5 a second took 0.4 s)
        assert third_seen[name] - first_seen[name] >= 1.0, (third_seen[name] - first_seen[name], logs[name])
        assert [line.split("retry_in_s=")[1] for line in lines[:3]] == ["0.5", "1.0", "2.0"], logs[name]
        assert "ingest.disconnected" not in logs[name]


def test_a_password_is_not_sent_in_clear_to_another_host_unless_allowed(tmp_path: Path) -> None:
    env = dict(os.environ, EDGE_CENTRE_MQTT_USER="ingest", EDGE_CENTRE_MQTT_PASSWORD="s3cret")
    args = [
        sys.executable,
        "-m",
        "water_edge.centre.cli",
        "--dsn",
        "postgresql://nobody@127.0.0.1:1/x",
        "ingest",
    ]
    done = subprocess.run(
        [*args, "--broker", "mqtt://mqtt-a.example:1883"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "refusing to send EDGE_CENTRE_MQTT_PASSWORD in clear to mqtt-a.example:1883" in done.stderr
    done = subprocess.run(
        [*args, "--broker", "mqtts://mqtt-a.example", "--broker", "mqtt://mqtt-b.example"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "every --broker must be mqtts:// or every one mqtt://" in done.stderr
