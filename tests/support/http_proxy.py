"""A small real HTTP CONNECT proxy for tests: the corporate proxy an OT network sends a gateway through.

`HttpProxy()` listens on 127.0.0.1:`port` (a free one) in threads of its own. A client asks
`CONNECT host:port HTTP/1.1`; the proxy connects there and answers `200 Connection established`,
then relays bytes both ways until either side closes (`tunnels` lists each target it opened a
tunnel to, in order). `credentials=("user", "password")` requires `Proxy-Authorization: Basic ...`
(407 otherwise, with `Proxy-Authenticate`); `refuse=403` (or 502...) answers every CONNECT with that
status and opens nothing. `names` maps host names only the proxy resolves (an OT network has no DNS
for the outside; the proxy does) to addresses. `requests` keeps each request's target and
`Proxy-Authorization` header, `first_sent` the first bytes the client sent through each tunnel (a
WebSocket upgrade's request, an MQTT CONNECT, a TLS ClientHello).
"""

from __future__ import annotations

import base64
import contextlib
import http
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self


@dataclass(frozen=True)
class ConnectRequest:
    target: str
    authorization: str | None


class HttpProxy:
    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        refuse: int | None = None,
        names: dict[str, str] | None = None,
    ) -> None:
        self.credentials = credentials
        self.refuse = refuse
        self.names = names or {}
        self.host = "127.0.0.1"
        self.tunnels: list[str] = []
        self.requests: list[ConnectRequest] = []
        self.first_sent: list[bytes] = []
        self._listener = socket.create_server((self.host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        """Close the listener and every connection, and wait for the threads."""
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ threads

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="http-proxy")  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        sock.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        head, rest = self._read_head(client)
        if head is None:
            self._close(client)
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest_of_line = lines[0].partition(" ")
        target = rest_of_line.partition(" ")[0]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        authorization = headers.get("proxy-authorization")
        with self._lock:
            self.requests.append(ConnectRequest(target, authorization))
        if method != "CONNECT":
            self._answer(client, 405)
            return
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if authorization != expected:
                self._answer(client, 407, 'Proxy-Authenticate: Basic realm="test proxy"\r\n')
                return
        if self.refuse is not None:
            self._answer(client, self.refuse)
            return
        host, _, port = target.rpartition(":")
        try:
            host = host.strip("[]")
            upstream = socket.create_connection((self.names.get(host, host), int(port)), timeout=5)
        except (OSError, ValueError):
            self._answer(client, 502)
            return
        upstream.settimeout(None)
        self._track(upstream)
        with self._lock:
            self.tunnels.append(target)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
        ends: list[int] = []
        self._spawn(self._relay, upstream, client, ends)
        self._relay(client, upstream, ends, first=rest)

    def _read_head(self, client: socket.socket) -> tuple[bytes | None, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = client.recv(4096)
            except OSError:
                return None, b""
            if not chunk or len(data) > 65536:
                return None, b""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _answer(self, client: socket.socket, status: int, headers: str = "") -> None:
        phrase = http.HTTPStatus(status).phrase
        with contextlib.suppress(OSError):
            client.sendall(f"HTTP/1.1 {status} {phrase}\r\n{headers}Content-Length: 0\r\n\r\n".encode())
        self._close(client)

    def _relay(
        self, source: socket.socket, sink: socket.socket, ends: list[int], first: bytes | None = None
    ) -> None:
        """Copy `source` to `sink` until `source` ends; the second direction to end closes both.
        `first`: what came with the CONNECT request; the client's first bytes are kept."""
        try:
            while data := source.recv(65536):
                if first is not None:
                    with self._lock:
                        self.first_sent.append(first + data)
                    first = None
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            ends.append(1)
            last = len(ends) == 2
        if last:
            self._close(source)
            self._close(sink)
