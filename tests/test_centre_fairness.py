"""The reference ingest shares its batches between gateways: one gateway flooding valid messages does
not hold up the others (docs/fleet.md, "A hostile gateway"). A real Mosquitto, a real PostgreSQL and
the real `edge-centre ingest` process.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Publisher
from tests.support.centre import ingest_process, query
from tests.support.testing import wait_until
from water_edge.centre.consumer import FairQueue, _Delivery, gateway_of
from water_edge.centre.loadgen import payload

pytestmark = pytest.mark.slow

# A gateway publishing one message per line of its input, QoS 1, up to 1,000 unacknowledged at once.
_MOSQUITTO_PUB = ["mosquitto_pub", "-q", "1", "-M", "1000", "-t", "water/s1/flood/plc1", "-l"]


def _lags(dsn: str, gateway: str) -> list[float]:
    """Publish -> stored, in seconds, of each of the gateway's messages (sent_ns is its publish time)."""
    rows = query(
        dsn,
        "SELECT extract(epoch FROM m.received_at)::float8 - m.sent_ns / 1e9 FROM messages m"
        " JOIN streams s ON s.id = m.stream_id WHERE s.gateway = %s ORDER BY m.seq",
        gateway,
    )
    return [float(lag) for (lag,) in rows]


def test_a_gateway_flooding_valid_messages_does_not_hold_up_a_quiet_one(
    centre_db: str, tmp_path: Path
) -> None:
    """A gateway publishing valid messages faster than the ingest commits them (60,000 of them
    within a few seconds, by mosquitto_pub) had them all ahead of every other gateway's in the
    broker's order, and the ingest read and committed them in that order: a quiet gateway's
    messages, one a second, waited behind the flood (measured on the code before: up to 3.3 to
    5.2 s, growing while the flood lasted). Now the ingest reads ahead of its writer, fast (bounded
    by inbox_bytes), queues what it read per gateway and fills each batch round-robin between them:
    the quiet gateway's message waits for about one batch (measured: at most 0.2 to 0.65 s)."""
    flood = 60_000
    bodies = [payload("s1", "flood", seq, 10**18 + seq, 1) for seq in range(1, flood + 1)]
    with Mosquitto() as broker:
        ingest = ingest_process(tmp_path, "c1", centre_db, [f"mqtt://{broker.host}:{broker.port}"]).start()
        try:
            ingest.wait_subscribed()
            quiet_sent = 0
            quiet_failed: list[BaseException] = []
            stop = threading.Event()

            def quiet() -> None:
                # Counted once the broker has it: on two busy cores during the flood its PUBACK can take
                # seconds (counted before the publish, one was once waited for that was never stored).
                nonlocal quiet_sent
                try:
                    with Publisher(broker.host, broker.port) as pub:
                        while not stop.wait(1.0 if quiet_sent else 0.0):
                            body = payload("s2", "quiet", quiet_sent + 1, 10**18, 10)
                            pub.publish("water/s2/quiet/plc1", body, timeout=30)
                            quiet_sent += 1
                except BaseException as exc:
                    quiet_failed.append(exc)
                    raise

            quiet_thread = threading.Thread(target=quiet)
            try:
                quiet_thread.start()
                time.sleep(2.5)  # the quiet gateway's lag undisturbed
                # mosquitto_pub: a publisher in C, in its own process (a Python one here took a core,
                # and the quiet gateway's client in this process waited for the interpreter lock).
                flood_began = time.time()
                flooder = subprocess.run(
                    [*_MOSQUITTO_PUB, "-h", broker.host, "-p", str(broker.port), "-i", "flood"],
                    input=b"\n".join(bodies),
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
                assert flooder.returncode == 0, flooder.stderr.decode()
                wait_until(
                    lambda: len(_lags(centre_db, "flood")) == flood,
                    120,
                    what=lambda: ingest.log()[-3000:],
                )
                (flood_stored,) = query(
                    centre_db,
                    "SELECT extract(epoch FROM max(m.received_at))::float8 FROM messages m"
                    " JOIN streams s ON s.id = m.stream_id WHERE s.gateway = 'flood'",
                )[0]
                time.sleep(1.5)  # and after it
            finally:
                stop.set()
                quiet_thread.join(40)
            assert not quiet_failed, f"the quiet gateway's publisher failed: {quiet_failed!r}"
            wait_until(
                lambda: len(_lags(centre_db, "quiet")) == quiet_sent,
                30,
                what=lambda: (
                    f"{len(_lags(centre_db, 'quiet'))} of the {quiet_sent} quiet messages the"
                    f" broker acknowledged stored\n{ingest.log()[-3000:]}"
                ),
            )
        finally:
            ingest.stop()
    lags = _lags(centre_db, "quiet")
    # Behind the flood, a quiet message waited for most of it: the flood's time to be stored. Not
    # behind it, for about a batch, however long a loaded machine takes over the flood (make test
    # on two busy cores: 1.7 to 4.2 s for a quiet message, the flood itself taking longer still).
    flood_s = float(flood_stored) - flood_began
    print(
        f"flood stored in {flood_s:.2f} s; quiet gateway: {len(lags)} messages, lag max {max(lags):.2f} s,"
        f" each {[round(x, 2) for x in lags]}"
    )
    assert len(lags) >= 5
    assert max(lags) < max(1.5, flood_s / 3), (
        f"a quiet gateway's message waited up to {max(lags):.2f} s; the flood was stored in {flood_s:.2f} s"
    )
    assert "Traceback" not in ingest.log()


def _delivery(n: int, gateway: str, size: int) -> _Delivery:
    return _Delivery(n, 0, n, 1, f"water/s1/{gateway}/plc1", b"x" * size, None)


def test_batches_take_each_gateway_in_turn_in_its_own_order() -> None:
    """Deficit round-robin in bytes: a flooding gateway gives a quantum's worth a turn, a quiet one
    its message at its first turn; each gateway's messages keep their order; a turn cut short by a
    full batch goes on in the next batch."""
    fair = FairQueue(quantum=1000)
    for n in range(1, 31):
        fair.put(_delivery(n, "flood", 100))
    fair.put(_delivery(31, "quiet", 100))
    first = fair.take(max_messages=15, max_bytes=10**6)
    assert [(gateway_of(d.topic), d.n) for d in first] == [
        *[("flood", n) for n in range(1, 11)],
        ("quiet", 31),
        *[("flood", n) for n in range(11, 15)],
    ]
    assert [d.n for d in fair.take(max_messages=100, max_bytes=10**6)] == list(range(15, 31))
    assert (len(fair), fair.bytes) == (0, 0)


def test_a_message_larger_than_the_quantum_waits_for_its_deficit_not_for_ever() -> None:
    fair = FairQueue(quantum=100)
    fair.put(_delivery(1, "big", 350))
    fair.put(_delivery(2, "small", 10))
    assert [d.n for d in fair.take(max_messages=10, max_bytes=10**6)] == [2, 1]


def test_the_gateway_is_the_topics_gateway_level_whatever_site_it_names() -> None:
    assert gateway_of("water/north/gw-ps07/plc1") == "gw-ps07"
    assert gateway_of("water/other-site/gw-ps07/events") == "gw-ps07"
    assert gateway_of("odd") == "odd"
