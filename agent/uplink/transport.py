"""The seam between the uplink and an MQTT client library: what the uplink needs from one connection.

Shaped like httpx's `AsyncBaseTransport`: `MqttUplink` receives a `TransportFactory` and calls it
once per connection attempt; the connection reports what the broker sends through a
`TransportListener`. `connection.PahoTransport` is the real one (paho on the asyncio loop) and the
default; `testing.FakeBroker` hands out scripted `FakeTransport`s so the lane, ack and command logic
is tested without a broker, while the Mosquitto tests keep testing the real thing.

Events are plain calls on the loop thread, in the order the broker's packets arrive. Reason codes
are passed as the library gives them, as long as they have the `Reason` shape (paho's
`ReasonCode` has it), so the PUBACK path converts nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from water_edge.agent.uplink.config import MqttConfig, TlsConfig
from water_edge.agent.uplink.servers import Server
from water_edge.core.errors import UplinkError
from water_edge.core.http_proxy import Proxy

# How a transport's close reason starts when the broker said (MQTT 5 DISCONNECT 0x8E) that another
# client connected with our client id.
TAKEN_OVER = "session taken over: another client uses this client id"
# How a close reason starts when the broker ended the connection with an MQTT 5 DISCONNECT and a
# reason code (0x97 quota exceeded, 0x89 server busy, 0x9C use another server...), 0x8E aside.
BROKER_DISCONNECTED = "the broker disconnected"
# How a close reason starts when the connection closed right after the broker refused a message (a
# PUBACK with a failure reason code, as Mosquitto sends before it drops a client for an ACL denial).
REFUSED_THEN_CLOSED = "connection closed right after the broker refused a message"
# How a TLS error (a handshake's, or a close reason) starts when the broker sent an alert about this
# gateway's certificate (revoked, expired, unknown CA...): the certificate, not the network, is why.
CERTIFICATE_REFUSED = "the broker refused this gateway's certificate"


def certificate_refused(error: str | None) -> str | None:
    """What the broker said of this gateway's certificate (`revoked`) in an uplink error that
    starts with `CERTIFICATE_REFUSED`; None for any other error."""
    if error is None or not error.startswith(CERTIFICATE_REFUSED + ": "):
        return None
    return error[len(CERTIFICATE_REFUSED) + 2 :].split(" (", 1)[0]


class TransportError(UplinkError):
    """One connection could not be opened or used; the uplink backs off and tries a new one."""


class TlsError(TransportError):
    """The TLS files cannot be loaded or the handshake failed (certificate, hostname, protocol)."""


class CertificateTimeError(TlsError):
    """The broker's certificate is not yet valid or has expired, by this gateway's clock."""


class ConnectError(TransportError):
    """Name resolution, TCP connect or sending CONNECT failed."""


class PublishError(TransportError):
    """The connection cannot take a PUBLISH (closed, or the library's queue is full)."""


class Reason(Protocol):
    """An MQTT reason code; `str()` gives its name ("Success", "Not authorized")."""

    @property
    def value(self) -> int: ...

    @property
    def is_failure(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Will:
    """The Last Will the broker publishes if the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Everything a transport needs to open one connection (from `MqttConfig` and the gateway)."""

    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"]
    keepalive_s: int
    connect_timeout_s: float
    will: Will
    max_inflight: int  # the uplink never has more unacknowledged PUBLISHes (status aside)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None
    # The largest packet the agent takes from the broker: announced as the MQTT 5 Maximum Packet
    # Size (the broker drops bigger messages for us) and enforced on the socket for both protocols.
    max_packet_size: int = 64 * 1024
    transport: Literal["tcp", "websockets"] = "tcp"
    websocket_path: str = "/mqtt"
    websocket_headers: tuple[tuple[str, str], ...] = ()
    proxy: Proxy | None = None  # an HTTP proxy to tunnel through (CONNECT), its password resolved

    @classmethod
    def from_config(
        cls,
        config: MqttConfig,
        server: Server,
        client_id: str,
        will: Will,
        *,
        password: str | None = None,
        max_packet_size: int = 64 * 1024,
        proxy_password: str | None = None,
    ) -> ConnectOptions:
        """Options for one connection to `server` (one of `config.server_list()`); `password` and
        `proxy_password` are the resolved secrets (never the references)."""
        return cls(
            host=server.host,
            port=server.port,
            client_id=client_id,
            protocol=config.protocol,
            keepalive_s=config.keepalive_s,
            connect_timeout_s=config.connect_timeout_s,
            will=will,
            max_inflight=config.max_inflight,
            username=config.username,
            password=password,
            tls=config.tls if server.tls else None,
            max_packet_size=max_packet_size,
            transport=config.transport,
            websocket_path=config.websocket_path,
            websocket_headers=tuple(config.websocket_headers.items()),
            proxy=config.resolved_proxy(proxy_password),
        )


@dataclass(frozen=True, slots=True)
class PublishProperties:
    """The MQTT 5 PUBLISH properties the uplink sets: content type, UTF-8 payload format indicator."""

    content_type: str
    utf8: bool = True


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_packet_size(topic: str, payload: bytes, properties: PublishProperties | None) -> int:
    """The size of the QoS 1 PUBLISH packet carrying `payload` on `topic`, as MQTT 5 counts it
    against a Maximum Packet Size (the whole packet, fixed header included)."""
    props = (
        0 if properties is None else 3 + len(properties.content_type.encode()) + (2 if properties.utf8 else 0)
    )
    remaining = 2 + len(topic.encode()) + 2 + _varint_len(props) + props + len(payload)
    return 1 + _varint_len(remaining) + remaining


class TooLargeError(UplinkError):
    """A message over the broker's Maximum Packet Size, not sent: the broker would drop the
    connection for it, and again at every reconnect."""


def packet_limit(announced: int | None, configured: int | None) -> int | None:
    """The largest packet the broker takes: the smaller of what it announced in its CONNACK (MQTT 5)
    and what the config says of it (`broker_max_packet_size`), None when neither is known."""
    known = [n for n in (announced, configured) if n is not None]
    return min(known) if known else None


@dataclass(frozen=True, slots=True)
class Connack:
    """The broker's answer to CONNECT, with what it announced about itself (MQTT 5 properties;
    None or the default where it said nothing, as an MQTT 3.1.1 broker never does)."""

    reason: Reason
    receive_maximum: int | None = None
    max_packet: int | None = None  # its Maximum Packet Size
    retain_available: bool = True  # False: it keeps no retained messages


class TransportListener(Protocol):
    """What a connection reports, called on the event loop thread."""

    def on_connack(self, connack: Connack) -> None:
        """The broker answered CONNECT."""

    def on_puback(self, mid: int, reason: Reason) -> None:
        """The broker acknowledged the QoS 1 PUBLISH with message id `mid`."""

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message arrived on a subscribed topic."""

    def on_unsuback(self, mid: int) -> None:
        """The broker answered the UNSUBSCRIBE with message id `mid`."""

    def on_closed(self, reason: str) -> None:
        """The connection ended (may come more than once; `reason` is "" when none is known)."""


class Transport(Protocol):
    """One MQTT connection with clean start: opened once, then published on, then closed."""

    async def open(self, options: ConnectOptions, listener: TransportListener) -> None:
        """Connect and send CONNECT (the CONNACK comes as `on_connack`); raise `TlsError`/`ConnectError`."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: PublishProperties | None = None,
    ) -> int:
        """Send one PUBLISH and return its message id; raise `PublishError` if it cannot be sent."""

    def subscribe(self, topic_filter: str, qos: int) -> None:
        """Subscribe on this connection (no broker session outlives it)."""

    def unsubscribe(self, topic_filter: str) -> int:
        """Send UNSUBSCRIBE and return its message id (the UNSUBACK comes as `on_unsuback`);
        raise `PublishError` if the connection cannot take it."""

    def disconnect(self) -> None:
        """Send DISCONNECT (the broker drops the Will); `on_closed` follows."""

    def abort(self) -> None:
        """Close at once without DISCONNECT (the broker publishes the Will); no event follows."""


@runtime_checkable
class QueueGauge(Protocol):
    """An optional capability of a `Transport`: how much of what it was handed has not left the host."""

    def unsent_bytes(self) -> int | None:
        """Bytes published on this connection that the link has not taken yet (the client library's
        queue and the socket's unsent bytes); None when the connection or the platform cannot say."""


TransportFactory = Callable[[], Transport]
