"""What asyncua (and the OS under it) raises, translated once into `DriverIOError` with a field
technician's reading of it: refused vs. timeout, the status code's name, a hint for security
refusals."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from water_edge.core.errors import DriverIOError
from water_edge.core.networds import network_error
from water_edge.drivers.opcua.values import status_name

# What a failed connect or request raises; the config-file checks before a connect add ValueError.
UA_ERRORS: Final[tuple[type[Exception], ...]] = (OSError, TimeoutError, UaError)

_HINTS: Final[dict[int, str]] = {
    StatusCodes.BadCertificateUntrusted: "the server does not trust our client certificate "
    "(add it to the server's trusted certificates)",
    StatusCodes.BadSecurityChecksFailed: "security checks failed (certificate not trusted, wrong key, "
    "or a policy/mode the server does not offer)",
    StatusCodes.BadCertificateUriInvalid: "the certificate's URI does not match the application URI",
    StatusCodes.BadCertificateTimeInvalid: "the certificate is expired or not yet valid",
    StatusCodes.BadIdentityTokenRejected: "user name or password rejected",
    StatusCodes.BadUserAccessDenied: "user name or password rejected",
    StatusCodes.BadSecurityPolicyRejected: "the server does not offer this security policy/mode",
    StatusCodes.BadTooManySessions: "the server takes no more sessions: other clients hold them (an "
    "engineering tool, a SCADA), or sessions of this gateway's lost connections, which the server "
    "keeps until their session timeout",
    StatusCodes.BadTcpServerTooBusy: "the server takes no more connections now (busy, or at its limit)",
    StatusCodes.BadMaxConnectionsReached: "the server takes no more connections (at its limit)",
    StatusCodes.BadLicenseExpired: "the server's licence has expired (a demo licence's runtime?)",
    StatusCodes.BadLicenseLimitsExceeded: "beyond what the server's licence allows (clients or tags)",
    StatusCodes.BadLicenseNotAvailable: "the server's licence does not include this",
    StatusCodes.BadServerHalted: "the server is halted (stopped, or being updated)",
}


def explain(exc: BaseException) -> str:  # noqa: PLR0911 - one answer per kind of failure
    """A field technician's reading of an asyncua/OS exception."""
    if isinstance(exc, UaStatusCodeError):
        name = status_name(exc.code)
        hint = _HINTS.get(exc.code)
        return f"{name}: {hint}" if hint else name
    if isinstance(exc, TimeoutError):
        return "no answer in time (server down, firewall or wrong address?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if isinstance(exc, socket.gaierror):
        return network_error(exc)
    if isinstance(exc, OSError):
        return exc.strerror.lower() if exc.strerror else str(exc) or type(exc).__name__
    text = str(exc)
    # asyncua 2.1 raises a bare UaError for both a server certificate that is not the pinned one
    # and a server without an endpoint for our policy and mode (Client.create_session and
    # Client.find_endpoint); only the message tells them apart. This is the one place the OPC UA
    # driver reads a message.
    if "Server certificate mismatch" in text:
        return "the server's certificate is not the pinned server_certificate"
    if "No matching endpoints" in text or "find_endpoint" in text:
        return f"the server offers no endpoint with this security policy and mode ({text})"
    return text or type(exc).__name__


@contextmanager
def ua_errors(where: str, *also: type[Exception]) -> Iterator[None]:
    """Translate `UA_ERRORS` (and `also`) raised inside the block into `DriverIOError`
    (`<where>: <explanation>`)."""
    try:
        yield
    except (*UA_ERRORS, *also) as exc:
        raise DriverIOError(f"{where}: {explain(exc)}") from exc
