"""A small certificate authority for a small utility's gateways and for the tests: init, sign, revoke, CRL.

Directory layout (keep it offline or at least root-only; the key is 0600):

    ca.key   EC P-256 private key        ca.pem   self-signed CA certificate
    index.json   every issued certificate (serial, subject, validity) and revocations
    crl.pem      the latest CRL (what Mosquitto's `crlfile` points at)

A larger utility will use its existing PKI; the agent only needs PEM files from it.

A certificate's common name is its holder's MQTT identity (the broker takes it as the username and
the client id), so the CA keeps names unambiguous: a device certificate is never issued for a name
reserved for central services, claim certificates or Sparkplug hosts (`reserved_name`), nor for a
gateway id that another device holds a valid certificate for, nor for a device serial that holds a
valid certificate under another gateway id; names are compared without regard to letter case.
Revoke the old certificate first to move a name or a serial.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from water_edge.core.files import atomic_write
from water_edge.core.names import NAME_MAX_LENGTH, NAME_PATTERN, is_name
from water_edge.core.patterns import pattern_words
from water_edge.provisioning.errors import ProvisioningError

log = structlog.get_logger(__name__)

_ALLOWED_SUBJECT = (NameOID.COMMON_NAME, NameOID.SERIAL_NUMBER, NameOID.ORGANIZATIONAL_UNIT_NAME)
_PEM = serialization.Encoding.PEM
# Names of central services in the shipped broker ACL (deploy/mosquitto/acl); claim certificates
# are named `claim` or `claim-...`, Sparkplug host applications `sparkplug-host` or
# `sparkplug-host-...`. None of them may become a gateway id.
RESERVED_NAMES = frozenset({"centre", "enrolment-service"})
CLAIM_PREFIX = "claim"
SPARKPLUG_HOST_PREFIX = "sparkplug-host"


def reserved_name(name: str) -> bool:
    """True for the names of central services, claim certificates and Sparkplug hosts, in any letter
    case (`Centre`, `CLAIM-x`: the broker tells them apart, a person reading a log might not)."""
    name = name.lower()
    return name in RESERVED_NAMES or any(
        name == prefix or name.startswith(prefix + "-") for prefix in (CLAIM_PREFIX, SPARKPLUG_HOST_PREFIX)
    )


def same_name(a: str | None, b: str | None) -> bool:
    """True when two common names differ at most in letter case (`GW-01` and `gw-01`): the CA gives
    no device a name another holds in any case."""
    return a is not None and b is not None and a.lower() == b.lower()


def normalise_serial(serial: str) -> str:
    """A certificate serial as the index keys it: lower-case hex without leading zeros, whatever
    way it was printed (`0A:1B:..` by openssl, `0x0a1b..`, upper case)."""
    text = serial.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        return format(int(text, 16), "x")
    except ValueError:
        raise ProvisioningError(f"{serial!r} is not a certificate serial (hexadecimal)") from None


def subject_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The first value of `oid` in a subject (a certificate's or a CSR's), as text; None if absent."""
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def subject_text_attribute(subject: str, oid: x509.ObjectIdentifier) -> str | None:
    """The same in a subject written as RFC 4514 text (the CA's index, the status document); None
    also when the text is not a subject."""
    try:
        return subject_attribute(x509.Name.from_rfc4514_string(subject), oid)
    except ValueError:
        return None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Issued:
    serial: str
    subject: str
    not_after: str
    revoked_at: str | None = None
    device_serial: str | None = None
    not_before: str | None = None  # recorded since the renewal limit; None in older indexes
    pem: str | None = None  # the certificate itself, likewise

    @property
    def common_name(self) -> str | None:
        return self._attribute(NameOID.COMMON_NAME)

    @property
    def site(self) -> str | None:
        """The site the device named in its CSR (the subject's OU), if any."""
        return self._attribute(NameOID.ORGANIZATIONAL_UNIT_NAME)

    def _attribute(self, oid: x509.ObjectIdentifier) -> str | None:
        return subject_text_attribute(self.subject, oid)

    @property
    def valid(self) -> bool:
        """Not revoked and not expired."""
        return self.revoked_at is None and dt.datetime.fromisoformat(self.not_after) > _utcnow()

    def validity(self) -> tuple[dt.datetime, dt.datetime] | None:
        """(not before, not after); None in an index written before starts were recorded."""
        if self.not_before is None:
            return None
        return dt.datetime.fromisoformat(self.not_before), dt.datetime.fromisoformat(self.not_after)


