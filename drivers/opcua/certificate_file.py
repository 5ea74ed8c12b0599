"""An OPC UA client certificate file as the driver and `check-config` read it (PEM or DER), and what
its end of validity means for a technician."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from cryptography import x509

from water_edge.core import units

# A client certificate this close to its end makes the agent degraded: time to make a new one and
# have the server's operator trust it, before the server refuses the connection.
CERTIFICATE_WARN_S: Final = 30 * 86_400


def certificate_expiry(not_after_ns: int, now_ns: int) -> str | None:
    """What a technician must know of a client certificate ending at `not_after_ns`: None while
    more than `CERTIFICATE_WARN_S` is left."""
    left_s = (not_after_ns - now_ns) / 1e9
    until = f"{datetime.fromtimestamp(not_after_ns / 1e9, UTC):%Y-%m-%d %H:%M} UTC"
    how = "make a new one and add it to the server's trusted certificates"
    if left_s <= 0:
        return f"OPC UA client certificate expired {until}: the server refuses it; {how}"
    if left_s <= CERTIFICATE_WARN_S:
        return (
            f"OPC UA client certificate expires {until} (in {units.duration(left_s)}): the server "
            f"refuses it from then on; {how}"
        )
    return None


def not_after_ns(cert: x509.Certificate) -> int:
    """The certificate's end of validity, UTC nanoseconds."""
    return int(cert.not_valid_after_utc.timestamp()) * 1_000_000_000


def parse_certificate(data: bytes) -> x509.Certificate:
    """A PEM or DER certificate; ValueError when it is neither."""
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)
