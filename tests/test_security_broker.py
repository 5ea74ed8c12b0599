"""Attacks from the adversarial run against a real Mosquitto started from the shipped config
(deploy/mosquitto/edge-agent.conf and acl, only paths and port changed), with certificates from the
project's own CA: identity is what the certificate proves, not what a client says.

Finding 1: an enrolled gateway (or a claim holder) gets a certificate only for itself.
Finding 2: another gateway cannot take over a gateway's connection by choosing its client id.
Finding 3: a large command never reaches the gateway's memory.
Finding 10: the centre can send commands; a gateway reads only its own.
Docs walk 4, finding 3: a command sender publishes commands only, never on the bare `.../cmd`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.commands import public_b64
from tests.support.pki import Pki, TlsClient
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config
from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.remote.channel import CommandChannel
from water_edge.agent.remote.config import OperatorKey, SecuritySection
from water_edge.agent.remote.handlers import Targets, build_handlers
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.processor import CommandProcessor
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core import envelope
from water_edge.core.reading import Event
from water_edge.provisioning.enrol_service import EnrolmentService
from water_edge.provisioning.identity import DeviceIdentity

NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def client(pki: Pki, broker: Any, cn: str, identity: DeviceIdentity | None = None, **kw: Any) -> TlsClient:
    """An MQTT 5 client with `identity`'s certificate, or one made here for `cn`."""
    if identity is not None:
        return TlsClient(broker, identity.cert_file, identity.key_file, pki.ca_file, **kw)
    cert, key = pki.root / f"{cn}.pem", pki.root / f"{cn}.key"
    if not cert.exists():
        pki.client(cn)
    return TlsClient(broker, cert, key, pki.ca_file, **kw)


# ---------------------------------------------------------------- finding 1: enrolment


@pytest.fixture
def enrolment(tmp_path: Path) -> Iterator[tuple[Pki, Any, EnrolmentService]]:
    own = Pki(tmp_path)  # the CA's index changes: not the shared one
    service = EnrolmentService(
        own.ca,
        allow={"RTGW0009": "gw-09", "RTGW0002": "gw-02", "RTGW0099": "gw-02", "RTGW0007": "gw-07"},
        renew_after=0,  # these tests renew a minute-old certificate: whose, not when
    )
    svc_cert, svc_key = own.client("enrolment-service")
    with own.broker() as broker:
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=own.ca_file)
        assert service.wait_ready()
        try:
            yield own, broker, service
        finally:
            service.stop()


def csr_request(tmp: Path, name: str, cn: str, serial: str) -> bytes:
    """What a requester publishes: a CSR for `cn`/`serial` made with a fresh key."""
    csr = DeviceIdentity(tmp / name).make_csr(serial, cn, SITE)
    return orjson.dumps({"csr": csr.decode()})


def ask(requester: TlsClient, identity: str, payload: bytes, serial: str) -> dict[str, Any]:
    """Publish on enrol/<identity>/csr and wait for the service's answer about `serial`."""
    before = len(requester.messages)
    ack = requester.publish(f"enrol/{identity}/csr", payload)
    assert ack is not None
    assert not ack.is_failure, ack
    _topic, body = requester.wait_message(
        lambda m: requester.messages.index(m) >= before and orjson.loads(m[1]).get("serial") == serial
    )
    reply: dict[str, Any] = orjson.loads(body)
    return reply


def test_an_enrolled_gateway_cannot_get_a_certificate_for_another(
    enrolment: tuple[Pki, Any, EnrolmentService], tmp_path: Path
) -> None:
    pki, broker, service = enrolment
    gw02 = pki.device("gw02", "gw-02", "RTGW0002", SITE)
    forged = csr_request(tmp_path, "forged", "gw-09", "RTGW0009")

    # The attack as it was made: gw-02's certificate, client id = gw-09's serial, gw-09's topic.
    attacker = client(pki, broker, "gw-02", gw02, client_id="RTGW0009")
    ack = attacker.publish("enrol/RTGW0009/csr", forged)
    assert ack.value == NOT_AUTHORIZED
    # Mosquitto grants any subscription and filters on delivery: this one will only ever carry
    # the answers about gw-02 itself.
    attacker.subscribe("enrol/+/cert")
    # On the one enrolment topic it may use, only its own renewal is signed.
    reply = ask(attacker, "gw-02", forged, "RTGW0009")
    assert reply["status"] == "refused"
    assert "may renew only its own certificate" in reply["reason"]
    renewal = ask(attacker, "gw-02", csr_request(tmp_path, "renew", "gw-02", "RTGW0002"), "RTGW0002")
    assert renewal["status"] == "ok", renewal

    # A holder of the shared claim certificate: allow-listed serials only, once, never a name in use.
    claimer = client(pki, broker, "claim")
    claimer.subscribe("enrol/claim/cert")
    cases = {
        "RTGW0002": ("gw-02", "already enrolled"),  # gw-02's own serial again
        "RTGW0099": ("gw-02", "already has a valid certificate"),  # another serial for a name in use
        "RTGW0007": ("gw-09", "expected 'gw-07'"),  # a listed serial, someone else's name
        "RTGW0666": ("gw-66", "not on the enrolment allow-list"),
    }
    for serial, (cn, why) in cases.items():
        reply = ask(claimer, "claim", csr_request(tmp_path, serial, cn, serial), serial)
        assert reply["status"] == "refused", serial
        assert why in reply["reason"], reply
    assert claimer.publish(f"water/{SITE}/claim/plc1", b"{}").value == NOT_AUTHORIZED
    assert claimer.publish("enrol/gw-02/csr", forged).value == NOT_AUTHORIZED
    claimer.close()

    # The real gw-09 is not locked out: it enrols with the claim certificate and can publish.
    from water_edge.provisioning.enrol import enrol_with_claim

    section = pki.claim(broker, pki.root / "claim.pem", pki.root / "claim.key")
    gw09 = DeviceIdentity(tmp_path / "gw09")
    enrol_with_claim(gw09, section, "RTGW0009", "gw-09", SITE)
    assert "CN=gw-09" in str(gw09.status().subject)
    real = client(pki, broker, "gw-09", gw09)
    assert not real.publish(f"water/{SITE}/gw-09/plc1", b"{}").is_failure
    real.close()
    assert service.counts["issued"] == 2  # gw-02's renewal and gw-09; every forgery refused
    assert {topic for topic, _ in attacker.messages} == {"enrol/gw-02/cert"}
    attacker.close()


