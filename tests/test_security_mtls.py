"""mTLS to a real Mosquitto run from the shipped config (deploy/mosquitto/) with certificates from our
own CA: who may connect, what each may publish, and a certificate renewal that loses nothing."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import ClientTls, Mosquitto
from tests.support.pki import Pki
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink.config import TlsConfig
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.provisioning.identity import DeviceIdentity

# The strictest form of the shipped ACL lists the streams a gateway may publish (the shipped one
# allows any stream under the gateway's own id: `water/+/%u/+`).
STRICT_ACL = """
user centre
topic read water/#
topic write water/+/+/cmd/+

pattern write water/site1/%u/status
pattern write water/site1/%u/events
pattern write water/site1/%u/plc1
pattern read water/site1/%u/cmd/#
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def device(pki: Pki, name: str, serial: str = "SER-0001") -> DeviceIdentity:
    return pki.device(name, GATEWAY, serial, SITE)


def publish_v5(broker: Mosquitto, pki: Pki, identity: DeviceIdentity, topic: str) -> Any:
    """Publish once at QoS 1 with MQTT 5 as `identity`; returns the PUBACK reason code."""
    done = threading.Event()
    reasons: list[Any] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=paho.MQTTv5)
    ClientTls(identity.ca_file, identity.cert_file, identity.key_file).apply(client)

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        reasons.append(reason)
        done.set()

    client.on_publish = on_publish
    client.on_connect = lambda c, *_a: c.publish(topic, b"x", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert done.wait(10), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


async def broker_log_with(broker: Mosquitto, text: str, within_s: float = 5.0) -> str:
    """The broker's log once it contains `text` (it is written a moment after the client sees the close)."""

    def containing() -> str:
        log = broker.log()
        return log if text in log else ""

    return await eventually(
        containing,
        within_s,
        every_s=0.05,
        what=lambda: f"{text!r} in the broker's log:\n{broker.log()}",
    )


async def test_device_certificate_connects_and_delivers(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    identity = device(pki, "dev-ok")
    with pki.broker() as broker, pki.subscriber(broker, f"water/{SITE}/{GATEWAY}/plc1") as sub:
        await outbox.append(reading_batches(3))
        run = await start_uplink(mqtt_config(broker, tls=pki.tls(identity)), outbox)
        msgs = await sub.wait_for_async(3)
        await run.uplink.stop()
    assert [m.json()["seq"] for m in msgs] == [1, 2, 3]


async def test_no_certificate_is_refused(pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink) -> None:
    with pki.broker() as broker:
        await outbox.append(reading_batches(1))
        run = await start_uplink(mqtt_config(broker, tls=TlsConfig(ca_file=pki.ca_file)), outbox)
        await run.states.wait(lambda s: s.startswith(("tls-error", "offline")))
        await run.uplink.stop()
    assert run.uplink.health().published == 0
    assert (await outbox.stats()).rows == 1


async def test_expired_certificate_is_refused(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    identity = DeviceIdentity(tmp_path / "id")
    csr = identity.make_csr("SER-0001", GATEWAY, SITE)  # the same device, an old certificate
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert = tmp_path / "expired.pem"
    cert.write_bytes(pki.ca.sign_csr(csr, not_before=past, not_after=past + dt.timedelta(days=1)))
    tls = TlsConfig(ca_file=pki.ca_file, cert_file=cert, key_file=identity.pending / "key.pem")
    with pki.broker() as broker:
        await outbox.append(reading_batches(1))
        run = await start_uplink(mqtt_config(broker, tls=tls), outbox)
        await run.states.wait(lambda s: s.startswith(("tls-error", "offline")))
        log = await broker_log_with(broker, "certificate verify failed")
        await run.uplink.stop()
    assert run.uplink.health().published == 0
    # Mosquitto 2.0 does not log why; the same CA, broker and CN with a valid date connect
    # (test_device_certificate_connects_and_delivers), so the validity is what failed.
    assert "certificate verify failed" in log


async def test_revoked_certificate_is_refused(
    tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    own = Pki(tmp_path)  # revocation changes the CRL: not on the shared CA
    identity = device(own, "dev-revoked", "SER-0003")
    status = identity.status()
    assert status.serial_number is not None
    with own.broker() as broker:
        await outbox.append(reading_batches(1))
        run = await start_uplink(mqtt_config(broker, tls=own.tls(identity)), outbox)
        await run.states.wait(lambda s: s == "online")  # accepted before the revocation
        await run.uplink.stop()
        own.ca.revoke(status.serial_number)
        own.refresh_crl()
        broker.reload()  # Mosquitto 2.0 reads its crlfile again on SIGHUP: no restart needed
        await outbox.append(reading_batches(1, start_ns=2 * 10**18))
        run = await start_uplink(mqtt_config(broker, tls=own.tls(identity)), outbox)
        await run.states.wait(lambda s: s.startswith(("tls-error", "offline")))
        log = await broker_log_with(broker, "certificate verify failed")
        await run.uplink.stop()
    assert run.uplink.health().published == 0
    assert (await outbox.stats()).rows >= 1
    assert "certificate verify failed" in log


async def test_publish_outside_the_acl_is_refused_and_counted(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    identity = device(pki, "dev-acl")
    with pki.broker(STRICT_ACL) as broker, pki.subscriber(broker, "water/#") as sub:
        # Another gateway's topic, with this gateway's certificate: not authorised (0x87).
        reason = publish_v5(broker, pki, identity, f"water/{SITE}/gw2/plc1")
        assert reason.is_failure
        assert reason.value == 0x87
        await outbox.append(reading_batches(2, streams=("plc1",)) + reading_batches(1, streams=("plc9",)))
        run = await start_uplink(mqtt_config(broker, tls=pki.tls(identity)), outbox)
        await sub.wait_for_async(2, topic=f"water/{SITE}/{GATEWAY}/plc1")
        await eventually(lambda: run.uplink.health().rejected >= 1)
        await run.uplink.stop()
        health = run.uplink.health()
        topics = {m.topic for m in sub.snapshot()}
    assert health.rejected >= 1
    assert f"water/{SITE}/{GATEWAY}/plc9" not in topics
    assert f"water/{SITE}/gw2/plc1" not in topics
    assert (await outbox.stats()).rows == 1  # the refused row is kept, not dropped


async def test_certificate_renewal_loses_no_data(
    tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    own = Pki(tmp_path)
    identity = device(own, "dev-renew")
    old_serial = identity.status().serial_number
    assert old_serial is not None
    broker = own.broker(persistence=True)  # the centre's queued messages survive the restart
    broker.start()
    try:
        with own.subscriber(broker, f"water/{SITE}/{GATEWAY}/plc1", session="centre-renew") as sub:
            await outbox.append(reading_batches(5))
            run = await start_uplink(mqtt_config(broker, tls=own.tls(identity)), outbox)
            await sub.wait_for_async(5)
            # Renew: a new key and CSR, signed, installed as one atomic swap of `current`.
            csr = identity.make_csr("SER-0001", GATEWAY, SITE)
            identity.install(own.ca.sign_csr(csr, days=30), own.ca_file.read_bytes())
            assert identity.status().serial_number != old_serial
            # The old certificate is revoked and the broker restarted with the new CRL: only the
            # renewed identity can get back in.
            own.ca.revoke(old_serial)
            own.refresh_crl()
            broker.stop()
            await outbox.append(reading_batches(5, start_ns=2 * 10**18))
            broker.start()
            msgs = await sub.wait_until_async(
                lambda ms: {m.json()["seq"] for m in ms} >= set(range(1, 11)), 20
            )
            await run.uplink.stop()
    finally:
        broker.close()
    assert {m.json()["seq"] for m in msgs} == set(range(1, 11))
    assert (await outbox.stats()).rows == 0
