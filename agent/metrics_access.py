"""Who may read the metrics endpoint: HTTPS (`[status.metrics_tls]`, optionally with client
certificates) and HTTP basic authentication (`[status.metrics_auth]`), as Prometheus' scrape
configs speak them (`scheme: https`, `tls_config`, `basic_auth`).

The TLS context is made at start; a renewed certificate and key (an internal CA's yearly renewal,
written over the old files) are loaded into it when a connection finds the files changed, so the
scrape after the renewal gets the new certificate without a restart. The password is read at each
request (a `{ file = ... }` rotated is used at once) and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from water_edge.agent.config.schema import MetricsAuth, MetricsTls
from water_edge.core.errors import ConfigError
from water_edge.core.key_pair import KeyPairError, load_key_pair
from water_edge.core.secrets import resolve_secret

log = structlog.get_logger(__name__)

REALM = "edge-agent metrics"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass
class ServerTls:
    """The endpoint's TLS context, reloaded when its certificate or key file changes."""

    files: MetricsTls
    context: ssl.SSLContext = field(init=False)
    _loaded: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        """KeyPairError, ssl.SSLError (the client CA) or OSError when the files cannot be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.files.client_ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.files.client_ca_file)
        self.context = context
        self._load()

    def _stamps(self) -> tuple[object, ...]:
        return _stamp(self.files.cert_file), _stamp(self.files.key_file)

    def _load(self) -> None:
        stamps = self._stamps()
        load_key_pair(self.context, self.files.cert_file, self.files.key_file)
        self._loaded = stamps

    def reload_if_changed(self) -> None:
        """Load the certificate and key again when either file changed since; a pair that cannot be
        used (half written, a key of another certificate) is logged and the loaded one kept."""
        if self._stamps() == self._loaded:
            return
        try:
            self._load()
        except (OSError, KeyPairError) as exc:
            self._loaded = self._stamps()  # logged once per change, tried again at the next one
            log.error(
                "status.metrics_tls_not_reloaded",
                key="[status.metrics_tls]",
                cert_file=str(self.files.cert_file),
                key_file=str(self.files.key_file),
                error=tls_error_text(exc),
                detail="the endpoint keeps the certificate it had; put a matching pair in place",
            )
        else:
            log.info("status.metrics_tls_reloaded", cert_file=str(self.files.cert_file))


def tls_error_text(exc: BaseException) -> str:
    """Why the TLS files cannot be used, in words (`KeyPairError`'s own, a client CA file that is
    no certificate, a file that cannot be read)."""
    if isinstance(exc, ssl.SSLError):
        return f"client_ca_file is not a PEM certificate ({exc.reason or exc})"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


@dataclass(frozen=True)
class BasicAuth:
    """Checks a request's `Authorization` header against `[status.metrics_auth]`."""

    settings: MetricsAuth

    def refusal(self, header: str | None) -> str | None:
        """None when `header` names the configured user and password; else why not (for the log:
        never the password tried)."""
        given = _credentials(header)
        if isinstance(given, str):
            return given
        try:
            expected = resolve_secret(self.settings.password) or ""
        except ConfigError as exc:
            log.error(
                "status.metrics_password_unreadable", key="[status.metrics_auth] password", error=str(exc)
            )
            return "the configured password cannot be read"
        user, password = given
        # Both compared, whatever the first gives: the time taken does not tell which was wrong.
        user_ok = hmac.compare_digest(user, self.settings.username.encode())
        password_ok = hmac.compare_digest(password, expected.encode())
        return None if user_ok and password_ok else "wrong user name or password"


def _credentials(header: str | None) -> tuple[bytes, bytes] | str:
    """(user, password) of a basic `Authorization` header, or why it holds none."""
    if header is None:
        return "no credentials"
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return f"not basic authentication ({scheme[:16]})"
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return "credentials not in base64"
    return (user, password) if sep else "credentials without a password"


__all__ = ["REALM", "BasicAuth", "ServerTls", "tls_error_text"]
