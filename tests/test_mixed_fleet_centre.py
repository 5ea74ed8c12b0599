"""A fleet of mixed releases at the reference ingest (docs/fleet.md, "Mixed releases"): one gateway's
outbox sent by releases of both payload versions, through a real Mosquitto into a real ingest and
PostgreSQL.

A release before 2026-12-01 sends payload version 1, without `epoch` (stored as epoch 0); a later
one sends its outbox's epoch. A gateway rolled back from a later release to such a release on the
same outbox, and updated again, counts on in one outbox: the centre saw two epochs, each with a
hole the other held, and reported both as data lost (`ingest.gap`, `explained` NULL). Walked with
releases fff311c and this one on one state directory: `plc 42..51` an open, unexplained gap,
every seq of it stored under epoch 0.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.broker import Mosquitto, Publisher
from tests.support.centre import IngestProcess, ingest_process, query
from tests.support.testing import wait_until

pytestmark = pytest.mark.slow

EPOCH = 6143980127734471
TOPIC = "water/s1/gw1/plc1"


def body(seq: int, epoch: int | None) -> bytes:
    """A data message as a release sends it: payload version 1 (no `epoch`) or 2."""
    doc: dict[str, object] = {"v": 1} if epoch is None else {"v": 2, "epoch": epoch}
    doc |= {
        "stream": "plc1", "seq": seq, "site": "s1", "gateway": "gw1", "sent_ns": time.time_ns(),
        "readings": [{"tag": "flow", "ts": 10**18 + seq, "value": seq, "quality": "good", "unit": "m3/h",
                      "source": "plc1"}],
    }  # fmt: skip
    return orjson.dumps(doc)


@contextlib.contextmanager
def ingest(tmp_path: Path, dsn: str, broker: Mosquitto) -> Iterator[IngestProcess]:
    process = ingest_process(
        tmp_path, "c1", dsn, [f"mqtt://{broker.host}:{broker.port}"], "--gap-timeout-s", "0"
    )
    process.start()
    try:
        process.wait_subscribed()
        yield process
    finally:
        process.stop()


def gaps(dsn: str) -> list[tuple[int, int, int, str | None]]:
    return [
        (int(epoch), int(first), int(last), explained)
        for epoch, first, last, explained in query(
            dsn, "SELECT epoch, first_seq, last_seq, explained FROM open_gaps ORDER BY 1, 2"
        )
    ]


def test_a_gateway_rolled_back_to_payload_v1_and_updated_again_has_no_gap_reported_as_lost(
    centre_db: str, tmp_path: Path
) -> None:
    # Its own outbox (epoch EPOCH) on a later release, a rollback to a v1 release, an update, the
    # rollback again: each run goes on with the outbox's seqs.
    runs = [(range(1, 4), EPOCH), (range(4, 6), None), (range(6, 8), EPOCH), (range(8, 10), None),
            (range(10, 11), EPOCH)]  # fmt: skip
    with (
        Mosquitto() as broker,
        ingest(tmp_path, centre_db, broker),
        Publisher(broker.host, broker.port) as pub,
    ):
        for seqs, epoch in runs:
            for seq in seqs:
                pub.publish(TOPIC, body(seq, epoch))
        wait_until(lambda: len(gaps(centre_db)) == 3, 30, what=lambda: f"gaps {gaps(centre_db)}")
    stored = query(
        centre_db,
        "SELECT s.epoch, array_agg(m.seq ORDER BY m.seq) FROM messages m JOIN streams s ON s.id = m.stream_id"
        " GROUP BY 1 ORDER BY 1",
    )
    assert stored == [(0, [4, 5, 8, 9]), (EPOCH, [1, 2, 3, 6, 7, 10])], "every message stored"
    v1 = "payload v1: stored under epoch 0 (a release before epochs ran on this outbox)"
    v2 = f"payload v2: stored under epoch {EPOCH} (a release with epochs ran on this outbox)"
    assert gaps(centre_db) == [(0, 6, 7, v2), (EPOCH, 4, 5, v1), (EPOCH, 8, 9, v1)]
    assert query(centre_db, "SELECT count(*) FROM open_gaps WHERE explained IS NULL") == [(0,)]


def test_seqs_an_earlier_outbox_sent_under_epoch_0_do_not_explain_a_loss_in_a_new_one(
    centre_db: str, tmp_path: Path
) -> None:
    # A gateway on payload v1 whose card is replaced by one of a later release: the new outbox
    # counts from 1 again, under its epoch. Its seqs 3..4 lost are lost, though the old outbox's
    # seqs 3..4 are stored under epoch 0: those were sent before the new outbox's seq 2.
    with (
        Mosquitto() as broker,
        ingest(tmp_path, centre_db, broker),
        Publisher(broker.host, broker.port) as pub,
    ):
        for seq in range(1, 6):
            pub.publish(TOPIC, body(seq, None))
        for seq in (1, 2, 5):
            pub.publish(TOPIC, body(seq, EPOCH))
        wait_until(lambda: gaps(centre_db) != [], 30, what="the gap check")
    assert gaps(centre_db) == [(EPOCH, 3, 4, None)]
