"""The reference ingest bounds the `streams` rows one gateway can make: a gateway naming a new outbox
epoch in every message is refused past `--new-streams-per-day`, counted and said; one that restarts
its outbox a few times a day never is (docs/fleet.md, "A hostile gateway"). A real Mosquitto, a real
PostgreSQL and the real `edge-centre ingest` process; the schema upgrade from schema 5 in place.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.broker import Mosquitto, Publisher
from tests.support.centre import committed_seqs, ingest_process, messages, query
from tests.support.testing import wait_until
from water_edge.centre.loadgen import payload
from water_edge.centre.store import Store, migrate, migrations

pytestmark = pytest.mark.slow

DEFAULT_LIMIT = 1000  # `--new-streams-per-day` when not given


def _streams(dsn: str, gateway: str) -> int:
    (count,) = query(dsn, "SELECT count(*) FROM streams WHERE gateway = %s", gateway)[0]
    return int(count)


def test_a_gateway_naming_a_new_epoch_in_every_message_is_refused_past_its_daily_limit(
    centre_db: str, tmp_path: Path
) -> None:
    """Each (site, gateway, stream, epoch) is a `streams` row, and every gap check walks every row:
    a gateway that restarted its outbox epoch in every message (30,000 in the walk) made a row of
    each, for good. Now a gateway makes at most 1,000 in 24 h; the messages of another new one are
    kept in `rejected` with the reason, counted per gateway (`gateway_stream_refusals`), in
    `ingest.progress` (`streams_refused`) and in the log. Its existing streams go on; a gateway that
    restarts its epoch a few times (a reflash, a quarantined outbox) is not touched."""
    hostile = DEFAULT_LIMIT + 100
    with Mosquitto() as broker:
        ingest = ingest_process(tmp_path, "c1", centre_db, [f"mqtt://{broker.host}:{broker.port}"]).start()
        try:
            ingest.wait_subscribed()
            with Publisher(broker.host, broker.port) as pub:
                for epoch in range(1, 5):  # the good gateway: four outboxes, three streams each
                    for stream in ("plc1", "plc2", "events"):
                        body = payload("s2", "good", 1, 10**18, 3, epoch=epoch).replace(
                            b'"stream":"plc1"', f'"stream":"{stream}"'.encode()
                        )
                        pub.publish(f"water/s2/good/{stream}", body, wait=False)
                for epoch in range(1, hostile + 1):
                    pub.publish(
                        "water/s1/gw1/plc1", payload("s1", "gw1", 1, 10**18, 1, epoch=epoch), wait=False
                    )
                pub.publish("water/s1/gw1/plc1", payload("s1", "gw1", 2, 10**18, 1, epoch=1))
            wait_until(
                lambda: (
                    query(centre_db, "SELECT count(*) FROM rejected")[0][0] == 100
                    and 2 in committed_seqs(centre_db).get(("s1", "gw1", "plc1"), [])
                ),
                60,
                what=lambda: ingest.log()[-3000:],
            )
        finally:
            ingest.stop()
        log = ingest.log()
    assert _streams(centre_db, "gw1") == DEFAULT_LIMIT
    assert _streams(centre_db, "good") == 12
    (epochs,) = query(
        centre_db,
        "SELECT array_agg(DISTINCT s.epoch ORDER BY s.epoch) FROM messages m"
        " JOIN streams s ON s.id = m.stream_id WHERE s.gateway = 'good'",
    )[0]
    assert epochs == [1, 2, 3, 4]
    refused = query(centre_db, "SELECT topic, reason FROM rejected")
    assert {topic for topic, _ in refused} == {"water/s1/gw1/plc1"}
    assert {re.sub(r"epoch \d+", "epoch N", reason) for _, reason in refused} == {
        "too many new streams: gateway 'gw1' made 1000 in the last 24 h (a new stream, epoch or site"
        " each; limit 1000, --new-streams-per-day): stream 'plc1' epoch N of site 's1' refused"
    }
    view = query(
        centre_db,
        "SELECT gateway, refused, last_site, last_stream, streams_last_day FROM gateway_stream_refusals",
    )
    assert view == [("gw1", 100, "s1", "plc1", DEFAULT_LIMIT)]
    # the gateway's existing stream went on after the refusals
    (seqs,) = query(
        centre_db,
        "SELECT array_agg(m.seq ORDER BY m.seq) FROM messages m JOIN streams s ON s.id = m.stream_id"
        " WHERE s.gateway = 'gw1' AND s.epoch = 1",
    )[0]
    assert seqs == [1, 2]
    assert re.search(r"ingest\.stopped.* streams_refused=100\b", log), log[-2000:]
    assert 1 <= log.count("ingest.streams_refused ") <= 20, "logged as a burst, not a line a message"
    assert "Traceback" not in log


def _schema_5_database(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A database migrated as the ingest before schema 6 left it (its migrations, its bookkeeping)."""
    name = re.sub(r"\W", "_", request.node.name)[:40].lower() + "_" + secrets.token_hex(3)
    dsn: str = postgres_server.create_db(name)
    old = [(n, sql) for n, sql in migrations() if n < "006"]
    assert [n for n, _ in old][-1] == "005_seq_outliers.sql"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE centre_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for n, sql in old:
            with conn.transaction():
                conn.execute(sql.encode())
                conn.execute("INSERT INTO centre_migrations (name) VALUES (%s)", (n,))
    return dsn


def test_a_schema_5_database_upgrades_in_place_and_its_streams_count_towards_the_limit(
    postgres_server: Any, request: pytest.FixtureRequest
) -> None:
    """`edge-centre migrate` (and `ingest` at start) on a database of the ingest before the limit:
    006 is applied in place, the data stays, and the streams it made today count."""
    dsn = _schema_5_database(postgres_server, request)
    store = Store(dsn)
    try:
        store.commit(messages("gw1", [1, 2], epoch=1) + messages("gw1", [1], epoch=2))
    finally:
        store.close()
    # 006, and what came after it (007: gateways' state backups), applied in place.
    assert migrate(dsn) == ["006_stream_limits.sql", "007_state_backups.sql"]
    assert migrate(dsn) == []
    assert committed_seqs(dsn) == {("s1", "gw1", "plc1"): [1, 1, 2]}
    store = Store(dsn)
    try:
        keys = {m.key for m in messages("gw1", [1], epoch=3) + messages("gw1", [1], epoch=4)}
        refused = store.admit(keys | {m.key for m in messages("gw1", [1], epoch=1)}, per_day=3)
        assert refused == {("s1", "gw1", "plc1", 4): 3}, "two rows of before and epoch 3 make the three"
        committed = store.commit(messages("gw1", [1], epoch=3), refusals=[("s1", "gw1", "plc1", 4)])
        assert (committed.messages, committed.refusals) == (1, 1)
        assert store.admit({("s1", "gw2", "plc1", 9)}, per_day=3) == {}, "another gateway has its own count"
    finally:
        store.close()
    assert query(
        dsn, "SELECT gateway, refused, last_epoch, streams_last_day FROM gateway_stream_refusals"
    ) == [("gw1", 1, 4, 3)]
