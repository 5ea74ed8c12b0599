"""The fleet path end to end on real parts: agent → three-node RabbitMQ cluster → two ingest
consumers → PostgreSQL, with kill -9 of the broker node the agent is on, of one consumer and of
the agent itself along the way.

What a central team relies on: every reading the gateway committed (every seq its outbox ever
issued) is in the database exactly once, and no gap is left unexplained. The cluster (Debian's
rabbitmq-server, MQTT plugin, subscriptions on quorum queues) speaks MQTT 3.1.1 without shared
subscriptions, so the two consumers split the fleet by static partition (docs/fleet.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import start_agent
from tests.support.centre import committed_in_last_run, committed_seqs, ingest_process, query
from tests.support.cluster import RabbitCluster, rabbitmq_available
from tests.support.testing import (
    AGENT_GATEWAY,
    AGENT_SITE,
    outbox_last_seqs,
    wait_until,
    write_agent_config,
)
from water_edge.centre.store import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(400),
    pytest.mark.skipif(not rabbitmq_available(), reason="rabbitmq-server not installed (make setup)"),
]


def fake_device(name: str, tags: int) -> dict[str, object]:
    tag_list = [
        {"name": f"t{i}", "unit": "bar", "offset": i, "amplitude": 1.0, "period_s": 5.0} for i in range(tags)
    ]
    return {"name": name, "kind": "fake", "poll_interval_ms": 100, "tags": tag_list}


# Streams plc1 (partition 0 of 2), meters and events (partition 1): both consumers have work.
FAKE_DEVICES = [fake_device("plc1", 10), fake_device("meters", 5)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    with RabbitCluster() as c:
        yield c


def missing(want: dict[tuple[str, str, str], list[int]], dsn: str) -> str:
    got = committed_seqs(dsn)
    lines = []
    for key, seqs in want.items():
        have = set(got.get(key, []))
        lines.append(
            f"{key[2]}: missing {sorted(set(seqs) - have)[:20]} extra {sorted(have - set(seqs))[:20]}"
        )
    return "; ".join(lines)


def messages_in_db(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM messages")[0][0])


def test_every_committed_reading_lands_exactly_once_through_node_consumer_and_agent_kills(
    cluster: RabbitCluster, centre_db: str, tmp_path: Path
) -> None:
    n0, n1, n2 = (n.uri for n in cluster.nodes)
    # Consumers on different first nodes; both list all three for their own failover.
    consumers = [
        ingest_process(tmp_path, "c0", centre_db, [n0, n1, n2], "--protocol", "3.1.1", "--partition", "0/2"),
        ingest_process(tmp_path, "c1", centre_db, [n1, n2, n0], "--protocol", "3.1.1", "--partition", "1/2"),
    ]
    config = write_agent_config(
        tmp_path,
        uplink={
            "servers": [n0, n1, n2],
            "protocol": "3.1.1",
            "keepalive_s": 5,
            "connect_timeout_s": 3.0,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
        devices=FAKE_DEVICES,
    )
    agent = None
    try:
        for c in consumers:
            c.start()
        for c in consumers:
            c.wait_subscribed()
        agent = start_agent(config)
        agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
        assert agent.status()["uplink"]["server_index"] == 0
        wait_until(lambda: messages_in_db(centre_db) >= 20, 60, what="first messages in the database")

        cluster.kill(0)  # the node the agent (and consumer c0) is on
        agent.wait_status(lambda s: s["uplink"]["state"] == "online" and s["uplink"]["server_index"] != 0, 60)
        before = messages_in_db(centre_db)
        wait_until(lambda: messages_in_db(centre_db) >= before + 20, 60, what="messages after the node kill")

        consumers[1].kill()
        consumers[1].start()
        consumers[1].wait_subscribed(times=2, timeout_s=60)

        agent.kill()  # kill -9: the outbox keeps what was committed
        agent = start_agent(config)
        agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=60)
        before = messages_in_db(centre_db)
        wait_until(
            lambda: messages_in_db(centre_db) >= before + 20, 60, what="messages after the agent restart"
        )
        assert agent.stop() == 0, agent.log()  # a clean stop drains the outbox
        last = outbox_last_seqs(agent.outbox)
        want = {(AGENT_SITE, AGENT_GATEWAY, stream): list(range(1, seq + 1)) for stream, seq in last.items()}
        wait_until(
            lambda: committed_seqs(centre_db) == want, 90, every_s=0.5, what=lambda: missing(want, centre_db)
        )
    finally:
        if agent is not None:
            agent.kill()
        for c in consumers:
            c.stop()
    # Both shared the load (c1's last run is after its restart: what was queued for it meanwhile).
    assert all(committed_in_last_run(c.log()) > 0 for c in consumers)
    readings = query(centre_db, "SELECT count(*), count(DISTINCT (stream_id, seq, tag, ts_ns)) FROM readings")
    assert readings[0][0] == readings[0][1] > 0
    per_message = query(
        centre_db,
        "SELECT count(*) FROM messages m WHERE m.items <> (SELECT count(*) FROM readings r"
        " WHERE r.stream_id = m.stream_id AND r.seq = m.seq) + (SELECT count(*) FROM events e"
        " WHERE e.stream_id = m.stream_id AND e.seq = m.seq)",
    )
    assert per_message == [(0,)], "every message has exactly its own readings and events"
    store = Store(centre_db)
    assert store.check_gaps(timeout_s=0) == []
    store.close()
    assert query(centre_db, "SELECT count(*) FROM open_gaps") == [(0,)]
