"""A claim enrolment takes the uplink's way out: a gateway whose only way out is the corporate HTTP
proxy (and, often, port 443 over WebSockets) must enrol through it, or it never gets a certificate
where it is installed. Against the shipped Mosquitto config, the reference enrolment service and a
real CONNECT proxy; the broker's name resolves only at the proxy, as on an OT network without DNS
for the outside, so a connection that does not go through the proxy cannot reach it at all."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import port_open
from tests.support.http_proxy import HttpProxy
from tests.support.pki import OUTSIDE_NAME, Pki, ShippedMosquitto
from tests.support.testing import AGENT_GATEWAY, free_port, wait_until, write_agent_config
from tests.support.uplink import GATEWAY, SITE
from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.core.http_proxy import Proxy
from water_edge.provisioning.config import ClaimSection
from water_edge.provisioning.enrol import ClaimRoute, enrol_with_claim
from water_edge.provisioning.enrol_service import EnrolmentService
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity

SERIAL = "SER-PROXY-1"


def _add_wss_listener(broker: ShippedMosquitto, pki: Pki, port: int) -> None:
    """The shipped listener's TLS settings on a WebSocket listener too, as docs/configuration.md
    tells a utility to add for gateways that get out on 443 only."""
    files = pki.broker_dir
    broker.config_path.write_text(
        broker.config_path.read_text()
        + f"\nlistener {port} 127.0.0.1\nprotocol websockets\n"
        + f"cafile {files}/ca.pem\ncertfile {files}/broker.pem\nkeyfile {files}/broker.key\n"
        + f"crlfile {files}/crl.pem\nrequire_certificate true\n"
        + "use_identity_as_username true\nuse_username_as_clientid true\n"
    )


@contextmanager
def _enrolment_site(tmp_path: Path, wss_port: int | None = None) -> Iterator[tuple[Pki, ShippedMosquitto]]:
    """The shipped broker (and its WebSocket listener on `wss_port`) with the enrolment service."""
    pki = Pki(tmp_path)
    svc_cert, svc_key = pki.client("enrolment-service")
    service = EnrolmentService(pki.ca, allow={SERIAL: GATEWAY, "SER-PROXY-2": AGENT_GATEWAY})
    broker = pki.broker()
    if wss_port is not None:
        _add_wss_listener(broker, pki, wss_port)
    with broker:
        if wss_port is not None:
            wait_until(partial(port_open, wss_port), 15, every_s=0.05, what=f"the wss listener on {wss_port}")
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        try:
            assert service.wait_ready()
            yield pki, broker
        finally:
            service.stop()


def _claim(pki: Pki, port: int) -> ClaimSection:
    cert, key = pki.client("claim")
    return ClaimSection(
        cert_file=cert, key_file=key, ca_file=pki.ca_file, host=OUTSIDE_NAME, port=port, timeout_s=20
    )


def _config_behind(proxy: HttpProxy, pki: Pki, broker: ShippedMosquitto, directory: Path) -> Path:
    """An agent that has only a claim certificate and gets out through `proxy` only (user gw17, its
    password in a file, as docs/configuration.md shows)."""
    (directory / "proxy.pass").write_text("s3cret\n")
    (directory / "proxy.pass").chmod(0o600)
    return pki.write_enrolling_agent_config(
        directory,
        broker,
        "SER-PROXY-2",
        poll_interval_ms=200,
        at_fraction=0.5,
        alarm_fraction=0.9,
        broker_host=OUTSIDE_NAME,
        uplink={
            "proxy": f"http://gw17@{proxy.host}:{proxy.port}",
            "proxy_password": {"file": str(directory / "proxy.pass")},
        },
    )


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_a_gateway_behind_an_authenticating_proxy_enrols_through_it(
    transport: Literal["tcp", "websockets"], tmp_path: Path
) -> None:
    wss = free_port() if transport == "websockets" else None
    with (
        _enrolment_site(tmp_path, wss) as (pki, broker),
        HttpProxy(credentials=("gw17", "s3cret"), names={OUTSIDE_NAME: "127.0.0.1"}) as proxy,
    ):
        port = broker.port if wss is None else wss
        route = ClaimRoute(transport=transport, proxy=Proxy(proxy.host, proxy.port, "gw17", "s3cret"))
        identity = DeviceIdentity(tmp_path / "device")
        enrol_with_claim(identity, _claim(pki, port), SERIAL, GATEWAY, SITE, route=route)
    assert f"CN={GATEWAY}" in str(identity.status().subject)
    # One tunnel, to the broker by the name only the proxy resolves, with the proxy's credentials.
    assert proxy.tunnels == [f"{OUTSIDE_NAME}:{port}"]
    token = base64.b64encode(b"gw17:s3cret").decode()
    assert [r.authorization for r in proxy.requests] == [f"Basic {token}"]
    # TLS ran end to end inside the tunnel (the WebSocket upgrade inside it): the proxy saw a
    # ClientHello, no MQTT and no claim certificate in the clear.
    (first,) = proxy.first_sent
    assert first[:1] == b"\x16"


def test_a_proxy_that_refuses_the_tunnel_is_named_with_its_words(tmp_path: Path) -> None:
    with _enrolment_site(tmp_path) as (pki, broker), HttpProxy(refuse=403) as proxy:
        route = ClaimRoute(proxy=Proxy(proxy.host, proxy.port))
        identity = DeviceIdentity(tmp_path / "device")
        with pytest.raises(ProvisioningError) as refused:
            enrol_with_claim(identity, _claim(pki, broker.port), SERIAL, GATEWAY, SITE, route=route)
    assert str(refused.value) == (
        f"cannot reach the enrolment broker {OUTSIDE_NAME}:{broker.port} through the proxy "
        f"{proxy.host}:{proxy.port}: the proxy refused the connection: 403 Forbidden; the proxy does "
        f"not allow a tunnel to {OUTSIDE_NAME}:{broker.port} (proxies often allow port 443 only)"
    )
    assert not identity.cert_file.exists()


def test_provision_enrol_takes_the_configs_proxy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edge-agent provision enrol -c agent.toml`, run by the installer on site, goes the agent's way."""
    with (
        _enrolment_site(tmp_path) as (pki, broker),
        HttpProxy(credentials=("gw17", "s3cret"), names={OUTSIDE_NAME: "127.0.0.1"}) as proxy,
    ):
        config = _config_behind(proxy, pki, broker, tmp_path)
        assert main(["provision", "enrol", "-c", str(config)]) == 0, capsys.readouterr().err
    assert "enrolled; certificate in" in capsys.readouterr().out
    assert proxy.tunnels == [f"{OUTSIDE_NAME}:{broker.port}"]


