"""Enrolment, both ways, end to end: offline with the CLI (CSR out, certificate in) and claim-based
over MQTT with the reference service; the enrolled identity then works with the real broker."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import stat
from pathlib import Path

import orjson
import pytest

from tests.support.pki import Pki
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.cli import main
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.provisioning.config import ClaimSection
from water_edge.provisioning.enrol import enrol_with_claim, renewal_section
from water_edge.provisioning.enrol_service import EnrolmentService
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity, device_serial, load_cert


def test_offline_enrolment_with_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, ident = tmp_path / "ca", tmp_path / "identity"
    assert main(["ca", "init", "--dir", str(ca_dir), "--name", "Utility CA"]) == 0
    assert (
        main(
            [
                "provision",
                "csr",
                "--identity-dir",
                str(ident),
                "--cn",
                GATEWAY,
                "--site",
                SITE,
                "--serial",
                "10000000abcdef01",
                "-o",
                str(tmp_path / "gw.csr"),
            ]
        )
        == 0
    )
    assert stat.S_IMODE((ident / "pending" / "key.pem").stat().st_mode) == 0o600
    assert b"PRIVATE" not in (tmp_path / "gw.csr").read_bytes()
    capsys.readouterr()
    assert (
        main(["ca", "sign", "--dir", str(ca_dir), str(tmp_path / "gw.csr"), "-o", str(tmp_path / "gw.pem")])
        == 0
    )
    # The operator sees the id and the site signed for: the site is what a site-bound ACL binds.
    signed = capsys.readouterr().out
    assert f"certificate for OU={SITE},2.5.4.5=10000000abcdef01,CN={GATEWAY} written to" in signed
    assert "edge-agent ca acl --dir CA" in signed

    # A certificate for some other key is refused: it would never work with ours.
    other = DeviceIdentity(tmp_path / "other")
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.open(ca_dir)
    (tmp_path / "wrong.pem").write_bytes(ca.sign_csr(other.make_csr("SER-9999", "gw9")))
    capsys.readouterr()
    assert (
        main(
            [
                "provision",
                "install",
                "--identity-dir",
                str(ident),
                str(tmp_path / "wrong.pem"),
                str(ca_dir / "ca.pem"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "not for this device's key" in err
    assert "Traceback" not in err
    # A certificate from an unrelated CA is refused too.
    CertificateAuthority.init(tmp_path / "foreign", "Foreign CA")
    assert (
        main(
            [
                "provision",
                "install",
                "--identity-dir",
                str(ident),
                str(tmp_path / "gw.pem"),
                str(tmp_path / "foreign" / "ca.pem"),
            ]
        )
        == 1
    )
    assert "does not contain the issuer" in capsys.readouterr().err

    assert (
        main(
            [
                "provision",
                "install",
                "--identity-dir",
                str(ident),
                str(tmp_path / "gw.pem"),
                str(ca_dir / "ca.pem"),
            ]
        )
        == 0
    )
    status = DeviceIdentity(ident).status()
    assert status.enrolled
    assert status.subject is not None
    assert "CN=gw1" in status.subject
    assert "10000000abcdef01" in status.subject
    assert stat.S_IMODE((ident / "current" / "key.pem").stat().st_mode) == 0o600
    assert not status.pending


def test_device_serial_sources(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nSerial\t\t: 10000000c0ffee42\n")
    machine = tmp_path / "machine-id"
    machine.write_text("4c4c4544003610458058b4c04f4e3432\n")
    assert device_serial(None, cpuinfo, machine) == "10000000c0ffee42"
    assert device_serial(None, tmp_path / "none", machine) == "4c4c4544003610458058b4c04f4e3432"
    assert device_serial("PLANT-7", cpuinfo, machine) == "PLANT-7"
    with pytest.raises(ProvisioningError, match="no device serial"):
        device_serial(None, tmp_path / "none", tmp_path / "none2")
    with pytest.raises(ProvisioningError, match="not 4-64"):
        device_serial("bad serial/with slash")


async def test_claim_enrolment_over_mqtt(
    tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    pki = Pki(tmp_path)
    claim_cert, claim_key = pki.client("claim")
    svc_cert, svc_key = pki.client("enrolment-service")
    # renew_after=0: this test renews the minute it enrolled (the protocol, not the renewal limit).
    service = EnrolmentService(pki.ca, allow={"SER-CLAIM-1": GATEWAY, "SER-CLAIM-2": "gw2"}, renew_after=0)
    with pki.broker() as broker:
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        try:
            assert service.wait_ready()
            claim = pki.claim(broker, claim_cert, claim_key)
            identity = DeviceIdentity(tmp_path / "device")
            await _in_thread(enrol_with_claim, identity, claim, "SER-CLAIM-1", GATEWAY, SITE)
            first = identity.status().serial_number
            # Renewal: a new key, asked for by the gateway connecting as itself (provision enrol --renew).
            renewal = renewal_section(identity, claim)
            await _in_thread(enrol_with_claim, identity, renewal, "SER-CLAIM-1", GATEWAY, SITE)
            assert identity.status().serial_number != first
            assert "CN=gw1" in str(identity.status().subject)
            # A serial not on the allow-list, and a second enrolment of the same serial, are refused.
            with pytest.raises(ProvisioningError, match="allow-list"):
                await _in_thread(
                    enrol_with_claim, DeviceIdentity(tmp_path / "x"), claim, "SER-UNKNOWN", "gw3", SITE
                )
            with pytest.raises(ProvisioningError, match="already enrolled"):
                await _in_thread(
                    enrol_with_claim, DeviceIdentity(tmp_path / "y"), claim, "SER-CLAIM-1", GATEWAY, SITE
                )
            # The allow-list binds a serial to its gateway id.
            with pytest.raises(ProvisioningError, match="expected 'gw2'"):
                await _in_thread(
                    enrol_with_claim, DeviceIdentity(tmp_path / "z"), claim, "SER-CLAIM-2", GATEWAY, SITE
                )
        finally:
            service.stop()
        assert service.counts == {"issued": 2, "refused": 3, "dropped": 0, "failed": 0}

        # The claim certificate itself cannot publish telemetry ...
        claim_tls = mqtt_config(broker, client_id="claimer")
        from water_edge.agent.uplink.config import TlsConfig

        with pki.subscriber(broker, f"water/{SITE}/{GATEWAY}/plc1") as sub:
            await outbox.append(reading_batches(2))
            bad = await start_uplink(
                claim_tls.model_copy(
                    update={"tls": TlsConfig(ca_file=pki.ca_file, cert_file=claim_cert, key_file=claim_key)}
                ),
                outbox,
            )
            await bad.states.wait(lambda s: s.startswith("offline"))
            await bad.uplink.stop()
            assert bad.uplink.health().published == 0
            # ... the enrolled identity can.
            run = await start_uplink(mqtt_config(broker, tls=pki.tls(identity)), outbox)
            msgs = await sub.wait_for_async(2)
            await run.uplink.stop()
    assert [m.json()["seq"] for m in msgs] == [1, 2]


async def _in_thread(fn: object, *args: object) -> None:
    import asyncio

    await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]


def test_ca_revoke_takes_the_serial_as_openssl_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("apt-get install openssl")
    from water_edge.provisioning.ca import CertificateAuthority

    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.init(ca_dir, "Utility CA")

    def openssl(cert: Path, *args: str) -> str:
        done = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    printed: list[str] = []
    # Serials are random: issue until openssl prints one with a leading zero (1 in 16 do).
    for n in range(400):
        cert = tmp_path / f"c{n}.pem"
        cert.write_bytes(ca.issue_client(f"svc-{n}", tmp_path / f"c{n}.key"))
        serial = openssl(cert, "-serial").strip().removeprefix("serial=")
        if n == 0:
            printed.append(openssl(cert, "-text").split("Serial Number:")[1].split()[0])  # 0a:1b:...
        elif serial.startswith("0"):
            printed.append(serial)
            break
    assert len(printed) == 2, "a serial printed with a leading zero"
    capsys.readouterr()
    for serial in printed:
        assert main(["ca", "revoke", "--dir", str(ca_dir), serial]) == 0, capsys.readouterr().err
    revoked = [i for i in CertificateAuthority.open(ca_dir).issued() if i.revoked_at]
    assert len(revoked) == len(printed)
    assert main(["ca", "revoke", "--dir", str(ca_dir), "not-hex"]) == 1
    assert "is not a certificate serial" in capsys.readouterr().err


def test_the_ca_never_issues_a_reserved_or_an_already_held_gateway_id(tmp_path: Path) -> None:
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.init(tmp_path / "ca", "Utility CA")

    def csr(name: str, cn: str, serial: str) -> bytes:
        return DeviceIdentity(tmp_path / name).make_csr(serial, cn, SITE)

    services = ("centre", "enrolment-service", "sparkplug-host", "sparkplug-host-b")
    for reserved in ("claim", "claim-batch7", *services):
        with pytest.raises(ProvisioningError, match="reserved"):
            ca.sign_csr(csr(reserved, reserved, "SER-R1"))
    ca.sign_csr(csr("a", "gw-01", "SER-A"))
    ca.sign_csr(csr("a2", "gw-01", "SER-A"))  # the same device renewing: fine
    with pytest.raises(ProvisioningError, match="already has a valid certificate"):
        ca.sign_csr(csr("b", "gw-01", "SER-B"))  # another device taking gw-01's name
    with pytest.raises(ProvisioningError, match="already has a valid certificate as 'gw-01'"):
        ca.sign_csr(csr("c", "gw-02", "SER-A"))  # gw-01's device under another name
    for item in ca.issued():
        ca.revoke(item.serial)
    ca.sign_csr(csr("d", "gw-01", "SER-B"))  # once revoked, the name can move


def test_a_stolen_gateway_that_renewed_itself_is_revoked_by_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever holds a gateway's key renews its certificate through the enrolment service (as the
    gateway does by itself); revoking the serial an inventory lists left the renewed one valid, and
    with it the renewals after. `ca revoke --name` ends them all."""
    from water_edge.provisioning.ca import CertificateAuthority

    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.init(ca_dir, "Utility CA")
    service = EnrolmentService(ca)
    # Stolen seven months into its year: its certificate may be renewed.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=210)
    csr = DeviceIdentity(tmp_path / "gw").make_csr("SER-1", "gw-01", SITE)
    listed = ca.sign_csr(csr, not_before=start, not_after=start + dt.timedelta(days=365))
    thief = DeviceIdentity(tmp_path / "thief")
    renewed = service.answer("gw-01", orjson.dumps({"csr": thief.make_csr("SER-1", "gw-01", SITE).decode()}))
    assert renewed["status"] == "ok"
    assert main(["ca", "revoke", "--dir", str(ca_dir), "--name", "gw-01"]) == 0
    out = capsys.readouterr().out
    for pem in (listed, renewed["cert"].encode()):
        assert format(load_cert(pem, "cert").serial_number, "x") in out
    assert ca.holder("gw-01") is None
    again = service.answer("gw-01", orjson.dumps({"csr": thief.make_csr("SER-1", "gw-01", SITE).decode()}))
    assert again["status"] == "refused"
    assert main(["ca", "revoke", "--dir", str(ca_dir), "--name", "gw-01"]) != 0  # nothing left to revoke


