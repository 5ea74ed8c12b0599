"""Makes the gateway's OPC UA client certificate (self-signed, with the application URI in its SAN).

    python -m water_edge.drivers.opcua.certs \
        /etc/edge-agent/opcua/client_cert.der /etc/edge-agent/opcua/client_key.pem

Copy the certificate into the server's trusted certificates (most servers also show it under
"rejected" after a first refused attempt, to be moved to "trusted" by the operator).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID


def default_uri(hostname: str | None = None) -> str:
    return f"urn:{hostname or socket.gethostname()}:water-edge-agent"


def make_client_certificate(
    cert_path: Path, key_path: Path, *, application_uri: str | None = None, days: int = 3650
) -> str:
    """Write a new key (PEM, mode 0600) and certificate (DER); returns its SHA-256 thumbprint."""
    host = socket.gethostname()
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        f"water-edge-agent@{host}",
        {"organizationName": "water-edge-agent"},
        [x509.UniformResourceIdentifier(application_uri or default_uri(host)), x509.DNSName(host)],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    der = cert.public_bytes(serialization.Encoding.DER)
    cert_path.write_bytes(der)
    return hashlib.sha256(der).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m water_edge.drivers.opcua.certs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("certificate", type=Path, help="certificate file to write (DER)")
    parser.add_argument("private_key", type=Path, help="private key file to write (PEM)")
    parser.add_argument(
        "--uri", default=None, help="application URI (default urn:<hostname>:water-edge-agent)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    if not args.force and (args.certificate.exists() or args.private_key.exists()):
        sys.stderr.write(f"{args.certificate} or {args.private_key} exists; --force to replace\n")
        return 2
    try:
        thumb = make_client_certificate(args.certificate, args.private_key, application_uri=args.uri)
    except OSError as exc:
        sys.stderr.write(f"cannot write the certificate: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {args.certificate} and {args.private_key}\nsha256 {thumb}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
