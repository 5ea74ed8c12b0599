"""A gateway renews its certificate by itself, however it was enrolled, and a renewal due when the
agent starts never costs the gateway its connection.

Against the shipped Mosquitto config (a certificate's CN is the client id) and the reference
enrolment service: a gateway enrolled offline (`provision csr` / `ca sign` / `provision install`,
no claim certificate) shows when it renews and renews over its uplink's connection; by hand,
`provision enrol --renew` renews it through the uplink's broker. A renewal already due at start
waits for the uplink's connection instead of connecting beside it as the gateway: the two
connections would close each other, the broker would publish the Last Will (`offline`, `lost`) and
the gateway would fail over. A certificate the agent cannot renew is named by `check-config`."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.support.agent_proc import running_agent
from tests.support.pki import Pki
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, write_agent_config
from water_edge.agent.cli import main
from water_edge.provisioning.identity import DeviceIdentity

SERIAL = "SER-OFFLINE-1"
RENEWAL = {"at_fraction": 0.00001, "alarm_fraction": 0.9, "retry_min_s": 0.5, "retry_max_s": 1,
           "min_interval_s": 1}  # fmt: skip


def _offline_gateway(pki: Pki, tmp_path: Path, broker: Any, claim: bool) -> tuple[Path, DeviceIdentity]:
    """A gateway enrolled offline (a 2-day certificate), its renewal due ~2 s after the install;
    with `claim`, a claim section on `broker` as well."""
    identity = pki.device("state/identity", AGENT_GATEWAY, SERIAL, AGENT_SITE)
    section: dict[str, Any] = {"serial": SERIAL, "renewal": RENEWAL}
    if claim:
        claim_cert, claim_key = pki.client("claim")
        section["claim"] = {
            "cert_file": str(claim_cert), "key_file": str(claim_key), "ca_file": str(pki.ca_file),
            "host": broker.host, "port": broker.port, "timeout_s": 3,
        }  # fmt: skip
    config = write_agent_config(
        tmp_path,
        broker_port=broker.port,
        devices=[{"name": "plc", "kind": "fake", "poll_interval_ms": 200, "tags": [{"name": "flow"}]}],
        uplink={"tls": {"ca_file": str(identity.ca_file), "cert_file": str(identity.cert_file),
                        "key_file": str(identity.key_file)}},
        security={"identity": section},
    )  # fmt: skip
    return config, identity


def _not_after(identity: DeviceIdentity) -> dt.datetime:
    return x509.load_pem_x509_certificate(identity.cert_file.read_bytes()).not_valid_after_utc


@pytest.mark.slow
@pytest.mark.parametrize("claim", [False, True], ids=["enrolled-offline", "with-claim-section"])
async def test_a_renewal_due_at_start_goes_over_the_uplink_and_keeps_it_up(
    tmp_path: Path, claim: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from water_edge.provisioning.enrol_service import EnrolmentService

    pki = Pki(tmp_path)
    svc_cert, svc_key = pki.client("enrolment-service")
    service = EnrolmentService(pki.ca, allow={}, lifetime=dt.timedelta(days=365), renew_after=0.0)
    status_topic = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/status"
    with pki.broker() as broker:
        config, identity = _offline_gateway(pki, tmp_path, broker, claim)
        first_until = _not_after(identity)
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        try:
            assert service.wait_ready()
            await asyncio.sleep(2.5)  # stimulus: the gateway was off while its renewal fell due
            with pki.subscriber(broker, status_topic) as sub, running_agent(config) as agent:
                status = await asyncio.to_thread(
                    agent.wait_status, lambda s: s["certificate"]["renewals"] >= 1, 30
                )
                await asyncio.sleep(1.5)  # a Will or a reconnection would show at once
                status = agent.status()
                uplink = status["uplink"]
                assert uplink["state"] == "online"
                assert uplink["connections"] == 1, uplink
                assert uplink["taken_over"] == 0, uplink
                states = [m.json().get("state") for m in sub.snapshot() if m.topic == status_topic]
                assert "offline" not in states, states
                cert = status["certificate"]
                # The new certificate lives a year, and status says when it is renewed next.
                assert cert["not_after_ns"] / 1e9 > first_until.timestamp() + 86400
                assert cert["renew_at_ns"] is not None
                assert "renews " in "\n".join(cert["lines"])
                agent.stop()
            # By hand, with the agent stopped: renewed through the uplink's broker, no claim needed.
            before = _not_after(identity)
            await asyncio.sleep(1.1)  # a later notAfter
            code = await asyncio.to_thread(main, ["provision", "enrol", "--renew", "-c", str(config)])
            assert code == 0, capsys.readouterr().err
            assert "renewed" in capsys.readouterr().out
            assert _not_after(identity) > before
        finally:
            service.stop()


def test_check_config_names_a_certificate_the_agent_will_not_renew(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    identity = pki.device("state/identity", AGENT_GATEWAY, SERIAL, AGENT_SITE)
    until = _not_after(identity).strftime("%Y-%m-%d %H:%M:%S UTC")

    def check(tls: dict[str, str], renewal: dict[str, Any] | None = None) -> str:
        security = {"identity": {"serial": SERIAL, "renewal": renewal or {}}}
        config = write_agent_config(tmp_path, broker_port=29501, uplink={"tls": tls}, security=security)
        assert main(["check-config", str(config)]) == 0
        return capsys.readouterr().err

    own = {"ca_file": str(identity.ca_file), "cert_file": str(identity.cert_file),
           "key_file": str(identity.key_file)}  # fmt: skip
    # The identity's certificate on the uplink: renewed over the uplink's connection.
    assert "renewed" not in check(own)
    # Renewal switched off: the certificate runs out, and the date is named.
    err = check(own, {"enabled": False})
    assert "will not be renewed" in err
    assert until in err
    # A certificate beside the identity and no claim section: nothing renews it.
    cert, key = pki.client(AGENT_GATEWAY)
    err = check({"ca_file": str(pki.ca_file), "cert_file": str(cert), "key_file": str(key)})
    assert "will not be renewed" in err
    assert "[security.identity.claim]" in err
