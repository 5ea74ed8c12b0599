"""The certificate's life without a site visit, against the reference enrolment service and the
shipped Mosquitto config: a gateway with only a claim certificate enrols by itself at first boot
(buffering readings until it can send them, none lost), renews its short-lived certificate before
it expires and uses the new one on its next connection without a restart, and raises an alarm when
renewals fail and the certificate runs out."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import running_agent
from tests.support.pki import Pki
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE
from water_edge.provisioning.enrol_service import EnrolmentService

pytestmark = pytest.mark.slow

SERIAL = "SER-FIRST-BOOT-1"
LIFETIME_S = 20  # slack for a loaded machine: 12 s once ran out between a reconnect and the alarm


def _events(sub: Any, kind: str) -> list[dict[str, Any]]:
    topic = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/events"
    return [e for m in sub.snapshot() if m.topic == topic for e in m.json()["events"] if e["kind"] == kind]


async def test_first_boot_enrolment_renewal_and_the_expiry_alarm(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    svc_cert, svc_key = pki.client("enrolment-service")
    service = EnrolmentService(
        pki.ca, allow={SERIAL: AGENT_GATEWAY}, lifetime=dt.timedelta(seconds=LIFETIME_S)
    )
    # Persistence and a persistent session: the centre misses nothing while the broker restarts.
    with pki.broker(persistence=True) as broker:
        config = pki.write_enrolling_agent_config(
            tmp_path, broker, SERIAL, poll_interval_ms=100, at_fraction=0.4, alarm_fraction=0.7
        )
        topic = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/#"
        with pki.subscriber(broker, topic, session="centre-test") as sub, running_agent(config) as agent:
            # First boot, the enrolment service not up yet: the agent keeps trying and buffers.
            status = await asyncio.to_thread(
                agent.wait_status,
                lambda s: (
                    s["certificate"]["failed_attempts"] >= 1 and s["pipeline"]["committed_readings"] >= 10
                ),
            )
            assert status["certificate"]["state"] == "enrolling"
            assert status["uplink"]["state"] == "idle"
            service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
            try:
                assert service.wait_ready()
                status = await asyncio.to_thread(
                    agent.wait_status, lambda s: s["uplink"]["state"] == "online", 30
                )
                first = status["certificate"]
                assert first["state"] in ("valid", "renewing")
                assert f"CN={AGENT_GATEWAY}" in first["subject"]
                # Renewed before it expires (at 40 % of its 20 s) ...
                status = await asyncio.to_thread(
                    agent.wait_status, lambda s: s["certificate"]["renewals"] >= 1, 30
                )
                assert status["certificate"]["not_after_ns"] > first["not_after_ns"]
                # ... so once the first one has expired, a new connection still works: the broker
                # drops everyone, the agent reconnects with the certificate it has now.
                await asyncio.sleep(
                    max(0.0, (first["not_after_ns"] / 1e9) - dt.datetime.now(dt.UTC).timestamp())
                )  # stimulus: wait out the first certificate
                broker.stop()
                broker.start()
                before = status["uplink"]["reconnects"]
                status = await asyncio.to_thread(
                    agent.wait_status,
                    lambda s: s["uplink"]["state"] == "online" and s["uplink"]["reconnects"] > before,
                    30,
                )
                assert status["agent"]["pid"] == agent.process.pid  # no restart
            finally:
                service.stop()
            # No enrolment service any more: renewals fail, and the certificate runs out.
            status = await asyncio.to_thread(
                agent.wait_status, lambda s: s["certificate"]["state"] in ("expiring", "expired"), 30
            )
            assert any("device certificate" in a for a in status["alarms"])
            await asyncio.to_thread(sub.wait_until, lambda _m: bool(_events(sub, "certificate_expiring")), 15)
            assert _events(sub, "certificate_enrolled")
            assert _events(sub, "certificate_renewed")
            agent.stop()

    # Nothing committed was lost between the first reading and the enrolment: seqs 1..n, no gap.
    seqs = sorted({m.json()["seq"] for m in sub.snapshot() if m.topic.endswith("/plc")})
    assert seqs[0] == 1
    assert seqs == list(range(1, seqs[-1] + 1))


def test_status_names_the_gateway_and_site_the_certificate_is_for() -> None:
    # A technician checks at a glance which name and site the broker knows this gateway by (a
    # site-bound ACL grants it that site's topics only).
    from water_edge.agent.identity_keeper import CertificateHealth

    def line(subject: str | None) -> str:
        health = CertificateHealth("valid", subject, 0, 1_900_000_000 * 10**9, None, 0, 0, None)
        (text,) = health.status_lines()
        return text

    assert line("OU=north,2.5.4.5=RTGW0009,CN=gw-09") == (
        "cert     valid  gw-09, site north  until 2030-03-17 17:46:40 UTC  renewed 0x"
    )
    assert line("CN=gw-09") == "cert     valid  gw-09  until 2030-03-17 17:46:40 UTC  renewed 0x"
    assert line(None) == "cert     valid  until 2030-03-17 17:46:40 UTC  renewed 0x"