def test_a_gateway_renews_once_per_half_lifetime_and_a_lost_answer_is_answered_again(tmp_path: Path) -> None:
    """Whoever holds a gateway's key could have certificates signed in a loop; after `ca revoke
    --name` every one of them is a CRL entry that every broker loads. A renewal is signed once the
    newest certificate has lived half its life (the agent asks at two thirds); the same request
    again, whose answer was lost, gets the same certificate again and not a refusal."""
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.init(tmp_path / "ca", "Utility CA")
    service = EnrolmentService(ca)
    year = dt.timedelta(days=365)

    def enrolled(lived_days: int) -> None:
        for item in ca.issued():
            ca.revoke(item.serial)
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=lived_days)
        csr = DeviceIdentity(tmp_path / f"gw{lived_days}").make_csr("SER-1", "gw-01", SITE)
        ca.sign_csr(csr, not_before=start, not_after=start + year)

    def renew(name: str) -> dict[str, str]:
        csr = DeviceIdentity(tmp_path / name).make_csr("SER-1", "gw-01", SITE)
        reply: dict[str, str] = service.answer("gw-01", orjson.dumps({"csr": csr.decode()}))
        return reply

    enrolled(lived_days=120)  # a third of its life
    early = renew("early")
    assert early["status"] == "refused"
    assert early["reason"].startswith("renewal too early: the certificate ")
    assert " of 'gw-01' has lived 33% of its lifetime; renewals are signed from " in early["reason"]

    enrolled(lived_days=245)  # two thirds: when the agent asks
    first = renew("renew")
    assert first["status"] == "ok"
    assert renew("renew") == first  # the same key again: the same certificate, nothing new signed
    assert renew("another-key")["status"] == "refused"  # a second renewal at once
    assert len([i for i in ca.issued() if i.valid]) == 2  # the one it had and one renewal
    assert service.counts == {"issued": 2, "refused": 2, "dropped": 0, "failed": 0}


