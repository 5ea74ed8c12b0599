"""A broker that refuses the gateway's certificate says so in a TLS alert: the uplink's error and
`edge-agent status` carry it (revoked, another CA), so a field technician can tell a revoked
gateway from a network fault. Against a real Mosquitto run from the shipped config, with a CRL.

With TLS 1.3 the alert reaches the client after its handshake, at the first read or write, and
paho reported it as "connection lost: Unspecified error"; the `cert` line said `valid`."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

from tests.support.pki import Pki
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from tests.test_status_document import realistic_document
from water_edge.agent.identity_keeper import CertificateHealth
from water_edge.agent.uplink.config import TlsConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.transport import Connack, ConnectOptions, Reason, Will
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.provisioning.identity import DeviceIdentity

REVOKED = (
    "the broker refused this gateway's certificate: revoked (TLS alert certificate_revoked); the CA "
    "revoked it"
)


class Heard:
    """A transport listener that keeps how the connection ended."""

    def __init__(self) -> None:
        self.connack: Connack | None = None
        self.closed = asyncio.Event()
        self.reason = ""

    def on_connack(self, connack: Connack) -> None:
        self.connack = connack

    def on_puback(self, mid: int, reason: Reason) -> None:
        pass

    def on_message(self, topic: str, payload: bytes) -> None:
        pass

    def on_unsuback(self, mid: int) -> None:
        pass

    def on_closed(self, reason: str) -> None:
        self.reason = reason
        self.closed.set()


async def close_reason(host: str, port: int, tls: TlsConfig, client_id: str) -> str:
    """How one connection through the agent's transport ends (the uplink's error on no CONNACK)."""
    options = ConnectOptions(
        host=host,
        port=port,
        client_id=client_id,
        protocol="5",
        keepalive_s=30,
        connect_timeout_s=5.0,
        will=Will("test/will", b"gone"),
        max_inflight=8,
        tls=tls,
    )
    transport, heard = PahoTransport(), Heard()
    try:
        await transport.open(options, heard)
        await asyncio.wait_for(heard.closed.wait(), 5)
    finally:
        transport.abort()
    assert heard.connack is None
    return heard.reason


async def test_a_revoked_certificate_is_named_by_the_uplink_and_by_the_cert_line(
    tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    pki = Pki(tmp_path)
    identity = pki.device("gw", GATEWAY, "SER-R1", SITE)
    serial = identity.status().serial_number
    assert serial is not None
    pki.ca.revoke(serial)
    pki.refresh_crl()
    with pki.broker() as broker:
        # Whether the alert meets paho's read or its write of CONNECT is a race: every connection
        # must say the same.
        for i in range(8):
            reason = await close_reason(broker.host, broker.port, pki.tls(identity), f"{GATEWAY}-{i}")
            assert reason.startswith(REVOKED), reason
        await outbox.append(reading_batches(1))
        run = await start_uplink(mqtt_config(broker, tls=pki.tls(identity)), outbox)
        await run.states.wait(lambda s: s == "tls-error")
        health = run.uplink.health()
        await run.uplink.stop()
    assert health.last_error is not None
    assert health.last_error.startswith(REVOKED)
    assert health.published == 0
    assert f"tls-error  {health.broker}" in health.status_lines()[0]
    assert REVOKED in health.status_lines()[0]

    cert = CertificateHealth(
        state="valid",
        subject=f"OU={SITE},2.5.4.5=SER-R1,CN={GATEWAY}",
        not_before_ns=0,
        not_after_ns=4_102_444_800 * 10**9,
        renew_at_ns=None,
        renewals=0,
        failed_attempts=0,
        last_error=None,
    )
    document = dataclasses.replace(realistic_document(), uplink=health, certificate=cert)
    lines = [line for line in document.to_json()["agent"]["lines"] if line.startswith("cert")]
    assert lines == [
        f"cert     valid by date, refused by the broker: revoked  {GATEWAY}, site {SITE}  until "
        "2100-01-01 00:00:00 UTC  renewed 0x"
    ]
    # Once the broker takes it again (online clears the error), the line is the certificate's own.
    online = dataclasses.replace(document, uplink=dataclasses.replace(health, last_error=None))
    assert "cert     valid  " in "\n".join(online.to_json()["agent"]["lines"])


async def test_an_expired_certificate_and_one_of_another_ca_are_named_as_such(tmp_path: Path) -> None:
    pki, other = Pki(tmp_path / "ours"), Pki(tmp_path / "theirs")
    stranger = other.device("gw", GATEWAY, "SER-X1", SITE)
    tls = TlsConfig(ca_file=pki.ca_file, cert_file=stranger.cert_file, key_file=stranger.key_file)
    old = DeviceIdentity(tmp_path / "old")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = tmp_path / "expired.pem"
    csr = old.make_csr("SER-E1", GATEWAY, SITE)
    expired.write_bytes(pki.ca.sign_csr(csr, not_before=past, not_after=past + dt.timedelta(days=1)))
    with pki.broker() as broker:
        reason = await close_reason(broker.host, broker.port, tls, GATEWAY)
        outdated = TlsConfig(ca_file=pki.ca_file, cert_file=expired, key_file=old.pending / "key.pem")
        too_old = await close_reason(broker.host, broker.port, outdated, GATEWAY)
    assert reason.startswith(
        "the broker refused this gateway's certificate: issued by a CA the broker does not trust "
        "(TLS alert unknown_ca)"
    ), reason
    assert too_old.startswith(
        "the broker refused this gateway's certificate: expired or not yet valid (TLS alert "
        "certificate_expired); by the broker's clock"
    ), too_old
