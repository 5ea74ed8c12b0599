"""The gateway's own identity: an EC P-256 key made on the device, its CSR, and installed certificates.

Layout of the identity directory (in the state dir, 0700):

    identity/current -> gen-<n>/      symlink, swapped atomically when a certificate is installed
    identity/gen-<n>/key.pem          private key, 0600, never leaves the device
    identity/gen-<n>/cert.pem         the device certificate
    identity/gen-<n>/ca.pem           CA bundle that signs the broker's and the device's certificates
    identity/pending/key.pem          a key waiting for its certificate (first enrolment or renewal)
    identity/pending/csr.pem

So `[uplink.mqtt.tls]` points at `identity/current/{cert,key,ca}.pem` for good: a renewal puts the
new key and certificate in place together, and a crash at any moment leaves either the old pair or
the new pair, never a key that does not match its certificate. The key is behind `KeyBackend`, so
a TPM or PKCS#11 token can hold it instead of a file (`FileKeyBackend` is the one shipped).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from water_edge.core.files import atomic_write
from water_edge.provisioning.errors import ProvisioningError

log = structlog.get_logger(__name__)

KEY_FILE, CERT_FILE, CA_FILE, CSR_FILE = "key.pem", "cert.pem", "ca.pem", "csr.pem"
_SERIAL = re.compile(r"^[A-Za-z0-9_.:-]{4,64}$")


def hardware_serial(
    cpuinfo: Path = Path("/proc/cpuinfo"), machine_id: Path = Path("/etc/machine-id")
) -> tuple[str | None, str]:
    """This board's own ID: a Raspberry Pi's CPU serial (`Serial` in /proc/cpuinfo, unique to the
    board), else the machine id (written at an image's first boot: the same on every copy of an
    image made after it). `(None, why)` when neither can be read; else `(id, where it came from)`."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip().strip("0"):
                return value.strip(), f"{cpuinfo} Serial"
    except OSError:
        pass
    try:
        found = machine_id.read_text().strip()
    except OSError as exc:
        return None, f"no Serial in {cpuinfo}, cannot read {machine_id} ({exc.strerror})"
    if not found:
        return None, f"no Serial in {cpuinfo}, {machine_id} is empty"
    return found, str(machine_id)


def device_serial(
    configured: str | None = None,
    cpuinfo: Path = Path("/proc/cpuinfo"),
    machine_id: Path = Path("/etc/machine-id"),
) -> str:
    """The device serial put in the CSR: configured, else a Pi's CPU serial, else the machine id."""
    if configured:
        candidate = configured.strip()
    else:
        found, why = hardware_serial(cpuinfo, machine_id)
        if found is None:
            raise ProvisioningError(f"no device serial: not configured, {why}")
        candidate = found
    if not _SERIAL.match(candidate):
        raise ProvisioningError(
            f"device serial {candidate!r} is not 4-64 characters of letters, digits, '_.:-'"
        )
    return candidate


class KeyBackend(Protocol):
    """Where the private key lives. A TPM/PKCS#11 backend keeps a handle in `directory` instead."""

    def generate(self, directory: Path) -> None: ...

    def public_key(self, directory: Path) -> ec.EllipticCurvePublicKey: ...

    def sign_csr(
        self, directory: Path, builder: x509.CertificateSigningRequestBuilder
    ) -> x509.CertificateSigningRequest: ...


