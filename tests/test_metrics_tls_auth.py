"""The Prometheus endpoint over HTTPS, with client certificates and basic authentication
(`[status.metrics_tls]`, `[status.metrics_auth]`; docs/status.md#who-may-scrape), against the real
`edge-agent run`: certificates from the project's own CA, scraped with Python's TLS client as
Prometheus scrapes (`scheme: https`, `tls_config`, `basic_auth`)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import shutil
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.support.agent_proc import AgentProcess, running_agent
from tests.support.testing import FAKE_DEVICE, free_port, wait_until, write_agent_config
from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.agent.remote.config_rights import changes_needing_rights
from water_edge.provisioning.ca import CertificateAuthority

PASSWORD = "s3cret-scrape"


@dataclass
class Scrapers:
    """A CA, the endpoint's certificate, and a scraper's client certificate."""

    ca_file: Path
    ca: CertificateAuthority
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    password_file: Path

    def issue_endpoint(self) -> int:
        """A new certificate for the endpoint, written over the old files; its serial."""
        pem = self.ca.issue_server("gw-01", ["127.0.0.1", "localhost"], self.key)
        self.cert.write_bytes(pem)
        return x509.load_pem_x509_certificate(pem).serial_number


def make_scrapers(root: Path) -> Scrapers:
    ca = CertificateAuthority.init(root / "ca", "plant IT CA")
    password = root / "metrics.password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    client_cert, client_key = root / "prometheus.pem", root / "prometheus.key"
    client_cert.write_bytes(ca.issue_client("prometheus", client_key))
    scrapers = Scrapers(
        root / "ca" / "ca.pem",
        ca,
        root / "metrics.pem",
        root / "metrics.key",
        client_cert,
        client_key,
        password,
    )
    scrapers.issue_endpoint()
    return scrapers


def secured(
    config: Path, address: str, s: Scrapers, *, client_ca: bool = True, auth: bool = True, names: str = ""
) -> Path:
    text = config.read_text(encoding="utf-8").replace("[status]\n", f'[status]\nmetrics = "{address}"\n', 1)
    text += f'\n[status.metrics_tls]\ncert_file = "{s.cert}"\nkey_file = "{s.key}"\n'
    if client_ca:
        text += f'client_ca_file = "{s.ca_file}"\n'
    if names:
        text += f"client_names = {names}\n"
    if auth:
        text += (
            f'\n[status.metrics_auth]\nusername = "prometheus"\npassword = {{ file = "{s.password_file}" }}\n'
        )
    config.write_text(text, encoding="utf-8")
    return config


def tls_client(
    s: Scrapers, *, certificate: bool = True, cert: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=s.ca_file)
    if certificate:
        context.load_cert_chain(*(cert or (s.client_cert, s.client_key)))
    return context


def scrape(
    port: int, context: ssl.SSLContext, user: str | None = "prometheus", password: str = PASSWORD
) -> tuple[int, dict[str, str], bytes, int]:
    """(status, headers, body, the endpoint certificate's serial) of one HTTPS scrape."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request("GET", "/metrics", headers=headers)
        der = conn.sock.getpeercert(binary_form=True)  # before the answer, which closes the socket
        assert der is not None
        response = conn.getresponse()
        serial = x509.load_der_x509_certificate(der).serial_number
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read(), serial
    finally:
        conn.close()


@pytest.fixture(scope="module")
def agent_and_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int, Scrapers]]:
    root = tmp_path_factory.mktemp("metrics-tls")
    s = make_scrapers(root)
    port = free_port()
    config = secured(write_agent_config(root, devices=FAKE_DEVICE), f"127.0.0.1:{port}", s)
    with running_agent(config) as agent:
        agent.wait_status(lambda st: st["drivers"][0]["state"] == "up", timeout=60)
        wait_until(lambda: _answers(port, s), 30, "the HTTPS metrics endpoint to answer")
        yield agent, port, s
        assert agent.stop() == 0
        assert "Traceback" not in agent.log()


def _answers(port: int, s: Scrapers) -> bool:
    try:
        return scrape(port, tls_client(s))[0] == 200
    except OSError:
        return False