class CertificateAuthority:
    """A CA directory on disk. Use `init()` once, then `open()`."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.dir = directory
        self._key = key
        self.cert = cert

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def init(cls, directory: Path, name: str, days: int = 3650) -> CertificateAuthority:
        if (directory / "ca.key").exists():
            raise ProvisioningError(f"{directory} already holds a CA (ca.key exists); not overwriting it")
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        atomic_write(directory / "ca.key", key_pem, mode=0o600)
        atomic_write(directory / "ca.pem", cert.public_bytes(_PEM))
        ca = cls(directory, key, cert)
        ca._save_index({"issued": {}})
        ca.write_crl()
        log.info("ca.initialised", directory=str(directory), name=name)
        return ca

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        try:
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        except OSError as exc:
            raise ProvisioningError(
                f"no CA in {directory} ({exc.filename}: {exc.strerror}); run `edge-agent ca init`"
            ) from exc
        except ValueError as exc:
            raise ProvisioningError(f"the CA files in {directory} are not valid PEM") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisioningError(f"{directory}/ca.key is not an EC key")
        return cls(directory, key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(_PEM)

    # ------------------------------------------------------------------ issuing

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        days: int = 365,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        expect_common_name: str | None = None,
    ) -> bytes:
        """A client certificate for a device CSR; only CN, serialNumber and OU are copied from it."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ProvisioningError("the CSR is not a PEM certificate signing request") from exc
        if not csr.is_signature_valid:
            raise ProvisioningError("the CSR's signature is invalid (not signed by its own key)")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise ProvisioningError("the CSR's key is not EC P-256")
        names = [a for a in csr.subject if a.oid in _ALLOWED_SUBJECT]
        cns = [a.value for a in names if a.oid == NameOID.COMMON_NAME]
        if len(cns) != 1 or not str(cns[0]):
            raise ProvisioningError("the CSR must carry exactly one common name (the gateway id)")
        common_name = str(cns[0])
        # The CN is the gateway id (the MQTT username: ACL patterns must not see wildcards in it)
        # and the OU its site, in topics and in a site-bound broker ACL: only what the agent's
        # config accepts for them (no wildcards, no '/', no spaces, no control characters).
        for what, value in (
            ("common name", common_name),
            *(("site (OU)", str(a.value)) for a in names if a.oid == NameOID.ORGANIZATIONAL_UNIT_NAME),
        ):
            if not is_name(value):
                raise ProvisioningError(
                    f"{what} {value!r} is not {pattern_words(NAME_PATTERN)}, at most {NAME_MAX_LENGTH} long"
                )
        if expect_common_name is not None and common_name != expect_common_name:
            raise ProvisioningError(f"the CSR is for {common_name!r}, expected {expect_common_name!r}")
        if reserved_name(common_name):
            raise ProvisioningError(
                f"{common_name!r} is reserved for central services, claim certificates and Sparkplug "
                "hosts, not a gateway id"
            )
        serials = [str(a.value) for a in names if a.oid == NameOID.SERIAL_NUMBER]
        self.check_unambiguous(common_name, serials[0] if serials else None)
        start = not_before or _utcnow() - dt.timedelta(minutes=5)
        end = not_after or start + dt.timedelta(days=days)
        builder = self._leaf(x509.Name(names), public, start, end).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return self._issue(builder)

    def check_unambiguous(self, common_name: str, device_serial: str | None) -> None:
        """Refuse a gateway id held by another device (in any letter case), or a device serial held
        under another id (or the same one in another letter case)."""
        for item in self.issued():
            if not item.valid:
                continue
            if same_name(item.common_name, common_name) and item.device_serial != device_serial:
                held = "" if item.common_name == common_name else f" (as {item.common_name!r})"
                raise ProvisioningError(
                    f"{common_name!r} already has a valid certificate{held} (serial {item.serial}, device "
                    f"{item.device_serial}); revoke it first to give the name to another device"
                )
            if (
                device_serial is not None
                and item.device_serial == device_serial
                and item.common_name != common_name
            ):
                raise ProvisioningError(
                    f"device {device_serial!r} already has a valid certificate as {item.common_name!r}; "
                    "revoke it first to rename the device"
                )

    def holder(self, common_name: str) -> Issued | None:
        """The newest valid certificate issued for `common_name`, if any."""
        return self.holders().get(common_name)

    def holders(self) -> dict[str, Issued]:
        """Every common name with a valid certificate, and its newest one."""
        newest: dict[str, Issued] = {}
        for item in self.issued():
            name = item.common_name
            if not item.valid or name is None:
                continue
            if name not in newest or item.not_after > newest[name].not_after:
                newest[name] = item
        return newest

    def issue_server(self, common_name: str, hosts: list[str], key_path: Path, days: int = 825) -> bytes:
        """A server certificate for the broker; its key is written (0600) to `key_path`."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        start = _utcnow() - dt.timedelta(minutes=5)
        builder = (
            self._leaf(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                key.public_key(),
                start,
                start + dt.timedelta(days=days),
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        )
        atomic_write(
            key_path,
            key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            mode=0o600,
        )
        return self._issue(builder)

    def issue_client(self, common_name: str, key_path: Path, days: int = 365) -> bytes:
        """A client certificate whose key is made here: for the claim certificate and central services."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = _utcnow() - dt.timedelta(minutes=5)
        builder = self._leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            key.public_key(),
            start,
            start + dt.timedelta(days=days),
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        atomic_write(
            key_path,
            key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            mode=0o600,
        )
        return self._issue(builder)

    def _leaf(
        self, subject: x509.Name, public: ec.EllipticCurvePublicKey, start: dt.datetime, end: dt.datetime
    ) -> x509.CertificateBuilder:
        if end <= start:
            raise ProvisioningError("certificate validity must end after it starts")
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def _issue(self, builder: x509.CertificateBuilder) -> bytes:
        cert = builder.sign(self._key, hashes.SHA256())
        index = self._load_index()
        serial = format(cert.serial_number, "x")
        pem = cert.public_bytes(_PEM)
        index["issued"][serial] = {
            "subject": cert.subject.rfc4514_string(),
            "device_serial": subject_attribute(cert.subject, NameOID.SERIAL_NUMBER),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "pem": pem.decode(),
        }
        self._save_index(index)
        log.info("ca.issued", serial=serial, subject=cert.subject.rfc4514_string())
        return pem

    # ------------------------------------------------------------------ revocation

    def revoke(self, serial_hex: str) -> None:
        index = self._load_index()
        serial = normalise_serial(serial_hex)
        entry = index["issued"].get(serial)
        if entry is None:
            raise ProvisioningError(f"no certificate with serial {serial_hex} was issued by this CA")
        if entry.get("revoked_at"):
            return
        entry["revoked_at"] = _utcnow().isoformat()
        self._save_index(index)
        self.write_crl()
        log.info("ca.revoked", serial=serial, subject=entry["subject"])

    def revoke_name(self, common_name: str) -> list[str]:
        """Revoke every valid certificate issued for `common_name` and rewrite the CRL; the serials
        revoked. A gateway renews its certificate by itself, so whoever holds a lost or stolen one
        may hold a newer certificate than the serial an inventory lists: only all of them end it."""
        valid = [i.serial for i in self.issued() if i.valid and i.common_name == common_name]
        if not valid:
            raise ProvisioningError(f"no valid certificate of this CA is issued for {common_name!r}")
        index = self._load_index()
        now = _utcnow().isoformat()
        for serial in valid:
            index["issued"][serial]["revoked_at"] = now
        self._save_index(index)
        self.write_crl()
        log.info("ca.revoked_name", common_name=common_name, serials=valid)
        return valid

    def write_crl(self, days: int = 30) -> bytes:
        """Write crl.pem listing every revoked certificate; returns its PEM."""
        now = _utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for serial, entry in self._load_index()["issued"].items():
            if entry.get("revoked_at"):
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(serial, 16))
                    .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
                    .build()
                )
        pem = builder.sign(self._key, hashes.SHA256()).public_bytes(_PEM)
        atomic_write(self.dir / "crl.pem", pem)
        return pem

    def issued(self) -> list[Issued]:
        return [
            Issued(
                serial,
                e["subject"],
                e["not_after"],
                e.get("revoked_at"),
                e.get("device_serial"),
                e.get("not_before"),
                e.get("pem"),
            )
            for serial, e in self._load_index()["issued"].items()
        ]

    def _load_index(self) -> dict[str, Any]:
        path = self.dir / "index.json"
        try:
            data: dict[str, Any] = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {"issued": {}}
        except orjson.JSONDecodeError as exc:
            raise ProvisioningError(f"{path} is corrupt: {exc}") from exc
        return data

    def _save_index(self, index: dict[str, Any]) -> None:
        atomic_write(self.dir / "index.json", orjson.dumps(index, option=orjson.OPT_INDENT_2), 0o600)