def test_a_refusal_of_another_claimers_unreadable_request_is_not_taken_as_ours(tmp_path: Path) -> None:
    """Every holder of the claim certificate reads the same reply topic. A request the service
    cannot read is refused without a serial; taking such a refusal as its own answer, every device
    enrolling at that moment failed, whenever one claim holder sent garbage."""
    import paho.mqtt.client as paho

    from water_edge.provisioning.enrol import _Exchange

    pki = Pki(tmp_path)
    claim_cert, claim_key = pki.client("claim")
    claim = ClaimSection(cert_file=claim_cert, key_file=claim_key, ca_file=pki.ca_file, host="localhost")
    exchange = _Exchange(claim, "SER-1", b"csr")
    service = EnrolmentService(pki.ca, allow={"SER-1": GATEWAY})

    def reply(answer: dict[str, object]) -> paho.MQTTMessage:
        msg = paho.MQTTMessage(topic=b"enrol/claim/cert")
        msg.payload = orjson.dumps(answer)
        return msg

    exchange.on_message(None, None, reply(service.answer("claim", b"garbage")))  # type: ignore[arg-type]
    assert not exchange.done.is_set()
    exchange.on_message(None, None, reply({"status": "refused", "serial": "SER-2", "reason": "x"}))  # type: ignore[arg-type]
    assert not exchange.done.is_set()
    exchange.on_message(None, None, reply({"status": "refused", "serial": "SER-1", "reason": "ours"}))  # type: ignore[arg-type]
    assert exchange.done.is_set()
    assert exchange.reply["reason"] == "ours"