def test_a_scraper_with_the_certificate_and_password_gets_the_metrics(
    agent_and_pki: tuple[AgentProcess, int, Scrapers],
) -> None:
    agent, port, s = agent_and_pki
    status, headers, body, _ = scrape(port, tls_client(s))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'edge_agent_device_up{device="fake-plc"' in body
    (listening,) = [line for line in agent.log().splitlines() if "status.metrics_listening" in line]
    assert "https" in listening


def test_without_a_client_certificate_the_handshake_is_refused(
    agent_and_pki: tuple[AgentProcess, int, Scrapers],
) -> None:
    _, port, s = agent_and_pki
    with pytest.raises((ssl.SSLError, ConnectionError)):
        scrape(port, tls_client(s, certificate=False))
    # Plain HTTP to the HTTPS port: no metrics in clear.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as plain:
        plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := plain.recv(65536):
                answer += chunk
    assert b"edge_agent" not in answer
    assert not answer.startswith(b"HTTP/1.1 200")


def test_wrong_or_missing_credentials_are_refused_counted_and_logged_without_the_password(
    agent_and_pki: tuple[AgentProcess, int, Scrapers],
) -> None:
    agent, port, s = agent_and_pki
    before = agent.status()["rejected"]["status_requests"]
    for user, password in (("prometheus", "guess-1"), ("admin", PASSWORD), (None, "")):
        status, headers, body, _ = scrape(port, tls_client(s), user, password)
        assert status == 401
        assert headers["www-authenticate"] == 'Basic realm="edge-agent metrics", charset="UTF-8"'
        assert b"edge_agent" not in body
    wait_until(
        lambda: agent.status()["rejected"]["status_requests"] >= before + 3, 15, "the refusals counted"
    )
    log = agent.log()
    assert log.count("status.metrics_unauthorised") >= 3
    assert "guess-1" not in log
    assert PASSWORD not in log


def test_a_rotated_password_and_a_renewed_certificate_are_used_without_a_restart(
    agent_and_pki: tuple[AgentProcess, int, Scrapers],
) -> None:
    _, port, s = agent_and_pki
    old_serial = scrape(port, tls_client(s))[3]
    new_serial = s.issue_endpoint()  # the key file is written again too: a new pair
    assert new_serial != old_serial
    # The first connection after the files changed finds them and loads them for the next.
    served = {scrape(port, tls_client(s))[3] for _ in range(2)}
    assert new_serial in served
    assert scrape(port, tls_client(s))[3] == new_serial
    s.password_file.write_text("rotated\n")
    try:
        assert scrape(port, tls_client(s))[0] == 401
        assert scrape(port, tls_client(s), password="rotated")[0] == 200
    finally:
        s.password_file.write_text(PASSWORD + "\n")


def test_client_names_keep_out_certificates_the_ca_gave_to_others(tmp_path: Path) -> None:
    """The scrapers' CA is often the gateways' own: a gateway's certificate (or a stolen one) must
    not read the metrics when only `prometheus` may."""
    s = make_scrapers(tmp_path)
    gateway_cert, gateway_key = tmp_path / "gw-07.pem", tmp_path / "gw-07.key"
    gateway_cert.write_bytes(s.ca.issue_client("gw-07", gateway_key))
    port = free_port()
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    secured(config, f"127.0.0.1:{port}", s, auth=False, names='["prometheus"]')
    with running_agent(config) as agent:
        wait_until(lambda: _answers(port, s), 30, "the HTTPS metrics endpoint to answer")
        status, _, body, _ = scrape(port, tls_client(s, cert=(gateway_cert, gateway_key)), None)
        assert status == 403
        assert body == b"/metrics is not served to a certificate issued to gw-07\n"
        assert "status.metrics_client_refused" in agent.log()
        assert agent.stop() == 0


def test_tls_files_put_in_place_after_the_start_are_taken_up(tmp_path: Path) -> None:
    """The agent runs without its endpoint while the files are missing (never in plain HTTP), says
    so naming the key, and serves HTTPS once they are there."""
    s = make_scrapers(tmp_path)
    aside = tmp_path / "later"
    aside.mkdir()
    shutil.move(s.cert, aside / s.cert.name)
    port = free_port()
    config = secured(write_agent_config(tmp_path, devices=FAKE_DEVICE), f"127.0.0.1:{port}", s, auth=False)
    with running_agent(config) as agent:
        agent.wait_status(lambda st: st["drivers"][0]["readings"] > 0, timeout=60)
        log = agent.log()
        assert "status.metrics_unavailable" in log
        assert "[status.metrics_tls]" in log
        assert str(s.cert) in log
        assert not _answers(port, s)
        shutil.move(aside / s.cert.name, s.cert)
        wait_until(
            lambda: _answers(port, s), 40, "the endpoint once its certificate is in place", every_s=0.5
        )
        assert agent.stop() == 0
        assert "Traceback" not in agent.log()