async def test_first_boot_enrolment_goes_through_the_uplinks_proxy_and_readings_follow(
    tmp_path: Path,
) -> None:
    with (
        _enrolment_site(tmp_path) as (pki, broker),
        HttpProxy(credentials=("gw17", "s3cret"), names={OUTSIDE_NAME: "127.0.0.1"}) as proxy,
    ):
        config = _config_behind(proxy, pki, broker, tmp_path)
        with running_agent(config) as agent:
            status = await asyncio.to_thread(
                agent.wait_status,
                lambda s: s["uplink"]["state"] == "online" and s["uplink"]["readings_acked"] > 0,
                60,
            )
            assert agent.stop() == 0
    assert f"CN={AGENT_GATEWAY}" in status["certificate"]["subject"]
    assert status["certificate"]["failed_attempts"] == 0
    # The enrolment's tunnel, then the uplink's: both to the name only the proxy knows.
    assert len(proxy.tunnels) >= 2
    assert set(proxy.tunnels) == {f"{OUTSIDE_NAME}:{broker.port}"}


@pytest.mark.parametrize("port", [None, 443])
def test_check_config_warns_of_a_claim_port_left_at_8883_over_websockets(
    tmp_path: Path, port: int | None
) -> None:
    claim: dict[str, object] = {
        "cert_file": "/etc/edge-agent/claim.pem",
        "key_file": "/etc/edge-agent/claim.key",
        "ca_file": "/etc/edge-agent/ca.pem",
        "host": OUTSIDE_NAME,
    }
    if port is not None:
        claim["port"] = port
    path = write_agent_config(
        tmp_path,
        broker_host=OUTSIDE_NAME,
        broker_port=443,
        uplink={"transport": "websockets"},
        security={"identity": {"claim": claim}},
    )
    warned = [w for w in load_config(path).warnings if "security.identity.claim.port" in w]
    if port is None:
        assert warned == [
            f"{path}: security.identity.claim.port: not given, so 8883, but the enrolment connection "
            "takes the uplink's transport = \"websockets\": give the port of the enrolment broker's "
            "WebSocket listener (often 443)"
        ]
    else:
        assert warned == []