class FileKeyBackend:
    """The key as a PKCS#8 PEM file, mode 0600, written atomically."""

    def generate(self, directory: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(directory / KEY_FILE, pem, mode=0o600)

    def _load(self, directory: Path) -> ec.EllipticCurvePrivateKey:
        path = directory / KEY_FILE
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ProvisioningError(f"cannot read device key {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ProvisioningError(f"device key {path} is not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisioningError(f"device key {path} is not an EC key")
        return key

    def public_key(self, directory: Path) -> ec.EllipticCurvePublicKey:
        return self._load(directory).public_key()

    def sign_csr(
        self, directory: Path, builder: x509.CertificateSigningRequestBuilder
    ) -> x509.CertificateSigningRequest:
        return builder.sign(self._load(directory), hashes.SHA256())


@dataclass(frozen=True)
class IdentityStatus:
    enrolled: bool
    subject: str | None
    serial_number: str | None
    not_after: dt.datetime | None
    pending: bool


def public_der(key: object) -> bytes:
    """An EC public key as DER (SubjectPublicKeyInfo), to compare keys; b"" for any other kind."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_cert(data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ProvisioningError(f"{what} is not a PEM certificate") from exc


def certificate_name(path: Path) -> str:
    """The common name of the certificate in `path` (its MQTT identity under the shipped broker config)."""
    try:
        cert = load_cert(path.read_bytes(), str(path))
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ProvisioningError(f"{path} does not carry exactly one common name")
    return str(names[0].value)


def load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ProvisioningError(f"{what} is not a PEM certificate bundle") from exc
    return certs


class DeviceIdentity:
    """The identity directory described above; all writes are atomic."""

    def __init__(self, directory: Path, backend: KeyBackend | None = None) -> None:
        self.dir = directory
        self.backend: KeyBackend = backend or FileKeyBackend()

    @property
    def current(self) -> Path:
        return self.dir / "current"

    @property
    def pending(self) -> Path:
        return self.dir / "pending"

    @property
    def cert_file(self) -> Path:
        return self.current / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.current / KEY_FILE

    @property
    def ca_file(self) -> Path:
        return self.current / CA_FILE

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def make_csr(self, serial: str, common_name: str, site: str | None = None) -> bytes:
        """A CSR for the pending key (made now if there is none): CN = gateway id, serialNumber."""
        self._prepare()
        if not (self.pending / KEY_FILE).exists():
            self.pending.mkdir(mode=0o700, exist_ok=True)
            self.backend.generate(self.pending)
            log.info("identity.key_generated", directory=str(self.pending))
        attrs = [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
        if site:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site))
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
        csr = self.backend.sign_csr(self.pending, builder)
        pem = csr.public_bytes(serialization.Encoding.PEM)
        atomic_write(self.pending / CSR_FILE, pem)
        return pem

    def install(self, cert_pem: bytes, ca_pem: bytes, now: dt.datetime | None = None) -> Path:
        """Check the certificate matches the pending key and chains to the CA, then make it current."""
        if not (self.pending / KEY_FILE).exists():
            raise ProvisioningError(f"no pending key in {self.pending}: run `edge-agent provision csr` first")
        cert = load_cert(cert_pem, "the certificate")
        cas = load_certs(ca_pem, "the CA bundle")
        if public_der(cert.public_key()) != public_der(self.backend.public_key(self.pending)):
            raise ProvisioningError("the certificate is not for this device's key (public keys differ)")
        issuer = next((ca for ca in cas if ca.subject == cert.issuer), None)
        if issuer is None:
            raise ProvisioningError(
                f"the CA bundle does not contain the issuer {cert.issuer.rfc4514_string()}"
            )
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise ProvisioningError("the certificate is not signed by the CA (bad signature)") from exc
        moment = now or dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise ProvisioningError(
                f"the certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
            )
        atomic_write(self.pending / CERT_FILE, cert_pem)
        atomic_write(self.pending / CA_FILE, ca_pem)
        return self._promote()

    def _promote(self) -> Path:
        generation = 1 + max(
            (int(p.name[4:]) for p in self.dir.glob("gen-*") if p.name[4:].isdigit()), default=0
        )
        target = self.dir / f"gen-{generation}"
        previous = self.current.resolve() if self.current.is_symlink() else None
        os.rename(self.pending, target)
        link = self.dir / ".current.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
        os.replace(link, self.current)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Keep the previous generation (a rollback by hand), drop older ones.
        for old in self.dir.glob("gen-*"):
            if old not in (target, previous):
                shutil.rmtree(old, ignore_errors=True)
        log.info("identity.installed", generation=generation, directory=str(target))
        return target

    def status(self) -> IdentityStatus:
        cert: x509.Certificate | None = None
        if self.cert_file.exists():
            cert = load_cert(self.cert_file.read_bytes(), str(self.cert_file))
        return IdentityStatus(
            enrolled=cert is not None,
            subject=cert.subject.rfc4514_string() if cert else None,
            serial_number=format(cert.serial_number, "x") if cert else None,
            not_after=cert.not_valid_after_utc if cert else None,
            pending=(self.pending / KEY_FILE).exists(),
        )
