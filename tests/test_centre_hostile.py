"""The reference ingest against one compromised or broken gateway: the other gateways go on.

A gateway may publish only under its own topics (the broker's ACL), but on them anything: what it
sends must be rejected with a reason, never stop the ingest nor hold up the other gateways. A real
Mosquitto, a real PostgreSQL and the real `edge-centre ingest` process (docs/fleet.md, "A hostile
gateway").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.broker import Mosquitto, Publisher
from tests.support.centre import IngestProcess, committed_seqs, ingest_process, query
from tests.support.testing import wait_until
from water_edge.centre.loadgen import payload

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _ingest(tmp_path: Path, dsn: str, broker: Mosquitto) -> Iterator[IngestProcess]:
    ingest = ingest_process(tmp_path, "c1", dsn, [f"mqtt://{broker.host}:{broker.port}"]).start()
    try:
        ingest.wait_subscribed()
        yield ingest
    finally:
        ingest.stop()


def _reading(seq: int, **reading: object) -> bytes:
    body = orjson.loads(payload("s1", "gw1", seq, 10**18 + seq, 1))
    body["readings"][0].update(reading)
    return orjson.dumps(body)


def _rejected(dsn: str) -> dict[bytes, str]:
    return {bytes(body): reason for body, reason in query(dsn, "SELECT payload, reason FROM rejected")}


def test_an_event_detail_nested_too_deep_to_store_is_rejected_and_does_not_end_the_ingest(
    centre_db: str, tmp_path: Path
) -> None:
    """JSON is read up to 1,024 levels deep but an event's detail is written back for jsonb only up
    to 254: one event nested 300 deep raised a TypeError that ended the consumer, and the message,
    never acknowledged, ended it again at every restart; no gateway's data was stored any more."""
    # Written by hand: orjson refuses to write it, a hostile gateway is not held to the same library.
    detail = b'{"a":' * 299 + b"{}" + b"}" * 299
    deep = (
        b'{"v": 2, "epoch": 1, "stream": "events", "seq": 1, "site": "s1", "gateway": "gw1", "sent_ns": 1,'
        b' "events": [{"kind": "k", "source": "agent", "ts": 1, "severity": "info", "score": null,'
        b' "detail": ' + detail + b"}]}"
    )
    with Mosquitto() as broker, _ingest(tmp_path, centre_db, broker) as ingest:
        process = ingest.process
        assert process is not None
        with Publisher(broker.host, broker.port) as pub:
            pub.publish("water/s1/gw1/events", deep)
            pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", 1, 10**18, 1))
        wait_until(
            lambda: process.poll() is not None or ("s2", "gw2", "plc1") in committed_seqs(centre_db),
            30,
            what=lambda: ingest.log()[-3000:],
        )
        assert process.poll() is None, ingest.log()[-3000:]
        wait_until(lambda: _rejected(centre_db), 30, what=lambda: ingest.log()[-3000:])
    assert _rejected(centre_db) == {
        deep: "events[0] detail nests deeper than 254 levels (Recursion limit reached)"
    }
    assert committed_seqs(centre_db) == {("s2", "gw2", "plc1"): [1]}
    assert "Traceback" not in ingest.log()