AGENT_UID = 65534  # `nobody`, standing for edge-agent


@pytest.mark.skipif(os.geteuid() != 0, reason="what root may do")
def test_provisioning_as_root_refuses_the_agents_identity_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sudo edge-agent provision csr` made a root-owned key in the agent's state directory, which
    the agent then could not read; and root followed whatever the agent had placed there."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, AGENT_UID, AGENT_UID)
    ident = state / "identity"
    csr = ["provision", "csr", "--identity-dir", str(ident), "--cn", GATEWAY, "--serial", "10000000abcdef01"]
    assert main(csr) == 2
    err = capsys.readouterr().err
    assert f"run it as that user: sudo -u {pwd.getpwuid(AGENT_UID).pw_name} edge-agent provision csr" in err
    assert not ident.exists()
    assert main(["provision", "install", "--identity-dir", str(ident), "cert.pem", "ca.pem"]) == 2
    assert "sudo -u" in capsys.readouterr().err
    # An identity directory root made there before is refused too: the agent can swap it for a link.
    ident.mkdir(mode=0o700)
    assert main(csr) == 2
    assert not (ident / "pending").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="what root may do")
def test_provisioning_as_root_never_follows_a_link_at_the_identity_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc-edge-agent"  # a directory root's link would have it chmod and fill
    elsewhere.mkdir()
    elsewhere.chmod(0o755)  # whatever the umask the suite runs under
    ident = tmp_path / "identity"
    ident.symlink_to(elsewhere)
    argv = ["provision", "csr", "--identity-dir", str(ident), "--cn", GATEWAY, "--serial", "10000000abcdef01"]
    assert main(argv) == 2
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    assert not list(elsewhere.iterdir())


def test_a_first_enrolment_asked_again_with_the_same_key_gets_the_same_certificate(tmp_path: Path) -> None:
    """Gateways enrolling at once share the claim identity and take each other's connection; one
    whose answer was lost asks again with the same key and must get its certificate, not 'already
    enrolled'. Another key for that serial is still refused: once per serial ever."""
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.init(tmp_path / "ca", "Utility CA")
    service = EnrolmentService(ca, allow={"SER-1": "gw-01"})
    device = DeviceIdentity(tmp_path / "gw")
    request = orjson.dumps({"csr": device.make_csr("SER-1", "gw-01", SITE).decode()})
    first = service.answer("claim", request)
    assert first["status"] == "ok"
    assert service.answer("claim", request) == first
    other = DeviceIdentity(tmp_path / "other").make_csr("SER-1", "gw-01", SITE)
    again = service.answer("claim", orjson.dumps({"csr": other.decode()}))
    assert again["status"] == "refused"
    assert "already enrolled" in again["reason"]
    assert len(ca.issued()) == 1
