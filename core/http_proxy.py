"""MQTT through an HTTP proxy: `[uplink] proxy = "http://[user[:password]@]host:port"`.

Many utilities' OT networks let a field gateway out only on TCP 443, and only through the corporate
HTTP proxy. The uplink, and a claim enrolment, which takes the uplink's way out, ask the proxy for a
tunnel to the broker (`CONNECT broker:port HTTP/1.1`, RFC 9110 §9.3.6, with `Proxy-Authorization:
Basic ...` when the URL names a user) on their own socket, and hand the tunnelled socket to paho,
which then speaks TLS, WebSockets and MQTT through it as it would to the broker directly.

Why the uplink makes the CONNECT itself rather than paho's `proxy_set` (PySocks):

- the proxy's answer is the close reason, in its own words: `the proxy refused the connection:
  407 Proxy Authentication Required`; PySocks turns it into a generic error;
- the name of the broker is resolved by the proxy (an OT network often has no DNS for the outside),
  the proxy's name by the uplink, under `connect_timeout_s` like any broker name (`resolve`);
- the whole exchange is bounded by `connect_timeout_s`, and the answer is read exactly up to its
  end, so nothing of what follows (the broker's TLS or WebSocket bytes) is taken from paho;
- no dependency: the exchange is 30 lines, tested against a real proxy (tests/support/http_proxy.py).
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from water_edge.core.hosts import check_host, host_port

# How a close reason starts when the proxy answered CONNECT with anything but 2xx.
PROXY_REFUSED = "the proxy refused the connection"
_MAX_ANSWER = 16 * 1024  # the status line and headers of the proxy's answer, at most


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy that allows CONNECT; `password` is the resolved secret, never printed."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """`host:port` (IPv6 in brackets), without the credentials: what logs and errors show."""
        return host_port(self.host, self.port)


def parse_proxy(uri: str) -> Proxy:
    """`http://gw17:secret@proxy.corp:3128` -> Proxy; ValueError naming what is wrong otherwise
    (never repeating the URL, which may hold a password)."""
    expected = "expected http://[user[:password]@]host:port, an HTTP proxy that allows CONNECT"
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ValueError(f"{expected}: TLS to the proxy itself (https://) is not supported")
    if scheme != "http":
        raise ValueError(f"{expected}: unknown scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"{expected}: no host")
    if port is None or port == 0:
        raise ValueError(f"{expected}: give the proxy's port (often 3128 or 8080)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{expected}: no path, query or fragment")
    if ":" not in host:
        try:
            check_host(host)
        except ValueError as exc:
            raise ValueError(f"{expected}: {exc}") from None
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if username == "":
        raise ValueError(f"{expected}: an empty user name before '@'")
    return Proxy(host, port, username, password)


class ProxyError(ConnectionError):
    """The tunnel through the proxy could not be opened (the uplink backs off and tries again)."""


class ProxyRefusedError(ProxyError):
    """The proxy answered CONNECT with a status other than 2xx."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _hint(status: int, proxy: Proxy, target: str) -> str:
    if status == 407:
        if proxy.username is None:
            return (
                'the proxy wants a user name and password: proxy = "http://user@host:port" with '
                "proxy_password, or the password in the URL"
            )
        return f"the proxy did not accept the user name {proxy.username!r} and its password"
    if status == 403:
        return f"the proxy does not allow a tunnel to {target} (proxies often allow port 443 only)"
    if status in (502, 503, 504):
        return f"the proxy could not reach the broker at {target}"
    if status == 405:
        return "the proxy does not allow CONNECT"
    return ""


def open_tunnel(sock: socket.socket, host: str, port: int, proxy: Proxy, timeout_s: float) -> None:
    """Ask the proxy connected on `sock` for a tunnel to `host`:`port`; return once it answered
    2xx, with nothing of the tunnel's own bytes read. `ProxyRefusedError` for any other status
    (`the proxy refused the connection: 407 Proxy Authentication Required; ...`), `ProxyError`
    when it answers nothing or no HTTP within `timeout_s`."""
    target = host_port(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    deadline = time.monotonic() + timeout_s
    try:
        sock.settimeout(timeout_s)
        sock.sendall(request)
        answer = _read_answer(sock, deadline, proxy.address)
    except TimeoutError:
        raise ProxyError(f"the proxy {proxy.address} did not answer CONNECT within {timeout_s:g} s") from None
    except OSError as exc:
        if isinstance(exc, ProxyError):
            raise
        raise ProxyError(f"the proxy {proxy.address} closed the connection at CONNECT: {exc}") from exc
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not (len(code_text) == 3 and code_text.isdigit()):
        raise ProxyError(f"the proxy {proxy.address} did not answer CONNECT in HTTP: {status_line[:80]!r}")
    status = int(code_text)
    if 200 <= status < 300:
        return
    text = f"{PROXY_REFUSED}: {status} {reason.strip()}".rstrip()
    hint = _hint(status, proxy, target)
    raise ProxyRefusedError(status, f"{text}; {hint}" if hint else text)


def tunnel(
    proxy: Proxy,
    host: str,
    port: int,
    timeout_s: float,
    connect: Callable[[], socket.socket] | None = None,
) -> socket.socket:
    """A socket to the proxy (from `connect`, else by resolving its name), tunnelled to `host`:`port`
    and ready for the broker's own bytes; `ProxyError` naming the proxy when it cannot be reached
    or refuses, with the socket closed."""
    try:
        if connect is not None:
            sock = connect()
        else:
            sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout_s)
    except OSError as exc:
        raise ProxyError(f"cannot reach the proxy {proxy.address}: {exc.strerror or exc}") from exc
    try:
        open_tunnel(sock, host, port, proxy, timeout_s)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(timeout_s)
    return sock


def _read_answer(sock: socket.socket, deadline: float, address: str) -> bytes:
    """The proxy's answer up to and with the blank line that ends its headers, and not a byte more
    (the broker's bytes follow on the same socket). A few hundred bytes, once per connection."""
    answer = bytearray()
    while not answer.endswith(b"\r\n\r\n") and not answer.endswith(b"\n\n"):
        if len(answer) >= _MAX_ANSWER:
            raise ProxyError(f"the proxy {address}'s answer to CONNECT has no end within {_MAX_ANSWER} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        byte = sock.recv(1)
        if not byte:
            raise ProxyError(
                f"the proxy {address} closed the connection without answering CONNECT"
                if not answer
                else f"the proxy {address} closed the connection in the middle of its answer to CONNECT"
            )
        answer += byte
    return bytes(answer)