def test_a_gateway_sending_a_nul_in_every_message_does_not_hold_up_the_others(
    centre_db: str, tmp_path: Path
) -> None:
    """PostgreSQL refuses a NUL in text and jsonb, and refused the whole batch that carried one; the
    batch was then committed again in halves down to the refused messages, about two transactions
    each. A gateway sending nothing else (20,000 messages at once, walked) brought the ingest to
    ~80 messages a second: another gateway's messages waited 40 s and more, and the wait grew. Now
    such a message is rejected as it is read, and the others are committed a batch at a time. A
    message's `received_at` is its transaction's start: the distinct ones count the transactions."""
    good = 300
    hostile = {
        _reading(seq, **{key: "x\u0000"})
        for seq, key in enumerate(["tag", "unit", "source", "value", "reason"] * (good // 5), 1)
    }
    with Mosquitto() as broker, _ingest(tmp_path, centre_db, broker) as ingest:
        with Publisher(broker.host, broker.port) as pub:
            for seq, body in enumerate(sorted(hostile), 1):
                pub.publish("water/s1/gw1/plc1", body, wait=False)
                pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", seq, 10**18, 10), wait=False)
            pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", good + 1, 10**18, 10))
        wait_until(
            lambda: (
                len(_rejected(centre_db)) == len(hostile)
                and len(committed_seqs(centre_db).get(("s2", "gw2", "plc1"), [])) == good + 1
            ),
            60,
            what=lambda: ingest.log()[-3000:],
        )
        log = ingest.log()
    (transactions,) = query(centre_db, "SELECT count(DISTINCT received_at) FROM messages")[0]
    assert transactions <= good // 4, f"{transactions} transactions for {good} good messages"
    assert committed_seqs(centre_db) == {("s2", "gw2", "plc1"): list(range(1, good + 2))}
    reasons = {reason.split(" ", 1)[1] for reason in _rejected(centre_db).values()}
    assert reasons == {"holds a NUL character (\\u0000), which PostgreSQL refuses"}
    assert {reason.split(" ", 1)[0] for reason in _rejected(centre_db).values()} == {
        f"readings[0].{key}" for key in ("tag", "unit", "source", "value", "reason")
    }
    assert 1 <= log.count("ingest.rejected ") <= 20, "logged as a burst, not a line a message"


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux: VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmHWM")


def test_a_gateway_sending_messages_of_the_brokers_maximum_size_does_not_grow_the_ingest_with_them(
    centre_db: str, tmp_path: Path
) -> None:
    """The broker has up to 2,000 unacknowledged messages out to the ingest, and a batch was up to
    500 messages whatever their size: 300 messages of 1 MiB (the shipped broker's maximum) took the
    ingest from 45 MB to 1.15 GB, so a few hundred more would have it killed for memory, and the
    same messages, redelivered, kill it again. Now the unread inbox and a batch are bounded in bytes
    as well: the socket is left unread past 32 MiB until the writer has taken some. Measured by
    this test (400 copies of one 1 MiB message): 43 to 514 MB before, under 250 MB now."""
    sent = 400
    body = orjson.loads(payload("s1", "gw1", 1, 10**18, 100))
    for reading in body["readings"]:
        reading["value"] = "v" * 10_000  # 1 MiB with few rows: the test costs bytes, not rows
    # One message sent again and again (the same seq: a gateway resending, or a hostile one): each
    # copy is read, parsed and batched as a new one would be, and the database stores the first
    # only. 400 new messages wrote 400 MB of rows and WAL, which slowed the other workers' servers
    # enough to time out their tests under `make test`.
    with (
        Mosquitto(extra_config="max_packet_size 1048576\n") as broker,
        _ingest(tmp_path, centre_db, broker) as ingest,
    ):
        process = ingest.process
        assert process is not None
        before = _peak_rss_mb(process.pid)
        with Publisher(broker.host, broker.port) as pub:
            for _ in range(sent):
                pub.publish("water/s1/gw1/plc1", orjson.dumps(body), wait=False)
            # After them in the broker's order: once it is stored, every copy has been taken.
            pub.publish("water/s2/gw2/plc1", payload("s2", "gw2", 1, 10**18, 1), timeout=60)
        wait_until(
            lambda: (
                committed_seqs(centre_db).get(("s1", "gw1", "plc1"), []) == [1]
                and ("s2", "gw2", "plc1") in committed_seqs(centre_db)
            ),
            90,
            what=lambda: ingest.log()[-3000:],
        )
        peak = _peak_rss_mb(process.pid)
    assert len(orjson.dumps(body)) > 1_000_000
    assert peak - before < 250, f"the ingest grew from {before:.0f} MB to {peak:.0f} MB for {sent} MiB"
