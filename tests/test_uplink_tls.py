"""The uplink over TLS to a Mosquitto TLS listener, with certificates made here with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.broker import Mosquitto, Subscriber, TlsFiles
from tests.support.testing import free_port
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink.config import TlsConfig
from water_edge.buffer.async_outbox import AsyncOutbox

Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: Key, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path = path.with_suffix(".key")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key_path


def make_ca(path: Path, cn: str) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(path, key, cert)
    return key, cert


def make_leaf(
    path: Path, cn: str, ca_key: Key, ca_cert: x509.Certificate, *, server: bool
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return _write(path, key, builder.sign(ca_key, hashes.SHA256()))


class Pki:
    def __init__(self, root: Path) -> None:
        ca_key, ca_cert = make_ca(root / "ca.pem", "test CA")
        self.ca = root / "ca.pem"
        self.server_cert, self.server_key = make_leaf(
            root / "server.pem", "localhost", ca_key, ca_cert, server=True
        )
        self.client_cert, self.client_key = make_leaf(
            root / "client.pem", f"{SITE}-{GATEWAY}", ca_key, ca_cert, server=False
        )
        make_ca(root / "other-ca.pem", "some other CA")
        self.other_ca = root / "other-ca.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_broker(pki: Pki, plain_port: int, *, require_certificate: bool) -> Mosquitto:
    # A second, plain listener for the test's subscriber.
    return Mosquitto(
        tls=TlsFiles(pki.ca, pki.server_cert, pki.server_key, require_certificate),
        plain_ports=(plain_port,),
    )


async def test_mutual_tls_delivers(pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink) -> None:
    plain = free_port()
    with tls_broker(pki, plain, require_certificate=True) as broker:
        await outbox.append(reading_batches(5))
        with Subscriber(broker.host, plain, f"water/{SITE}/{GATEWAY}/plc1") as sub:
            tls = TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
            run = await start_uplink(mqtt_config(broker, tls=tls), outbox)
            msgs = await sub.wait_for_async(5)
            await run.uplink.stop()
    assert [m.json()["seq"] for m in msgs] == [1, 2, 3, 4, 5]
    assert (await outbox.stats()).rows == 0


async def test_without_ca_file_the_system_trust_store_verifies_the_broker(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker with a public CA's certificate needs no ca_file. OpenSSL's default store is
    SSL_CERT_FILE where set: the test CA stands in for a public one there."""
    plain = free_port()
    with tls_broker(pki, plain, require_certificate=False) as broker:
        await outbox.append(reading_batches(2))
        untrusted = await start_uplink(mqtt_config(broker, tls=TlsConfig()), outbox)
        await untrusted.states.wait(lambda s: s == "tls-error")  # the system store lacks the test CA
        assert "certificate" in (untrusted.uplink.health().last_error or "")
        await untrusted.uplink.stop()
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        with Subscriber(broker.host, plain, f"water/{SITE}/{GATEWAY}/plc1") as sub:
            run = await start_uplink(mqtt_config(broker, tls=TlsConfig()), outbox)
            msgs = await sub.wait_for_async(2)
            await run.uplink.stop()
    assert [m.json()["seq"] for m in msgs] == [1, 2]


async def test_wrong_ca_fails_with_a_clear_state(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with tls_broker(pki, free_port(), require_certificate=False) as broker:
        await outbox.append(reading_batches(2))
        run = await start_uplink(mqtt_config(broker, tls=TlsConfig(ca_file=pki.other_ca)), outbox)
        await run.states.wait(lambda s: s == "tls-error")
        reason = run.uplink.health().last_error
        await run.uplink.stop()
    assert "certificate" in (reason or "")  # e.g. "self-signed certificate in certificate chain"
    assert run.uplink.health().published == 0
    assert (await outbox.stats()).rows == 2


async def test_missing_client_certificate_is_not_a_crash(
    pki: Pki, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with tls_broker(pki, free_port(), require_certificate=True) as broker:
        run = await start_uplink(mqtt_config(broker, tls=TlsConfig(ca_file=pki.ca)), outbox)
        await run.states.wait(lambda s: s in ("tls-error", "offline"))
        await run.states.wait(lambda s: s == "connecting", since=len(run.states.states) - 1)
        await run.uplink.stop()
    assert run.uplink.health().last_error
