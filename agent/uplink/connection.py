"""The real `Transport`: one broker connection, a fresh paho client driven on the asyncio loop.

How paho is driven
    paho runs *on the asyncio loop* through its external-loop socket callbacks: `add_reader` calls
    `loop_read`, `on_socket_register_write` adds a writer that calls `loop_write`, and a timer task
    calls `loop_misc` (keepalive). There is no paho thread, so every paho callback (CONNACK, PUBACK,
    disconnect) runs on the loop thread and reaches the uplink's listener without locks or
    `call_soon_threadsafe` hops per message, and backoff/reconnect stays entirely the uplink's
    instead of fighting `loop_start()`'s built-in reconnect. The one blocking call,
    `Client.connect()` (TCP connect, TLS handshake; bounded by `connect_timeout_s`), runs in
    `asyncio.to_thread` before any socket callback is installed.

Bounded name resolution
    `socket.create_connection` inside paho resolves the broker's name with a blocking
    `getaddrinfo` that `connect_timeout_s` does not bound: a hung resolver (a dead DNS server on
    an LTE link) would stall the uplink for as long as libc retries. So the name is resolved first,
    on a small resolver pool of its own (a hung lookup can never starve the default executor that
    the outbox commits on), under `connect_timeout_s`; paho then connects to the addresses found,
    while the hostname stays what TLS sends as SNI and verifies the certificate against.

One client per connection
    A fresh `PahoTransport` (and paho `Client`) per connect: nothing paho holds in memory outlives
    it, which is what keeps the outbox the only source of resends (see `agent.uplink.mqtt`).

Bounded reads
    paho reads a packet whole before anyone sees it, and asks the socket for all of its remaining
    length at once. `_BoundedClient` announces `max_packet_size` as the MQTT 5 Maximum Packet Size
    (a compliant broker then drops bigger messages for us) and enforces it on the socket for both
    protocol versions: a packet announcing more is refused before its body is read, the
    connection is dropped, and reads are made in `_RECV_CHUNK` pieces, so a 100 MB PUBLISH costs
    the agent a few bytes of header rather than hundreds of MB of RSS. This leans on paho 2.x's
    `_sock_recv` and `_in_packet` (pinned `<3`; tests/test_security_limits.py proves it).

Success PUBACKs without paho's objects
    paho's work per QoS 1 message, not the network, bounds a drain of small messages, and a fifth
    of it was building a reason-code and a properties object for every PUBACK. The client hands a
    success PUBACK to the listener with shared ones instead. This leans on paho 2.x internals as
    the bounded reads do; tests/test_uplink_paho_fast_paths.py proves it is taken and changes
    nothing delivered or reported. paho also reads each packet a byte or two at a time (type,
    each length byte, the rest): three system calls per PUBACK. The client reads up to
    `_RECV_CHUNK` at once and serves paho from it (the size check above still runs before every
    piece it hands over), and the reader goes on while any of it is left.

A broker's word on our certificate
    With TLS 1.3 the client's handshake is over before the broker has judged the client's
    certificate: a broker that refuses it (revoked by its CRL, expired, of another CA) sends an
    alert that the *first read or write after* `connect()` meets, and paho turns that exception
    into "connection lost: Unspecified error" (with TLS 1.2 `connect()` itself raises it). The
    client keeps the TLS error that ended its socket (`tls_failure`; after a failed write the alert
    still waiting on the socket is read, as below), and the connection's close reason, or the
    `TlsError`, says what the broker said (`certificate_refusal`): `the broker refused this
    gateway's certificate: revoked (TLS alert certificate_revoked)...`, never the same words as a
    network fault.

The broker's last packets
    A broker that refuses a message and drops the client (Mosquitto after an ACL denial: PUBACK
    0x87, then the close) or that ends the connection with an MQTT 5 DISCONNECT and a reason (0x97
    quota exceeded, 0x8E session taken over, 0x9C use another server, 0x89 server busy) sends its
    last packets and closes at once. When the uplink's next write met the reset before the reader
    had run (the loop's poll found the socket writable and the packets and the reset came before
    the writer's turn, or a write outside the writer, as `unsent_bytes` makes), paho closed the
    socket with them unread: the refusal was not known, the row went again on the next connection
    and was refused again (4-5 closes, the backoff at 15 s), and the close said "connection lost".
    So where paho turns a failed read or write into a close (`_loop_rc_handle`),
    `read_last_packets` first handles what is already on the socket, without waiting (non-blocking
    reads until one would block, the end of the stream or the reset): a failure PUBACK reaches the
    uplink before the close, a DISCONNECT's reason is the close reason (`broker_disconnect`), a TLS
    alert is kept, and a close right after a refused message says so (`REFUSED_THEN_CLOSED`). What
    the broker never sent cannot be read: Mosquitto without `set_tcp_nodelay` may hold a small
    PUBACK behind an unacknowledged one (Nagle), and its close, with our later PUBLISHes unread,
    resets the connection and drops it (docs/operations.md).

A link slower than what we send
    paho keeps a connection alive only on bytes *received*: it sends a PINGREQ after `keepalive_s`
    without any and gives up `keepalive_s` later. On a slow uplink (a bad LTE cell) our own data
    queues in the socket and in the router, and the broker's PINGRESP, PUBACK or UNSUBACK can come
    only once the queue ahead of our PINGREQ has gone out: a message (or a Sparkplug backlog) that
    takes longer than the keep-alive to send got the connection dropped, sent again from the
    start on the next one, dropped again, forever. So the keep-alive timer also counts what the
    kernel sees of the link (`_BoundedClient.note_link_progress`, before each paho keep-alive
    check): while bytes we sent wait for the peer's TCP acknowledgement *and* it acknowledged more
    of them since the last look, the link is alive and busy carrying our data, and the answer is on
    its way behind it. An idle connection to a broker that hangs (its kernel still acknowledges the
    PINGREQ at once, nothing waits) and a link that stalls or forgets the flow (nothing more is
    acknowledged) are detected as before, within about 2 x `keepalive_s`.

What the link has not taken
    `PahoTransport.unsent_bytes` (the `QueueGauge` capability; the Sparkplug backlog's flow
    control) counts what was published and has not left the host: paho's out queue, after handing
    it to the socket as paho's writer would at the loop's next turn (so a burst the kernel takes at
    once is not counted), plus the kernel's bytes not yet sent (SIOCOUTQNSD, Linux; None
    elsewhere) beyond one TCP segment. paho leaves Nagle's algorithm on, so up to a segment of
    small writes waits for the peer's acknowledgement on any link; on loopback a segment is 64 KB
    and a delayed ACK 40 ms, which held a fast backlog three times in 1000 rows when counted.
    Bytes sent and not yet acknowledged are not counted: they are the link's round trip, not a
    queue of ours.

WebSockets and an HTTP proxy
    `transport = "websockets"` is paho's own (`_WebsocketWrapper` frames what paho sends and reads
    over the TCP or TLS socket); what reads the kernel's view of the link (`note_link_progress`,
    `unsent_bytes`, TLS bytes pending) looks at the socket under the wrapper (`_tcp_socket`), and
    a failed upgrade says so. Through `[uplink] proxy` the resolved addresses are the proxy's and
    `_create_socket_connection` asks it for a tunnel to the broker (`core/http_proxy.py`, which says why not
    paho's `proxy_set`) before paho's TLS and WebSocket handshakes, which then run inside it; the
    proxy's refusal is the `ConnectError`, in its words.

paho's exceptions and return codes are translated here, and only here, into `transport`'s errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import ssl
import struct
import sys
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from water_edge.agent.uplink.transport import (
    BROKER_DISCONNECTED,
    CERTIFICATE_REFUSED,
    REFUSED_THEN_CLOSED,
    TAKEN_OVER,
    CertificateTimeError,
    Connack,
    ConnectError,
    ConnectOptions,
    PublishError,
    PublishProperties,
    TlsError,
    TransportListener,
)
from water_edge.core.errors import UplinkError
from water_edge.core.http_proxy import Proxy, ProxyError, tunnel
from water_edge.core.sockets import Address, connect_first

_RECV_CHUNK = 64 * 1024
# The most packets `read_last_packets` handles after a failed read or write (a window's PUBACKs,
# a DISCONNECT, a few command messages fit many times over): a bound besides the receive buffer.
_LAST_PACKETS = 4096
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another client connected with our client id
# OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: judged by our clock.
_TIME_CODES = frozenset((9, 10))
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 at byte 120 (Linux 4.1 and later).
_TCP_INFO_LEN = 128
_TCPI_BYTES_ACKED = struct.Struct("=Q")
# linux/sockios.h: bytes in a TCP socket's send queue not yet sent (unacknowledged ones not counted).
_SIOCOUTQNSD = 0x894B
# Two lookups at a time: one may hang on a dead resolver while the next attempt still gets a thread.
_RESOLVER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mqtt-dns")

# TLS alerts a broker sends about the client's certificate (OpenSSL's reason -> what it says, the
# alert's name, what to do): Mosquitto sends them for a certificate its CRL revokes, one out of its
# dates (by the broker's clock), one of a CA it does not trust, or none at all.
_CERTIFICATE_ALERTS: dict[str, tuple[str, str, str]] = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": (
        "revoked",
        "certificate_revoked",
        "the CA revoked it (lost, stolen or retired gateway?): a gateway whose certificate was revoked "
        "is enrolled again offline (provision csr, ca sign, provision install)",
    ),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "expired or not yet valid",
        "certificate_expired",
        "by the broker's clock: compare the certificate's dates (the cert line) with the broker's time",
    ),
    "TLSV1_ALERT_UNKNOWN_CA": (
        "issued by a CA the broker does not trust",
        "unknown_ca",
        "the broker's CA file must hold the CA that signed this gateway's certificate",
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": (
        "bad certificate",
        "bad_certificate",
        "the broker could not verify it (its signature or its contents)",
    ),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "unsupported certificate",
        "unsupported_certificate",
        "the broker does not accept this kind of certificate (its key type or usage)",
    ),
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": (
        "not accepted",
        "certificate_unknown",
        "the broker's log says why",
    ),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "none was sent",
        "certificate_required",
        "the broker requires a client certificate: set [uplink.tls] cert_file and key_file",
    ),
}


def certificate_refusal(exc: BaseException | None) -> str | None:
    """What a broker's TLS alert says about this gateway's certificate, in the words of
    `transport.CERTIFICATE_REFUSED`; None for any other error."""
    if not isinstance(exc, ssl.SSLError):
        return None
    found = _CERTIFICATE_ALERTS.get(exc.reason or "")
    if found is None:
        return None
    word, alert, hint = found
    return f"{CERTIFICATE_REFUSED}: {word} (TLS alert {alert}); {hint}"


def broker_disconnect(reason: Any, props: Any = None) -> str:
    """A close reason in the words of the broker's MQTT 5 DISCONNECT: its reason code, its Reason
    String and the server it names (Server Reference, with 0x9C "Use another server" and 0x9D
    "Server moved"), where it sent them."""
    code = getattr(reason, "value", None)
    text = f"{BROKER_DISCONNECTED}: {reason}" + ("" if code is None else f" (DISCONNECT 0x{code:02X})")
    said = getattr(props, "ReasonString", None)
    if said:
        text += f": {said}"
    server = getattr(props, "ServerReference", None)
    if server:
        text += f"; it names another server: {server}"
    return text


async def resolve(host: str, port: int, timeout_s: float) -> list[Address]:
    """The TCP addresses of `host`, looked up within `timeout_s`; `ConnectError` saying why not."""
    loop = asyncio.get_running_loop()
    lookup = loop.run_in_executor(_RESOLVER, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        async with asyncio.timeout(timeout_s):
            infos = await lookup
    except TimeoutError:
        raise ConnectError(f"name resolution of {host} timed out after {timeout_s:g} s") from None
    except OSError as exc:  # socket.gaierror: no such name, no resolver
        raise ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in infos]


# A success PUBACK's reason code and properties, shared by every such PUBACK: listeners read them,
# never change them. Keyed by what follows the packet identifier: nothing (MQTT 3.1.1, or MQTT 5
# leaving both out, §3.4.2.1), a reason code, or a reason code and a zero property length.
# 0x10 is "No matching subscribers", what Mosquitto answers when nobody subscribes to the topic.
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]  # unannotated in paho


def _success_pubacks() -> dict[bytes, ReasonCode]:
    by_tail: dict[bytes, ReasonCode] = {}
    for code in (0x00, 0x10):
        reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
        by_tail |= {bytes([code]): reason, bytes([code, 0]): reason}
    by_tail[b""] = by_tail[b"\x00"]
    return by_tail


_SUCCESS_PUBACKS = _success_pubacks()


class PacketTooLargeError(ConnectionAbortedError):
    """The broker announced a packet over our Maximum Packet Size; the connection is dropped."""


class _BoundedClient(paho.Client):
    """A paho client that refuses an incoming packet over `max_packet` before reading its body."""

    max_packet = 64 * 1024
    refused: str | None = None  # why the last oversized packet was refused
    addresses: tuple[Address, ...] = ()  # resolved beforehand (`resolve`); the hostname stays for TLS
    fast_acks = 0  # success PUBACKs handled without paho's decoding (`_handle_pubackcomp`)
    tls_failure: ssl.SSLError | None = None  # the TLS error that ended the socket (a broker's alert)
    proxy: Proxy | None = None  # `addresses` are then the proxy's, and the broker is reached by CONNECT
    _rbuf = b""  # read from the socket, not yet taken by paho (from `_rpos` on)
    _rpos = 0
    _bytes_acked = -1  # the peer's TCP acknowledgements at the last look (-1: none yet)

    def note_link_progress(self) -> None:
        """Count it as hearing from the broker when the link is carrying our data: bytes we sent
        wait for the peer's acknowledgement, and it acknowledged more since the last look (see
        "A link slower than what we send" in the module docstring)."""
        sock = _tcp_socket(self._sock)
        if sys.platform != "linux" or not isinstance(sock, socket.socket):  # SSLSocket is one too
            return  # TCP_INFO is Linux's (a gateway's); elsewhere paho's keep-alive alone
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except OSError:
            return
        if len(info) < _TCP_INFO_LEN:
            return  # a kernel without tcpi_bytes_acked: paho's keep-alive alone
        (acked,) = _TCPI_BYTES_ACKED.unpack_from(info, 120)
        if 0 <= self._bytes_acked < acked and _send_queue(sock):
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()  # paho's clock (time_func)
        self._bytes_acked = acked

    def _create_socket_connection(self) -> socket.socket:
        """Connect to the addresses resolved beforehand, in order, instead of resolving again;
        through the proxy, to the proxy's, then ask it for a tunnel to the broker (`core/http_proxy.py`):
        paho's TLS and WebSocket handshakes then run through the tunnel."""
        if not self.addresses:
            return super()._create_socket_connection()
        proxy = self.proxy
        if proxy is None:
            return connect_first(self.addresses, self._connect_timeout)
        addresses, timeout_s = self.addresses, self._connect_timeout
        return tunnel(proxy, self._host, self._port, timeout_s, lambda: connect_first(addresses, timeout_s))

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > self.max_packet:
            self.refused = f"incoming packet of {packet['remaining_length']} bytes > {self.max_packet}"
            # An OSError: paho reports the connection lost and closes the socket (on_disconnect).
            raise PacketTooLargeError(self.refused)
        # paho asks for a packet a byte or two at a time (its type, then each byte of its length,
        # then the rest): one system call each, three per PUBACK. A chunk is read at once and
        # served from here; `_readable` goes on while any of it is left.
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            try:
                buf = super()._sock_recv(_RECV_CHUNK)
            except ssl.SSLError as exc:  # paho reports only "connection lost": keep what TLS said
                self.tls_failure = exc
                raise
            if not buf:
                return buf  # the connection closed
            self._rbuf, pos = buf, 0
        data = buf[pos : pos + bufsize]
        self._rpos = pos + len(data)
        return data

    def _loop_rc_handle(self, rc: MQTTErrorCode) -> MQTTErrorCode:
        """Where paho turns a failed read or write into a close. First read what the broker sent
        before it closed and is still waiting on the socket (see "The broker's last packets")."""
        if rc == MQTTErrorCode.MQTT_ERR_CONN_LOST and self._sock is not None:
            self.read_last_packets()
            if self._sock is None:
                # A DISCONNECT among them: paho closed the socket and reported the broker's reason
                # (on_disconnect). Reporting the failed read or write again would overwrite it.
                return rc
        done: MQTTErrorCode = super()._loop_rc_handle(rc)
        return done

    def read_last_packets(self) -> int:
        """Handle the packets already received and still waiting on the socket (a PUBACK with a
        failure reason, a DISCONNECT with a reason, a TLS alert), without waiting for more: the
        socket is non-blocking, so this reads what the kernel holds and stops at the first read
        that would block, at the end of the stream, at a reset, or after `_LAST_PACKETS`.
        The number of packets handled."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setblocking(False)  # it is already, once connected; never wait here
        handled = 0
        while handled < _LAST_PACKETS and self._sock is not None:
            if self._packet_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # nothing more (AGAIN), the end or a reset (CONN_LOST), a broken packet
            handled += 1
        return handled

    def buffered(self) -> bool:
        """Whether bytes read from the socket are still waiting for paho."""
        return self._rpos < len(self._rbuf)

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        """A success PUBACK without properties, handled without paho's per-packet objects.

        paho builds a `ReasonCode` and an empty `Properties` for every PUBACK, a fifth of the
        uplink's CPU per one-reading message; shared ones serve every success PUBACK without
        properties (`_SUCCESS_PUBACKS`). Anything else — a failure, properties, a PUBCOMP, a
        packet too short — goes through paho unchanged.
        """
        packet = self._in_packet["packet"]
        reason = _SUCCESS_PUBACKS.get(bytes(packet[2:])) if cmd == "PUBACK" and len(packet) >= 2 else None
        if reason is None:
            rc: MQTTErrorCode = super()._handle_pubackcomp(cmd)
            return rc
        mid = (packet[0] << 8) | packet[1]
        self.fast_acks += 1
        with self._out_message_mutex:
            if mid in self._out_messages:
                done: MQTTErrorCode = self._do_on_publish(mid, reason, _NO_PROPERTIES)
                return done
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def _send_queue(sock: Any) -> int:
    """Bytes in the socket's send queue: not yet sent, or sent and not yet acknowledged (0 when
    unknown)."""
    return _socket_queue(sock, termios.TIOCOUTQ) or 0


def _unsent(sock: Any) -> int | None:
    """Bytes in the socket's send queue not yet sent (None when the kernel cannot say: not Linux, not
    a TCP socket)."""
    return _socket_queue(sock, _SIOCOUTQNSD) if sys.platform == "linux" else None


def _socket_queue(sock: Any, request: int) -> int | None:
    """One of the kernel's byte counts of a socket's queue (an ioctl answering an int), or None."""
    try:
        out = fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0")
    except (OSError, ValueError):
        return None
    count: int = struct.unpack("=i", out)[0]
    return count


@contextlib.contextmanager
def _connect_errors() -> Iterator[None]:
    """paho's `connect()` raises the socket's exceptions: say which part failed, in its own words."""
    try:
        yield
    except ProxyError as exc:  # its own words: `the proxy refused the connection: 407 ...`
        raise ConnectError(str(exc)) from exc
    except paho.WebsocketConnectionError as exc:
        raise ConnectError(
            f"the broker did not take the WebSocket upgrade ({exc}): is [uplink] websocket_path the "
            "broker's path, and does the port serve MQTT over WebSockets?"
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _TIME_CODES:
            raise CertificateTimeError(exc.verify_message or str(exc)) from exc
        raise TlsError(exc.verify_message or str(exc)) from exc
    except ssl.SSLError as exc:
        raise TlsError(certificate_refusal(exc) or exc.reason or str(exc)) from exc
    except OSError as exc:
        raise ConnectError(f"connect: {exc}") from exc


def _tcp_socket(sock: Any) -> Any:
    """The TCP (or TLS) socket under paho's: over WebSockets paho's is a wrapper that frames."""
    return sock._socket if isinstance(sock, paho._WebsocketWrapper) else sock


def _pending(sock: Any) -> bool:
    """Whether TLS holds decrypted bytes the kernel no longer reports readable (over WebSockets
    too: paho's wrapper asks its TLS socket)."""
    return isinstance(sock, ssl.SSLSocket | paho._WebsocketWrapper) and sock.pending() > 0


def _client(options: ConnectOptions) -> _BoundedClient:
    v5 = options.protocol == "5"
    websockets = options.transport == "websockets"
    client = _BoundedClient(
        CallbackAPIVersion.VERSION2,
        client_id=options.client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
        transport="websockets" if websockets else "tcp",
    )
    if websockets:
        client.ws_set_options(path=options.websocket_path, headers=dict(options.websocket_headers) or None)
    client.proxy = options.proxy
    client.max_packet = options.max_packet_size
    # +1 leaves room for the offline status at stop; the uplink's window never lets paho queue more.
    client.max_inflight_messages_set(options.max_inflight + 1)
    client.max_queued_messages_set(options.max_inflight + 1)
    client.connect_timeout = options.connect_timeout_s
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls is not None:
        tls = options.tls
        try:
            client.tls_set(
                ca_certs=None if tls.ca_file is None else str(tls.ca_file),  # None: the system's
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ValueError) as exc:
            raise TlsError(f"cannot load TLS files: {exc}") from exc
        client.tls_insecure_set(not tls.verify_hostname)
    will = options.will
    client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    return client


class _PackedOnce(Properties):
    """PUBLISH properties serialised once: paho packs them again for every message (27 name
    lookups each), a fifth of the uplink's CPU per one-reading message."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]  # unannotated in paho
            object.__setattr__(self, "_packed", packed)  # paho's __setattr__ admits property names only
        return packed


class PahoTransport:
    """One broker connection through paho, its socket served by the running event loop."""

    def __init__(self) -> None:
        self._client: _BoundedClient | None = None
        self._listener: TransportListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._misc: asyncio.Task[None] | None = None
        self._props: tuple[PublishProperties, Properties] | None = None
        self._segment: int | None = None  # the socket's TCP segment size (`unsent_bytes`)
        self._refusal: str | None = None  # the last PUBACK's failure reason, if the last was refused

    async def open(self, options: ConnectOptions, listener: TransportListener) -> None:
        if self._client is not None:
            raise UplinkError("a PahoTransport opens one connection; make a new one to reconnect")
        client = self._client = _client(options)
        props = None
        if options.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # unannotated in paho
            props.MaximumPacketSize = options.max_packet_size
        # Through a proxy, the proxy resolves the broker's name (an OT network may have no DNS for
        # the outside); the uplink resolves the proxy's.
        first = options.proxy or options
        client.addresses = tuple(await resolve(first.host, first.port, options.connect_timeout_s))
        with _connect_errors():
            await asyncio.to_thread(
                client.connect, options.host, options.port, options.keepalive_s, properties=props
            )
        self._listener = listener
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        self._attach(misc_period_s=max(0.5, min(5.0, options.keepalive_s / 4)))

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: PublishProperties | None = None,
    ) -> int:
        props = None if properties is None else self._paho_properties(properties)
        info = self._connected().publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish failed: {paho.error_string(info.rc)}")
        mid: int = info.mid
        return mid

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self._connected().subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> int:
        rc, mid = self._connected().unsubscribe(topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise PublishError(f"unsubscribe failed: {paho.error_string(rc)}")
        return int(mid)

    def disconnect(self) -> None:
        self._connected().disconnect()

    def unsent_bytes(self) -> int | None:
        """What was published on this connection and has not left the host: paho's queue and the
        socket's unsent bytes (see "What the link has not taken" in the module docstring)."""
        c, sock = self._client, self._sock
        if c is None or sock is None:
            return None
        if c.want_write():
            # What paho's writer does at the loop's next turn: hand the queue to the socket, so
            # that rows published in one go count as queued only if the kernel cannot take them.
            c.loop_write()
            sock = self._sock
            if sock is None:
                return None  # the write found the connection closed (on_socket_close said it)
        tcp = _tcp_socket(sock)
        kernel = _unsent(tcp)
        if kernel is None:
            return None
        if self._segment is None:
            try:
                self._segment = int(tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
            except OSError:
                return None
        queued: int = sum(packet["to_process"] for packet in c._out_packet)
        if tcp is not sock:  # the WebSocket frame paho's wrapper has not handed to the socket yet
            queued += len(sock._sendbuffer)
        return queued + max(0, kernel - self._segment)

    def abort(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        c = self._client
        if c is not None:
            c.on_socket_close = None
            c.on_socket_register_write = None
            c.on_socket_unregister_write = None
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            sock.close()

    def _connected(self) -> _BoundedClient:
        if self._client is None:
            raise PublishError("not connected")
        return self._client

    def _ev(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise UplinkError("PahoTransport is not attached to a loop")
        return self._loop

    def _paho_properties(self, properties: PublishProperties) -> Properties:
        # The uplink passes the same object for every PUBLISH: convert it once, not per message.
        if self._props is not None and self._props[0] is properties:
            return self._props[1]
        props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.PayloadFormatIndicator = 1 if properties.utf8 else 0
        props.ContentType = properties.content_type
        self._props = (properties, props)
        return props

    # ------------------------------------------------------------------ the socket on the loop

    def _attach(self, misc_period_s: float) -> None:
        """Hand the connected socket to the event loop (on the loop thread, after connect())."""
        c = self._connected()
        loop = self._loop = asyncio.get_running_loop()
        self._sock = c.socket()
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        if self._sock is None:
            # The connection ended within connect() (its CONNECT could not be written).
            self._closed(certificate_refusal(c.tls_failure) or "")
            return
        loop.add_reader(self._sock, self._readable)
        if c.want_write():
            c.loop_write()
        self._misc = loop.create_task(self._misc_loop(misc_period_s), name="mqtt-misc")

    def _readable(self) -> None:
        c = self._connected()
        c.loop_read()
        # Bytes read ahead (`_BoundedClient._sock_recv`), and those TLS decrypted, are not reported
        # readable by the kernel again.
        sock = c.socket()
        while sock is not None and (c.buffered() or _pending(sock)):
            c.loop_read()
            sock = c.socket()

    def _register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._ev().add_writer(sock, self._connected().loop_write)

    def _unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._ev().remove_writer(sock)

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        loop = self._ev()
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self._sock = None
        self._closed("")

    async def _misc_loop(self, period_s: float) -> None:
        # A keepalive timer, not a work poll: paho needs loop_misc() to send PINGREQ and to notice
        # a silent broker.
        c = self._connected()
        while c.socket() is not None:
            await asyncio.sleep(period_s)
            c.note_link_progress()
            c.loop_misc()

    # ------------------------------------------------------------------ paho callbacks (loop thread)

    def _closed(self, reason: str) -> None:
        if self._listener is not None:
            self._listener.on_closed(reason)

    def _on_connect(self, _c: paho.Client, _u: Any, _flags: Any, reason: Any, props: Any) -> None:
        receive_max = getattr(props, "ReceiveMaximum", None)
        valid = isinstance(receive_max, int) and receive_max > 0
        max_packet = getattr(props, "MaximumPacketSize", None)
        if self._listener is not None:
            self._listener.on_connack(
                Connack(
                    reason,
                    receive_max if valid else None,
                    max_packet if isinstance(max_packet, int) and max_packet > 0 else None,
                    getattr(props, "RetainAvailable", 1) != 0,
                )
            )

    def _on_disconnect(self, _c: paho.Client, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        client = self._client
        refused = client.refused if client is not None else None
        tls = None if client is None else client.tls_failure
        if refused:
            self._closed(f"dropped the connection: {refused}")
        elif tls is not None:
            self._closed(certificate_refusal(tls) or f"TLS: {tls.reason or tls}")
        elif getattr(reason, "value", None) == _SESSION_TAKEN_OVER:
            self._closed(f"{TAKEN_OVER} (broker DISCONNECT 0x8E)")
        elif getattr(flags, "is_disconnect_packet_from_server", False):
            self._closed(broker_disconnect(reason, props))
        elif self._refusal is not None:
            self._closed(f"{REFUSED_THEN_CLOSED}: {self._refusal}")
        else:
            self._closed(f"connection lost: {reason}")

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        # The last PUBACK's failure, if it was one: a broker that closes the connection right
        # after refusing a message (an ACL denial) is then not taken for a network fault.
        self._refusal = f"{reason} (0x{reason.value:02X})" if reason.is_failure else None
        if self._listener is not None:
            self._listener.on_puback(mid, reason)

    def _on_unsubscribe(self, _c: paho.Client, _u: Any, mid: int, _reasons: Any, _props: Any) -> None:
        if self._listener is not None:
            self._listener.on_unsuback(mid)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if self._listener is not None:
            self._listener.on_message(msg.topic, bytes(msg.payload))