def _check_config(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check-config", str(config)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_check_config_names_what_cannot_be_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_scrapers(tmp_path)
    base = write_agent_config(tmp_path, devices=FAKE_DEVICE).read_text(encoding="utf-8")
    config = tmp_path / "agent.toml"

    def check(address: str, **kwargs: Any) -> tuple[int, str]:
        config.write_text(base, encoding="utf-8")
        return _check_config(secured(config, address, s, **kwargs), capsys)

    code, out = check("127.0.0.1:9464")
    assert code == 0
    assert "metrics" not in out.split("OK", 1)[1], out
    # A key that is not the certificate's.
    other_key = tmp_path / "other.key"
    s.ca.issue_server("other", ["127.0.0.1"], other_key)
    s.key.write_bytes(other_key.read_bytes())
    code, out = check("127.0.0.1:9464")
    assert code == 0
    assert f'status.metrics_tls.key_file = "{s.key}": not the key of status.metrics_tls.cert_file' in out
    # A password file others may read: refused, naming the key.
    s.password_file.chmod(0o644)
    code, out = check("127.0.0.1:9464")
    assert code == 2
    assert "status.metrics_auth.password:" in out
    assert "readable by others" in out
    s.password_file.chmod(0o600)
    # Basic authentication without TLS, on the LAN: a warning; on loopback: none.
    config.write_text(
        base.replace("[status]\n", '[status]\nmetrics = "0.0.0.0:9464"\n', 1)
        + f'\n[status.metrics_auth]\nusername = "p"\npassword = {{ file = "{s.password_file}" }}\n',
        encoding="utf-8",
    )
    code, out = _check_config(config, capsys)
    assert code == 0
    assert "status.metrics_auth: the scraper's password crosses the network in clear" in out
    config.write_text(config.read_text().replace("0.0.0.0:9464", "127.0.0.1:9464"), encoding="utf-8")
    assert "in clear" not in _check_config(config, capsys)[1]
    # Neither TLS nor a password, on the LAN: a warning; on loopback, or with TLS: none.
    config.write_text(base.replace("[status]\n", '[status]\nmetrics = "0.0.0.0:9464"\n', 1), encoding="utf-8")
    code, out = _check_config(config, capsys)
    assert code == 0
    assert "status.metrics: 0.0.0.0:9464 serves the gateway's devices, site and broker in plain HTTP" in out
    assert "plain HTTP" not in check("0.0.0.0:9464", client_ca=False, auth=False)[1]
    config.write_text(base.replace("[status]\n", '[status]\nmetrics = "[::1]:9464"\n', 1), encoding="utf-8")
    assert "plain HTTP" not in _check_config(config, capsys)[1]
    # Settings for an endpoint that is off.
    config.write_text(base + f'\n[status.metrics_tls]\ncert_file = "{s.cert}"\nkey_file = "{s.key}"\n')
    code, out = _check_config(config, capsys)
    assert code == 2
    assert 'status: metrics_tls is for the metrics endpoint: give metrics = "host:port" too' in out


def test_a_remote_config_update_that_opens_the_endpoint_needs_the_security_right(tmp_path: Path) -> None:
    """A key with only `config_update` may not take the password or the TLS off the endpoint."""
    s = make_scrapers(tmp_path)
    secure = secured(write_agent_config(tmp_path, devices=FAKE_DEVICE), "0.0.0.0:9464", s)
    old = load_config(secure)
    text = secure.read_text(encoding="utf-8")
    opened = tmp_path / "opened.toml"
    opened.write_text(text[: text.index("\n[status.metrics_tls]")] + "\n", encoding="utf-8")
    assert changes_needing_rights(old, load_config(opened)) == {
        "security": ["status.metrics_tls", "status.metrics_auth"]
    }