# ---------------------------------------------------------------- finding 2: session takeover


async def test_another_gateway_cannot_take_over_a_gateways_connection(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    victim = pki.device("victim", GATEWAY, "SER-V1", SITE)
    other = pki.device("other", "gw-02", "SER-O2", SITE)
    with pki.broker() as broker, pki.subscriber(broker, f"water/{SITE}/{GATEWAY}/status") as centre:
        config = mqtt_config(broker, tls=pki.tls(victim))
        run = await start_uplink(config, outbox)
        await run.states.wait(lambda s: s == "online")
        await centre.wait_until_async(lambda ms: any(m.json().get("state") == "online" for m in ms))
        seen = len(centre.snapshot())
        for client_id in (config.effective_client_id(SITE, GATEWAY), GATEWAY) * 3:
            thief = client(pki, broker, "gw-02", other, client_id=client_id)
            thief.close()
        # The takeovers are over when the broker logged them; the victim must not have noticed.
        await eventually(lambda: broker.log().count("as gw-02 (") >= 6, 10, "six connections as gw-02")
        health = run.uplink.health()
        await run.uplink.stop()
    assert health.state == "online"
    assert health.reconnects == 0
    assert f"Client {GATEWAY} already connected" not in broker.log()
    new = [m.json().get("state") for m in centre.snapshot()[seen:]]
    assert "offline" not in new[:-1], "no Will published while the victim was connected"


# ---------------------------------------------------------------- finding 3: large commands


class Answers:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


async def test_a_large_command_never_reaches_the_gateway(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    gw = pki.device("large", GATEWAY, "SER-V1", SITE)
    security = SecuritySection(max_command_bytes=16 * 1024)
    audit = AuditLog(tmp_path / "audit.log")
    nonces = NonceStore(tmp_path / "nonces.sqlite")
    processor = CommandProcessor(
        security, site=SITE, gateway=GATEWAY, nonces=nonces, audit=audit, handlers=build_handlers(Targets())
    )
    answers = Answers()
    channel = CommandChannel(processor, answers)
    cmd = f"water/{SITE}/{GATEWAY}/cmd/read_now"
    with pki.broker() as broker:
        run = await start_uplink(mqtt_config(broker, tls=pki.tls(gw)), outbox, on_command=channel)
        await run.states.wait(lambda s: s == "online")
        inbox = run.uplink.commands
        assert inbox is not None
        centre = client(pki, broker, "centre")
        # Over the command limit but under the packet size the agent announced: refused, answered.
        centre.publish(cmd, b"x" * (20 * 1024))
        await eventually(lambda: len(answers.events) == 1, 10, "the too_large answer")
        assert answers.events[0].detail["reason"].startswith("too_large: 20480 bytes")
        # Over the agent's Maximum Packet Size: the broker drops it for the gateway.
        ack = centre.publish(cmd, b"x" * (200 * 1024))
        assert ack is not None
        await eventually(lambda: "Dropping too large outgoing PUBLISH" in broker.log(), 10, "the drop")
        # Over the broker's max_packet_size: the sender is disconnected, nothing is forwarded.
        assert centre.publish(cmd, b"x" * (2 * 2**20)) is None
        await eventually(lambda: "disconnected due to oversize packet" in broker.log(), 10, "the refusal")
        centre.close()
        # The gateway saw only the first one, and is still online, still taking commands.
        assert inbox.stats().received == 1
        health = run.uplink.health()
        await run.uplink.stop()
    assert (health.state, health.reconnects) == ("online", 0)
    audit.close()
    nonces.close()


# ---------------------------------------------------------------- finding 10: who may command whom


def test_the_centre_commands_and_a_gateway_reads_only_its_own(pki: Pki) -> None:
    gw1 = pki.device("acl1", GATEWAY, "SER-V1", SITE)
    gw2 = pki.device("acl2", "gw-02", "SER-O2", SITE)
    with pki.broker() as broker:
        own = client(pki, broker, GATEWAY, gw1)
        assert own.subscribe(f"water/{SITE}/{GATEWAY}/cmd/#").value == 1
        centre = client(pki, broker, "centre")
        assert not centre.publish(f"water/{SITE}/{GATEWAY}/cmd/read_now", b"{}").is_failure
        own.wait_message(lambda m: m[0].endswith("/cmd/read_now"))
        # Commands only: the bare `.../cmd` is a data topic to the ingest (`water/+/+/+`).
        assert centre.publish(f"water/{SITE}/{GATEWAY}/cmd", b"{}").value == NOT_AUTHORIZED
        intruder = client(pki, broker, "gw-02", gw2)
        assert intruder.publish(f"water/{SITE}/{GATEWAY}/cmd/restart", b"{}").value == NOT_AUTHORIZED
        assert intruder.publish(f"water/{SITE}/{GATEWAY}/plc1", b"{}").value == NOT_AUTHORIZED
        assert not intruder.publish(f"water/{SITE}/gw-02/plc1", b"{}").is_failure
        # Subscribing to another gateway's commands is granted but delivers nothing.
        intruder.subscribe(f"water/{SITE}/+/cmd/#")
        intruder.subscribe("#")
        centre.publish(f"water/{SITE}/{GATEWAY}/cmd/config_update", b"{}")
        own.wait_message(lambda m: m[0].endswith("/cmd/config_update"))
        centre.publish(f"water/{SITE}/gw-02/cmd/read_now", b"{}")
        intruder.wait_message(lambda m: m[0] == f"water/{SITE}/gw-02/cmd/read_now")
        for c in (own, centre, intruder):
            c.close()
    assert not [m for m in own.messages if m[0].endswith("/cmd/restart")]
    assert {m[0] for m in intruder.messages} == {f"water/{SITE}/gw-02/cmd/read_now"}


async def test_a_command_sender_cannot_publish_gateway_data_on_the_bare_command_topic(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    """Docs walk 4, finding 3: `topic write water/+/+/cmd/#` also matched `water/<site>/<gw>/cmd`
    itself (`#` matches zero levels), which the ingest (`water/+/+/+`) stored as the gateway's
    stream `cmd`: the centre's certificate could plant readings for any gateway. The shipped ACL
    grants `cmd/+`, the one level the agent takes a command from; signed commands still arrive."""
    gw = pki.device("bare", GATEWAY, "SER-V1", SITE)
    key = Ed25519PrivateKey.generate()
    security = SecuritySection(
        operators=[OperatorKey(name="ops", public_key=public_b64(key), commands=["read_now"])]
    )
    reads: list[Any] = []

    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        reads.append(devices)
        return {"read": len(reads)}

    audit = AuditLog(tmp_path / "audit.log")
    nonces = NonceStore(tmp_path / "nonces.sqlite")
    processor = CommandProcessor(
        security,
        site=SITE,
        gateway=GATEWAY,
        nonces=nonces,
        audit=audit,
        handlers=build_handlers(Targets(read_now=read_now)),
    )
    answers = Answers()
    base = f"water/{SITE}/{GATEWAY}"
    forged = orjson.dumps(
        {"v": 2, "stream": "cmd", "seq": 1, "site": SITE, "gateway": GATEWAY, "readings": []}
    )
    with pki.broker() as broker:
        run = await start_uplink(
            mqtt_config(broker, tls=pki.tls(gw)), outbox, on_command=CommandChannel(processor, answers)
        )
        await run.states.wait(lambda s: s == "online")
        centre = client(pki, broker, "centre")
        assert centre.subscribe("water/+/+/+").value == 1  # the ingest's default subscription
        assert centre.publish(f"{base}/cmd", forged).value == NOT_AUTHORIZED
        signed = envelope.sign(key, "ops", "read_now", f"{SITE}/{GATEWAY}", command_id="c-1")
        assert not centre.publish(f"{base}/cmd/read_now", signed).is_failure
        await eventually(lambda: len(answers.events) == 1, 10, "the command's answer")
        inbox = run.uplink.commands
        assert inbox is not None
        received = inbox.stats().received
        await run.uplink.stop()
        centre.close()
    assert answers.events[0].detail["status"] == "ok"
    assert answers.events[0].detail["id"] == "c-1"
    assert reads == [None]
    assert received == 1
    assert f"{base}/cmd" not in {topic for topic, _ in centre.messages}
    audit.close()
    nonces.close()
