"""`GET /metrics` on `[status] metrics` (docs/status.md#prometheus), answered from the status
document (`metrics_export.exposition`).

`MetricsServer` answers `GET /metrics` (and `HEAD`) over plain HTTP/1.1 on the agent's own loop,
one request per connection. What a client can cost the agent is bounded like the status socket's:
at most `MAX_CONNECTIONS` at once (one more is answered 503 and closed), a request head within
`REQUEST_TIMEOUT_S` (else 408) and `MAX_HEAD_BYTES` (else 414 or 431), an answer taken within
`WRITE_TIMEOUT_S` (else the connection is dropped); any other method is 405, any other path 404.
Each is counted (the status document's `rejected.status_requests`), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from water_edge.agent.bounded_server import BoundedServer, TurnedAway
from water_edge.agent.config.schema import MetricsAuth, MetricsTls
from water_edge.agent.metrics_access import REALM, BasicAuth, ServerTls, tls_error_text
from water_edge.agent.metrics_export import exposition
from water_edge.core.hosts import host_port
from water_edge.core.key_pair import KeyPairError

log = structlog.get_logger(__name__)

PATH: Final = "/metrics"
MAX_HEAD_BYTES = 8192  # the request line and headers; Prometheus sends a few hundred bytes
MAX_HEADER_LINES = 64
MAX_CONNECTIONS = 8  # a scraper or two (an HA pair), a technician's curl
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
# After an answer, what the client still sends (the rest of a long request line, a body) is read
# and dropped for this long before closing: closing with unread data resets the connection, and the
# client may lose the answer with it.
LINGER_S = 1.0
LINGER_BYTES = 256 * 1024
RETRY_BIND_S = 10.0

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _response(
    code: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    extra: str = "",
    head_only: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else body)


_BUSY = _response(503, b"too many connections to the metrics endpoint; try again\n")


class _RefusedError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class MetricsServer(BoundedServer):
    """`GET /metrics` on `host:port`, answered from `snapshot()` (the status socket's document)."""

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        tls: MetricsTls | None = None,
        auth: MetricsAuth | None = None,
    ) -> None:
        super().__init__(max_clients=max_connections, write_timeout_s=write_timeout_s, busy=_BUSY)
        self.host, self.port = host, port
        self.address = host_port(host, port)
        self._snapshot = snapshot
        self.request_timeout_s = request_timeout_s
        self.scrapes = 0
        self.rejected = 0  # requests turned away, of any kind
        self._server: asyncio.AbstractServer | None = None
        self._bind_error: str | None = None
        self._tls_files = tls
        self._tls: ServerTls | None = None
        self._auth = None if auth is None else BasicAuth(auth)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> bool:
        """Listen; False (logged once, naming the key) when the address cannot be bound: the agent
        runs on without metrics, and `keep_trying` binds it once it is free."""
        if self._tls_files is not None and self._tls is None and not self._load_tls(self._tls_files):
            return False
        tls = None if self._tls is None else self._tls.context
        try:
            self._server = await asyncio.start_server(
                self._handle,
                self.host,
                self.port,
                limit=MAX_HEAD_BYTES,
                reuse_address=True,
                ssl=tls,
                ssl_handshake_timeout=None if tls is None else self.request_timeout_s,
            )
        except OSError as exc:
            # asyncio's text names the address again: the system's words for the errno are enough
            error = (
                os.strerror(exc.errno)
                if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror)
                else exc.strerror or str(exc)
            )
            return self._unavailable(
                "[status] metrics",
                error,
                f'[status] metrics = "{self.address}": cannot listen there ({error})',
                "another program on that port? choose another port",
            )
        log.info(
            "status.metrics_listening",
            address=self.address,
            path=PATH,
            scheme="http" if tls is None else "https",
            client_certificates=self._tls_files is not None and self._tls_files.client_ca_file is not None,
            basic_auth=self._auth is not None,
        )
        self._bind_error = None
        return True

    def _load_tls(self, files: MetricsTls) -> bool:
        """The TLS context from `files`; False (logged once until it works) when they cannot be
        used: the endpoint does not answer in plain HTTP instead, and `keep_trying` tries again."""
        try:
            self._tls = ServerTls(files)
        except (OSError, KeyPairError) as exc:
            error = tls_error_text(exc)
            why = f"[status.metrics_tls] cert_file, key_file or client_ca_file cannot be used ({error})"
            return self._unavailable("[status.metrics_tls]", error, why, "never plain HTTP instead")
        return True

    def _unavailable(self, key: str, error: str, why: str, hint: str) -> bool:
        """Log that the endpoint is off and why, once until the reason changes; False."""
        if self._bind_error != error:
            log.error(
                "status.metrics_unavailable",
                key=key,
                address=self.address,
                error=error,
                detail=f"{why}; the agent runs without its Prometheus endpoint and tries again every "
                f"{RETRY_BIND_S:g} s ({hint})",
            )
        self._bind_error = error
        return False

    def _access_refused(
        self, writer: asyncio.StreamWriter, headers: Mapping[str, str]
    ) -> tuple[int, str, str] | None:
        """(status, message, extra header lines) for a client not let in: a certificate the CA
        issued to a name `client_names` leaves out (403), or no right user and password (401)."""
        names = () if self._tls_files is None else self._tls_files.client_names
        if names and (name := _common_name(writer.get_extra_info("peercert"))) not in names:
            log.warning("status.metrics_client_refused", peer=_peer(writer), client=name)
            return 403, f"{PATH} is not served to a certificate issued to {name or 'no common name'}", ""
        if self._auth is not None and (why := self._auth.refusal(headers.get("authorization"))):
            log.warning("status.metrics_unauthorised", peer=_peer(writer), reason=why)
            challenge = f'WWW-Authenticate: Basic realm="{REALM}", charset="UTF-8"\r\n'
            return 401, f"{PATH} needs a user name and password", challenge
        return None

    async def keep_trying(self) -> None:
        """Until the address is bound (a port taken at start, freed later)."""
        while self._server is None and not self._closing:
            await asyncio.sleep(RETRY_BIND_S)
            await self.start()

    async def close(self) -> None:
        self._closing = True
        if self._server is None:
            return
        self._server.close()
        await self._end_connections()
        await self._server.wait_closed()
        self._server = None

    def _turned_away(self, why: TurnedAway) -> None:
        self.rejected += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tls is not None:
            self._tls.reload_if_changed()  # for the next connection's handshake
        try:
            async with asyncio.timeout(self.request_timeout_s):
                head = await _read_head(reader)
        except TimeoutError:
            await self._refuse(reader, writer, 408, f"no whole request within {self.request_timeout_s:g} s")
            return
        except _RefusedError as exc:
            await self._refuse(reader, writer, exc.code, str(exc))
            return
        if head is None:
            return  # connected and left without asking (a port check)
        method, target, headers = head
        if (refused := self._access_refused(writer, headers)) is not None:
            code, message, extra = refused
            await self._refuse(reader, writer, code, message, extra=extra)
            return
        if target.split("?", 1)[0] != PATH:
            await self._refuse(reader, writer, 404, f"not found; the metrics are at {PATH}")
            return
        if method not in ("GET", "HEAD"):
            await self._refuse(reader, writer, 405, f"{PATH} takes GET", extra="Allow: GET, HEAD\r\n")
            return
        body, content_type = exposition(self._snapshot(), headers.get("accept", ""))
        self.scrapes += 1
        await self._send(writer, _response(200, body, content_type, head_only=method == "HEAD"))
        await _finish(reader, writer)

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        code: int,
        message: str,
        *,
        extra: str = "",
    ) -> None:
        self.rejected += 1
        await self._send(writer, _response(code, message.encode() + b"\n", extra=extra))
        await _finish(reader, writer)


