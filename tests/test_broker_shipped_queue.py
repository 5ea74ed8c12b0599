"""The shipped broker config (deploy/mosquitto/edge-agent.conf, only paths and port changed) keeps
everything published for the central ingest while the ingest is away.

Mosquitto's default `max_queued_messages` (1,000) drops the rest for a persistent session without
a word to the publisher, which already has its PUBACK and has let the rows go: an ingest stopped
for an upgrade lost all but the first thousand messages of a fleet's data.
"""

from __future__ import annotations

import pytest

from tests.support.pki import Pki, TlsClient
from tests.support.uplink import GATEWAY, SITE

PUBLISHED = 3_000  # three times Mosquitto's default queue


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_the_ingest_gets_every_message_published_while_it_was_away(pki: Pki) -> None:
    gateway = pki.device("queue", GATEWAY, "SER-Q1", SITE)
    topic = f"water/{SITE}/{GATEWAY}/plc1"
    with pki.broker() as broker:
        ingest = pki.subscriber(broker, "water/+/+/+", session="centre").start()
        ingest.stop()  # away: its persistent session stays with the broker
        publisher = TlsClient(broker, gateway.cert_file, gateway.key_file, pki.ca_file)
        refused = [n for n in range(PUBLISHED) if publisher.publish(topic, b"%d" % n) != 0]
        publisher.close()
        assert refused == []
        ingest = pki.subscriber(broker, "water/+/+/+", session="centre").start()
        try:
            got = ingest.wait_for(PUBLISHED, timeout=60, topic=topic)
        finally:
            ingest.stop()
    assert [int(m.payload) for m in got] == list(range(PUBLISHED))
