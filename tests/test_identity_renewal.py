"""Renewal leaves the running gateway alone, and never runs in a loop.

Against the shipped Mosquitto config, where a certificate's CN is the client id: a renewal the
agent makes on a connection of its own closes the uplink's (same client id) and the broker
publishes the gateway's Last Will, `offline`/`lost`, to the centre. The agent renews over the
uplink's own connection instead, refused or not; a manual `provision enrol --renew` while the
agent runs says so and does not connect. And a renewal is never due the moment a certificate is
installed, whatever `at_fraction` and the CA's 5-minute backdating of notBefore say."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import running_agent
from tests.support.pki import Pki
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE
from water_edge.agent.cli import main
from water_edge.agent.identity_keeper import IdentityKeeper
from water_edge.core.reading import Event
from water_edge.provisioning.ca import CertificateAuthority
from water_edge.provisioning.config import ClaimSection, IdentitySection, RenewalSection
from water_edge.provisioning.identity import DeviceIdentity

SERIAL = "SER-RENEW-1"


def _states(sub: Any) -> list[str]:
    topic = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/status"
    return [m.json().get("state") for m in sub.snapshot() if m.topic == topic]


@pytest.mark.slow
async def test_renewals_refused_or_signed_never_drop_the_uplink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from water_edge.provisioning.enrol_service import EnrolmentService

    pki = Pki(tmp_path)
    svc_cert, svc_key = pki.client("enrolment-service")
    # The service signs a renewal only at 90 % of the 60 s lifetime; the agent asks from 3 % (1.8 s
    # after the install).
    service = EnrolmentService(
        pki.ca, allow={SERIAL: AGENT_GATEWAY}, lifetime=dt.timedelta(seconds=60), renew_after=0.9
    )
    with pki.broker() as broker:
        config = pki.write_enrolling_agent_config(
            tmp_path, broker, SERIAL, poll_interval_ms=200, at_fraction=0.03, alarm_fraction=0.95
        )
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        status_topic = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/status"
        try:
            assert service.wait_ready()
            with pki.subscriber(broker, status_topic) as sub, running_agent(config) as agent:
                # Enrolled, online, then renewals refused as too early, again and again.
                status = await asyncio.to_thread(
                    agent.wait_status,
                    lambda s: (
                        s["certificate"]["failed_attempts"] >= 3
                        and "too early" in (s["certificate"]["last_error"] or "")
                    ),
                    40,
                )
                uplink = status["uplink"]
                assert uplink["state"] == "online"
                assert uplink["connections"] == 1, uplink
                assert uplink["taken_over"] == 0
                assert "offline" not in _states(sub)

                # A renewal by hand while the agent runs would close the agent's connection: it
                # says so and does not connect.
                code = await asyncio.to_thread(main, ["provision", "enrol", "--renew", "-c", str(config)])
                assert code != 0
                err = capsys.readouterr().err
                assert "agent is running" in err
                assert "--while-agent-runs" in err

                # Now signed: the new certificate arrives over the same connection.
                service.renew_after = 0.0
                status = await asyncio.to_thread(
                    agent.wait_status, lambda s: s["certificate"]["renewals"] >= 1, 30
                )
                await asyncio.sleep(1.0)  # a Will would be published at once
                status = agent.status()
                assert status["uplink"]["connections"] == 1, status["uplink"]
                assert status["uplink"]["taken_over"] == 0
                assert "offline" not in _states(sub), _states(sub)
                assert service.counts["issued"] >= 2  # the first certificate and a renewal
                agent.stop()
        finally:
            service.stop()


def _keeper(
    identity: DeviceIdentity, renewal: RenewalSection, claim: ClaimSection, **kwargs: Any
) -> IdentityKeeper:
    async def emit(_e: Event) -> None:
        return None

    section = IdentitySection(serial=SERIAL, claim=claim, renewal=renewal)
    return IdentityKeeper(section, identity, common_name="gw-01", site="north", emit=emit, **kwargs)


def test_a_renewal_is_never_due_as_soon_as_the_certificate_is_installed(tmp_path: Path) -> None:
    """The walkthrough's loop: a 1-day certificate (notBefore backdated 5 min by the CA) and
    at_fraction = 0.0008 (69 s) made every certificate due the moment it was installed."""
    ca = CertificateAuthority.init(tmp_path / "ca", "Test CA")
    identity = DeviceIdentity(tmp_path / "identity")
    csr = identity.make_csr(SERIAL, "gw-01", "north")
    identity.install(ca.sign_csr(csr, days=1), ca.cert_pem)
    claim = ClaimSection(
        cert_file=tmp_path / "claim.pem",
        key_file=tmp_path / "claim.key",
        ca_file=tmp_path / "ca.pem",
        host="h",
    )
    tiny = _keeper(identity, RenewalSection(at_fraction=0.0008), claim)
    due = tiny._due()
    assert due is not None
    # min_interval_s (1 h by default) after the install, not already past.
    assert 3500 < due <= 3600
    # The fraction counts from the install, not from the backdated notBefore: 69 s from now.
    quick = _keeper(identity, RenewalSection(at_fraction=0.0008, min_interval_s=1), claim)
    due = quick._due()
    assert due is not None
    assert 60 < due <= 70
    # 20 hours later the default 0.67 of the day has passed: due.
    later = _keeper(identity, RenewalSection(), claim, clock_ns=lambda: time.time_ns() + 20 * 3600 * 10**9)
    assert (later._due() or 1) <= 0


@pytest.mark.parametrize(
    ("renewal", "says"),
    [
        ({"at_fraction": 0.9, "alarm_fraction": 0.8}, "must be above at_fraction"),
        ({"retry_min_s": 100, "retry_max_s": 10}, "is below retry_min_s"),
        ({"min_interval_s": 0}, "min_interval_s"),
    ],
)
def test_renewal_values_that_cannot_work_are_refused(
    tmp_path: Path, renewal: dict[str, Any], says: str
) -> None:
    from water_edge.agent.config import load_config
    from water_edge.core.errors import ConfigError

    path = tmp_path / "a.toml"
    lines = "\n".join(f"{k} = {v}" for k, v in renewal.items())
    path.write_text(
        f'schema_version = 1\n[gateway]\nsite = "north"\nid = "gw-01"\nstate_dir = "{tmp_path}"\n'
        f'[uplink]\nhost = "127.0.0.1"\n[security.identity.renewal]\n{lines}\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert says in str(err.value)


def test_the_ca_bundle_enrolment_writes_is_expected_missing_with_a_claim(tmp_path: Path) -> None:
    """check-config and `run` warned `uplink.tls.ca_file = ".../identity/current/ca.pem": no such
    file` before the first enrolment, which writes it; a CA bundle elsewhere is still checked."""
    from water_edge.agent.config import load_config
    from water_edge.agent.config.files import file_problems

    state = tmp_path / "state"
    current = state / "identity" / "current"

    def problems(ca_file: Path) -> list[str]:
        path = tmp_path / "a.toml"
        path.write_text(
            f'schema_version = 1\n[gateway]\nsite = "north"\nid = "gw-01"\nstate_dir = "{state}"\n'
            f'[uplink]\nhost = "127.0.0.1"\n[uplink.tls]\nca_file = "{ca_file}"\n'
            f'cert_file = "{current / "cert.pem"}"\nkey_file = "{current / "key.pem"}"\n'
            f"[security.identity.claim]\n"
            f'cert_file = "{tmp_path / "claim.pem"}"\nkey_file = "{tmp_path / "claim.key"}"\n'
            f'ca_file = "{tmp_path / "ca.pem"}"\nhost = "127.0.0.1"\n'
        )
        return [p for p in file_problems(load_config(path)) if p.startswith("uplink.tls")]

    assert problems(current / "ca.pem") == []
    assert any("elsewhere.pem" in p for p in problems(tmp_path / "elsewhere.pem"))