def _common_name(peercert: Any) -> str | None:
    """The subject's common name in `ssl`'s decoded form of a peer certificate."""
    for rdn in peercert.get("subject", ()) if isinstance(peercert, dict) else ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return host_port(str(peer[0]), int(peer[1]))
    return str(peer)


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """End the answer (FIN), then read and drop what the client still sends, briefly and boundedly,
    so that the close does not reset a connection whose client has not read the answer yet."""
    if writer.can_write_eof():
        writer.write_eof()
    dropped = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_S):
            while dropped < LINGER_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                dropped += len(chunk)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    """The request line's method and target and the headers (names lower-cased); None when the
    client sent nothing at all; `_RefusedError` for what cannot be a request we answer."""
    line = await _line(reader, 414, "request line too long")
    if line is None:
        return None
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _RefusedError(400, "not an HTTP/1.x request")
    size = len(line)
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES + 1):
        header = await _line(reader, 431, "request headers too long")
        if header is None:
            raise _RefusedError(400, "the request ended before its headers did")
        size += len(header)
        if size > MAX_HEAD_BYTES:
            raise _RefusedError(431, "request headers too long")
        if not header.strip():
            return parts[0], parts[1], headers
        name, sep, value = header.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raise _RefusedError(431, "too many request headers")


async def _line(reader: asyncio.StreamReader, code: int, too_long: str) -> str | None:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise _RefusedError(400, "the request ended in the middle of a line") from None
    except asyncio.LimitOverrunError:
        raise _RefusedError(code, too_long) from None
    return raw.decode("latin-1")
