"""The ingest: MQTT in, PostgreSQL out, acknowledged only after the commit.

One consumer process = one MQTT client with a persistent session + one database connection:

- **Sharing the load.** On brokers with MQTT 5 shared subscriptions (EMQX, HiveMQ, VerneMQ,
  Mosquitto) every consumer subscribes to `$share/{group}/{topic}` and the broker hands each
  message to one of them. Brokers without them (RabbitMQ's MQTT plugin before 3.13, NATS) get
  static partitions: consumer `i` of `n` subscribes to everything and handles only the streams
  whose (site, gateway, stream) hashes to `i`, acknowledging the others unread (each consumer
  then receives the whole stream; see docs/fleet.md).
- **At least once, ack after commit.** QoS 1 with manual acknowledgement: messages are gathered
  into a batch (up to `batch_messages` or `batch_ms`), committed in one transaction (store.py),
  and only then PUBACKed, in the order they arrived. A crash before the PUBACK means the broker
  delivers them again (persistent session); store.py makes that harmless.
- **Bounded memory.** The broker never has more than `receive_maximum` (MQTT 5) or its prefetch
  (RabbitMQ `mqtt.prefetch`) unacknowledged messages out to us, so what waits between the network
  thread and the writer is bounded by the broker in messages; in bytes, by `inbox_bytes`: past it
  the network thread stops reading the socket (it still sends the PUBACKs and keep-alives) until
  the writer has taken some, and TCP holds the rest at the broker. A batch is at most
  `batch_bytes` of payload as well as `batch_messages`.
- **Fair between gateways.** What was read waits in one queue per gateway (the topic's gateway
  level, the one the broker's ACL binds to the client), and batches are filled from them by deficit
  round-robin in bytes (`fair_quantum_bytes` a turn): a gateway flooding valid messages gets its
  turn like any other, and a quiet gateway's message waits for at most one batch, not for the
  flood ahead of it in the broker's order. The consumer reads ahead of its writer (up to
  `receive_maximum` messages, `inbox_bytes`) so that the quiet gateway's message is in hand. A
  gateway's messages keep their order. Acknowledgements still go in arrival order: a message
  committed before older ones of another gateway is acknowledged with them.
- **Failover.** Several broker URIs are tried in order, sticky to the one that works. PUBACKs are
  only valid on the connection that delivered the message: after a reconnect the old ones are
  dropped (the broker redelivers those messages; they are duplicates by then).
- **A subscription that reads nothing.** A broker that refuses the subscription says so in its
  SUBACK (MQTT 5 `Not authorized (0x87)`, 3.1.1 `0x80`): logged as an error naming the filter, the
  connection closed and tried again with the connect backoff. Mosquitto's `acl_file` (the shipped
  broker) never refuses one: it grants every subscription and withholds what the ACL gives no read
  on, so the ingest warns once per connection when nothing at all (not even a gateway's retained
  `status`) arrived within `silent_warn_s` of the SUBACK.

paho runs in a network thread (`loop()`). The calling thread gathers and parses batches and hands
each to a writer thread, which commits them one at a time in the order received (and checks for
gaps between them): a batch is parsed while the one before is in the database, so one consumer
keeps a core and the database busy at once. At most one parsed batch waits for the writer.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import queue
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from water_edge.centre.burst_log import BurstLog
from water_edge.centre.payload import Message, PayloadError, parse
from water_edge.centre.state_backups import (
    DEFAULT_KEEP,
    DEFAULT_MAX_BYTES,
    MAX_UNPACKED_BYTES,
    BackupError,
    Part,
    is_backup_topic,
    read_part,
    rejected_prefix,
)
from water_edge.centre.store import (
    NEW_STREAMS_PER_DAY,
    STATE_BACKUP_PARTS_MAX_AGE_S,
    BackupLimits,
    BackupOutcome,
    Committed,
    Store,
    StoreError,
    StoreRefusedError,
)

log = structlog.get_logger(__name__)


DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
_SCHEMES: Final = {"mqtt": "mqtt", "tcp": "mqtt", "mqtts": "mqtts", "ssl": "mqtts"}


@dataclass(frozen=True, slots=True)
class Broker:
    """One broker: `mqtt://host[:port]` (plain, 1883) or `mqtts://host[:port]` (TLS, 8883)."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, uri: str) -> Broker:
        """`mqtts://mqtt-a:8883` -> Broker; ValueError naming what is wrong otherwise."""
        expected = f"expected mqtt://host[:port] or mqtts://host[:port] (got {uri!r})"
        text = uri.strip()
        if "://" not in text:
            text = f"mqtt://{text}"  # a bare host[:port], as before schemes were read
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{expected}: {exc}") from None
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise ValueError(f"{expected}: unknown scheme {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError(f"{expected}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
            raise ValueError(f"{expected}: no path, query, fragment or credentials")
        return cls(parts.hostname, port or DEFAULT_PORTS[scheme], scheme == "mqtts")

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class IngestConfig:
    dsn: str
    brokers: tuple[Broker, ...]
    client_id: str
    topic: str = "water/+/+/+"
    group: str = "ingest"
    protocol: Literal["5", "3.1.1"] = "5"
    partition: tuple[int, int] | None = None  # (i, n): static partitions instead of $share
    batch_messages: int = 500
    batch_ms: int = 100
    # Payload bytes a batch gathers at most, and the network thread holds unread by the writer: a
    # gateway may send messages of the broker's maximum size (1 MiB shipped), and up to
    # receive_maximum of them are out to us at once.
    batch_bytes: int = 16 * 1024 * 1024
    inbox_bytes: int = 32 * 1024 * 1024
    # The most MQTT 5 allows: the consumer reads ahead of its writer (bounded by inbox_bytes) so
    # that a quiet gateway's message behind a flood in the broker's order is in hand for the next
    # batch. It was 2,000: a flood of more than that held every other gateway's messages back.
    receive_maximum: int = 65_535
    # Deficit round-robin between gateways: the bytes each gateway's turn adds to what it may put
    # into a batch (a gateway of small messages puts ~200 of them per turn).
    fair_quantum_bytes: int = 64 * 1024
    # New streams rows (a new stream, epoch or site) per gateway in 24 h; past it the messages of
    # another new one are refused (kept in `rejected`, counted in `stream_refusals`). 0: no limit.
    new_streams_per_day: int = NEW_STREAMS_PER_DAY
    # Gateways' learnt-state backups (`.../state_backup`, state_backups.py): an archive's size at
    # most, and the complete backups kept per gateway (the newest).
    max_state_backup_bytes: int = DEFAULT_MAX_BYTES
    keep_state_backups: int = DEFAULT_KEEP
    session_expiry_s: int = 86_400
    gap_timeout_s: float = 300.0
    gap_check_s: float = 10.0
    # Nothing received this long after the SUBACK: `ingest.nothing_received` (0: never warn).
    silent_warn_s: float = 60.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # TLS for mqtts:// brokers, as the agent's [uplink.tls]: the CA of the broker's certificate
    # (None: the system's), this consumer's client certificate and key (mTLS), the name check.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True
    allow_plaintext_password: bool = False  # a password over mqtt:// to a host not on this machine

    def check(self) -> None:
        """ValueError saying what is wrong with the broker list and the TLS options."""
        if not self.brokers:
            raise ValueError("give at least one --broker")
        if self.keep_state_backups < 1:
            raise ValueError("--keep-state-backups must be at least 1")
        if self.max_state_backup_bytes < 1:
            raise ValueError("--max-state-backup-bytes must be at least 1")
        tls = {b.tls for b in self.brokers}
        if len(tls) > 1:
            raise ValueError("every --broker must be mqtts:// or every one mqtt:// (no plain-text fallback)")
        if True in tls:
            if (self.cert_file is None) != (self.key_file is None):
                raise ValueError("--cert-file and --key-file go together")
            for path in (self.ca_file, self.cert_file, self.key_file):
                if path is not None and not path.is_file():
                    raise ValueError(f"{path}: no such file")
            return
        if self.ca_file or self.cert_file or self.key_file:
            raise ValueError("--ca-file, --cert-file and --key-file are for mqtts:// brokers")
        remote = [b.address for b in self.brokers if not b.loopback]
        if self.password is not None and remote and not self.allow_plaintext_password:
            raise ValueError(
                f"refusing to send EDGE_CENTRE_MQTT_PASSWORD in clear to {', '.join(remote)}: use"
                " mqtts:// (the shipped broker is TLS-only), or --allow-plaintext-password on a network"
                " you trust"
            )

    @property
    def subscription(self) -> str:
        if self.partition is None:
            return f"$share/{self.group}/{self.topic}"
        return self.topic


# TLS alerts a broker sends about our client certificate (OpenSSL's reason -> what it means).
_CERTIFICATE_ALERTS: Final = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the broker requires a client certificate (--cert-file, --key-file)",
    "TLSV1_ALERT_UNKNOWN_CA": "the broker does not trust the CA that issued our certificate (unknown CA)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the broker refused our certificate: revoked (its CRL)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the broker refused our certificate: expired or not yet valid",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker refused our certificate (bad certificate)",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the broker refused our certificate (unsupported certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the broker refused our certificate (its log says why)",
}
BACKOFF_MAX_S: Final = 30.0


class TlsFilesError(ValueError):
    """--ca-file, --cert-file or --key-file cannot be read or do not go together."""


def tls_reason(exc: BaseException) -> str:
    """What a TLS error means for the operator, in words rather than OpenSSL's."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the broker's certificate is not accepted: {exc.verify_message or exc}"
            " (--ca-file must be the CA that signed it; the host in --broker must be in it)"
        )
    if isinstance(exc, ssl.SSLError):
        alert = _CERTIFICATE_ALERTS.get(exc.reason or "")
        if alert is not None:
            return f"certificate refused: {alert}"
        if exc.reason == "WRONG_VERSION_NUMBER":
            return "TLS handshake failed: the port does not speak TLS (use mqtt:// for a plain port)"
        return f"TLS error: {exc.reason or exc}"
    return str(exc)


class _Client(paho.Client):
    """paho keeping the TLS error that ended a connection (it reports only 'connection lost'), and
    reading the socket in bulk.

    paho reads one packet per `loop()` (a select and three `recv` calls each): a flood's messages
    then waited in the socket and at the broker, in the broker's order, and no gateway's message
    behind them could be read before them. Here the socket is read 64 KiB at a time and
    `loop_read` takes up to `read_burst` packets, until `hold()` says the inbox is full."""

    tls_failure: ssl.SSLError | None = None
    read_burst = 1000
    hold: Callable[[], bool] = staticmethod(lambda: False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = bytearray()

    @property
    def buffered(self) -> bool:
        """Bytes read from the socket that paho has not taken yet (select() cannot see them)."""
        return bool(self._read_buffer)

    def forget_buffer(self) -> None:
        """A new connection: what the old one left unread is not its data."""
        self._read_buffer.clear()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._read_buffer
        if not buf:
            try:
                data: bytes = super()._sock_recv(max(bufsize, 65536))
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # nothing to read yet: the normal case on a non-blocking socket
            except ssl.SSLError as exc:
                self.tls_failure = exc
                raise
            if len(data) <= bufsize:
                return data  # b"" (closed) included
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 1 PUBLISH without MQTT 5 properties (most of a fleet's), read without paho's
        `Properties`, whose construction was half of reading a message; any other, paho's way."""
        packet = self._in_packet["packet"]
        command = self._in_packet["command"]
        if (
            not self._manual_ack
            or self._protocol != paho.MQTTv5
            or (command & 0x06) >> 1 != 1
            or len(packet) < 5
        ):
            return super()._handle_publish()
        topic_end = 2 + int.from_bytes(packet[0:2], "big")
        if len(packet) < topic_end + 3 or packet[topic_end + 2] != 0:  # a properties length of 0
            return super()._handle_publish()
        mid = int.from_bytes(packet[topic_end : topic_end + 2], "big")
        message = paho.MQTTMessage(mid, bytes(packet[2:topic_end]))
        message.dup = bool(command & 0x08)
        message.qos = 1
        message.retain = bool(command & 0x01)
        message.payload = bytes(packet[topic_end + 3 :])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # manual acknowledgement: the ingest acks after its commit

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Up to `read_burst` packets (paho's own reads one), until none is left or `hold()`."""
        for _ in range(self.read_burst):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                handled: MQTTErrorCode = self._loop_rc_handle(rc)
                return handled
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self.hold():
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_send(self, buf: bytes | bytearray) -> int:
        try:
            sent: int = super()._sock_send(buf)
        except BlockingIOError:
            raise
        except OSError:
            # A broker that refused our certificate sent its alert and closed: the write fails
            # while the alert waits unread on the socket. Read it now.
            sock = self._sock
            if self.tls_failure is None and isinstance(sock, ssl.SSLSocket):
                try:
                    sock.recv(1)
                except ssl.SSLError as exc:
                    if not isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
                        self.tls_failure = exc
                except OSError:
                    pass
            raise
        return sent


@dataclass
class Counters:
    received: int = 0
    committed: int = 0
    duplicates: int = 0
    conflicts: int = 0  # duplicates with other content: two gateways publishing as one
    streams_refused: int = 0  # messages of a gateway past its new_streams_per_day (in `rejected` too)
    readings: int = 0
    events: int = 0
    rejected: int = 0
    other_partition: int = 0
    presence: int = 0
    store_errors: int = 0
    reconnects: int = 0
    subscribe_refused: int = 0  # SUBACKs with a failure reason code
    gaps: int = 0
    # Learnt-state backups: parts held (new), parts held already, backups stored, parts or archives
    # refused (in `rejected` too, not counted in `rejected` here), incomplete backups dropped.
    state_backup_parts: int = 0
    state_backup_duplicates: int = 0
    state_backups_stored: int = 0
    state_backup_rejected: int = 0
    state_backup_dropped: int = 0
    last_lag_s: float = 0.0


@dataclass(frozen=True, slots=True)
class _Delivery:
    n: int  # arrival order on this consumer
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    content_type: str | None  # MQTT 5: says whether the JSON is compressed


# A batch as received, its messages parsed, the ones refused with their reasons, and its parts of
# learnt-state backups (each read, or the reason it cannot be).
_Backups = list[tuple[_Delivery, Part | str]]
_Sorted = tuple[list[_Delivery], list[tuple[_Delivery, Message]], list[tuple[str, str, bytes]], _Backups]
# How often a consumer drops the parts of backups that were never completed (48 h old).
_BACKUP_SWEEP_S: Final = 600.0

# What one delivery is counted for against `inbox_bytes` beyond its payload and topic: the Python
# objects that hold it (measured: ~230 bytes), so that a read-ahead of many tiny messages is bounded too.
_DELIVERY_OVERHEAD: Final = 256


def _held(d: _Delivery) -> int:
    return len(d.payload) + len(d.topic) + _DELIVERY_OVERHEAD


def gateway_of(topic: str) -> str:
    """The gateway a topic `{prefix}/{site}/{gateway}/{stream}` is fair-queued under: its gateway
    level, which the broker's ACL binds to the publishing client (`pattern write water/+/%u/+`), so a
    gateway naming other sites or streams does not get more turns."""
    levels = topic.rsplit("/", 2)
    return levels[1] if len(levels) == 3 else topic


class FairQueue:
    """Deliveries queued per gateway and taken by deficit round-robin in bytes (one thread).

    Each gateway in turn adds `quantum` bytes to its deficit and gives messages, in its own order,
    while the next one fits in it; a gateway whose queue empties leaves the rotation and its deficit
    with it. A batch that fills mid-turn resumes that turn at the next batch."""

    def __init__(self, quantum: int) -> None:
        self.quantum = max(1, quantum)
        self._queues: dict[str, collections.deque[_Delivery]] = {}
        self._turns: collections.deque[str] = collections.deque()  # gateways with something queued
        self._deficit: dict[str, int] = {}
        self._mid_turn = False  # the head's turn was cut short by a full batch
        self.messages = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.messages

    def put(self, d: _Delivery) -> None:
        key = gateway_of(d.topic)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = collections.deque()
            self._turns.append(key)
            self._deficit[key] = 0
        q.append(d)
        self.messages += 1
        self.bytes += len(d.payload)

    def take(self, max_messages: int, max_bytes: int) -> list[_Delivery]:
        """Up to `max_messages` deliveries and (the last one may pass it) `max_bytes` of payload."""
        batch: list[_Delivery] = []
        size = 0
        while self._turns and len(batch) < max_messages and size < max_bytes:
            key = self._turns[0]
            q = self._queues[key]
            if not self._mid_turn:
                self._deficit[key] += self.quantum
            self._mid_turn = False
            deficit = self._deficit[key]
            while q and len(q[0].payload) <= deficit:
                if len(batch) >= max_messages or size >= max_bytes:
                    self._mid_turn = True
                    break
                d = q.popleft()
                deficit -= len(d.payload)
                size += len(d.payload)
                batch.append(d)
            self._deficit[key] = deficit
            if not q:
                del self._queues[key], self._deficit[key]
                self._turns.popleft()
            elif not self._mid_turn:
                self._turns.rotate(-1)
        self.messages -= len(batch)
        self.bytes -= size
        return batch


def partition_of(site: str, gateway: str, stream: str, n: int) -> int:
    """Which of `n` partitions a stream belongs to (stable across processes and runs).

    By stream, not by gateway: seq and gap detection are per stream, and a gateway's busy device
    streams spread over the consumers."""
    return zlib.crc32(f"{site}/{gateway}/{stream}".encode()) % n


class Consumer:
    """One ingest consumer; `run()` until `stop()` (or a signal handler calls it)."""

    def __init__(self, config: IngestConfig, *, on_commit: Callable[[Counters], None] | None = None) -> None:
        self.cfg = config
        self.counters = Counters()
        self._alerts = BurstLog()
        self._store = Store(config.dsn, alerts=self._alerts)
        self._inbox: queue.Queue[_Delivery] = queue.Queue()
        # Bytes held for the writer: in the inbox and the fair queue, not yet in a batch (under
        # _inbox_lock; payload, topic and _DELIVERY_OVERHEAD each).
        self._inbox_bytes = 0
        self._inbox_lock = threading.Lock()
        self._arrived = itertools.count()
        self._fair = FairQueue(config.fair_quantum_bytes)  # the calling thread's
        # Deliveries taken from the inbox, in arrival order, until acknowledged (n, generation, mid,
        # qos: not their payloads, which a commit frees); and those of them committed (by `n`).
        # Batches are committed out of arrival order (fair between gateways), PUBACKs go in it:
        # each commit acknowledges the committed run at the front.
        self._unacked: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self._done: set[int] = set()
        self._ack_lock = threading.Lock()
        # Sorted batches for the writer thread; None tells it to end.
        self._sorted: queue.Queue[_Sorted | None] = queue.Queue(maxsize=1)
        self._writer_failed: BaseException | None = None
        self._stop = threading.Event()
        self._generation = 0
        self._connected = threading.Event()
        self._on_commit = on_commit
        v5 = config.protocol == "5"
        self._refused: str | None = None  # the broker's CONNACK refusal of this attempt
        self._sub_refused: str | None = None  # the broker's SUBACK refusal on this connection
        self._granted_at: float | None = None  # when this connection's SUBACK granted; None: told
        self._heard = False  # a message arrived on this connection
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
        )
        self._client.manual_ack_set(True)
        self._client.hold = lambda: self._inbox_bytes > self.cfg.inbox_bytes
        # Only the network thread writes to the socket: paho writes a packet (the writer thread's
        # PUBACKs) from the calling thread at once unless a write callback is set; it is then queued
        # and loop() sends it. A TLS connection written by one thread while another reads it breaks
        # ("decryption failed or bad record mac" at the broker, and a reconnect).
        self._client.on_socket_register_write = lambda *_a: None
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        if any(b.tls for b in config.brokers):
            try:
                self._client.tls_set(
                    ca_certs=None if config.ca_file is None else str(config.ca_file),  # None: the system's
                    certfile=None if config.cert_file is None else str(config.cert_file),
                    keyfile=None if config.key_file is None else str(config.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise TlsFilesError(f"cannot load the TLS files: {exc}") from exc
            self._client.tls_insecure_set(not config.verify_hostname)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe

    # ------------------------------------------------------------------ network thread

    def _connect_properties(self) -> Properties | None:
        if self.cfg.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        return props

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)  # logged once the connection has ended (`_network`)
            return
        client.subscribe(self.cfg.subscription, qos=1)
        self._connected.set()
        log.info("ingest.connected", session_present=bool(flags.session_present), topic=self.cfg.subscription)

    def _on_subscribe(self, client: paho.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused = [code for code in codes if code.is_failure]
        if not refused:
            self._granted_at = time.monotonic()
            return
        code = refused[0]
        self._sub_refused = f"{code} (0x{code.value:02X})"
        self.counters.subscribe_refused += 1
        log.error(
            "ingest.subscribe_refused",
            topic=self.cfg.subscription,
            reason=self._sub_refused,
            hint="the broker's ACL grants this client (user name or certificate CN) no read on the filter",
        )
        client.disconnect()  # nothing will arrive on this connection: try again, backing off

    def _silence(self) -> None:
        """Once per connection: the subscription was granted but nothing arrived within silent_warn_s."""
        granted = self._granted_at
        if granted is None or self._heard or not self.cfg.silent_warn_s:
            return
        if time.monotonic() - granted >= self.cfg.silent_warn_s:
            self._granted_at = None  # said once
            log.warning(
                "ingest.nothing_received",
                topic=self.cfg.subscription,
                after_s=self.cfg.silent_warn_s,
                hint=(
                    "the broker granted the subscription, yet not even a gateway's retained status "
                    "arrived: no gateway has connected to this broker yet, or its ACL gives this "
                    "client no read on the filter (Mosquitto's acl_file grants every subscription "
                    "and withholds what it may not read)"
                ),
            )

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self._connected.is_set():  # a connection that never came up is reported by `_network`
            failure = self._client.tls_failure
            log.warning("ingest.disconnected", reason=tls_reason(failure) if failure else str(reason))
        self._connected.clear()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._heard = True
        content_type = getattr(msg.properties, "ContentType", None) if msg.properties is not None else None
        delivery = _Delivery(
            next(self._arrived),
            self._generation,
            msg.mid,
            msg.qos,
            msg.topic,
            bytes(msg.payload),
            content_type,
        )
        with self._inbox_lock:
            self._inbox_bytes += _held(delivery)
        self._inbox.put(delivery)

    def _step(self) -> MQTTErrorCode:
        """One turn of the network loop: read, write and keep alive; with the inbox past
        `inbox_bytes`, only write and keep alive (the socket's data waits in TCP and at the broker)."""
        client = self._client
        if self._inbox_bytes <= self.cfg.inbox_bytes or not self._connected.is_set():
            if not client.buffered:
                return client.loop(timeout=0.2)
            rc = client.loop_read()  # already read from the socket: select() would not see it
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_write()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()
            return rc
        rc = self._client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = self._client.loop_misc()
        self._stop.wait(0.02)
        return rc

    def _network(self) -> None:
        index, failures = 0, 0
        brokers = self.cfg.brokers
        while not self._stop.is_set():
            broker = brokers[index % len(brokers)]
            self._client.tls_failure, self._refused, self._sub_refused = None, None, None
            self._client.forget_buffer()
            self._granted_at, self._heard = None, False
            try:
                if self.cfg.protocol == "5":
                    self._client.connect(
                        broker.host,
                        broker.port,
                        keepalive=15,
                        clean_start=False,
                        properties=self._connect_properties(),
                    )
                else:
                    self._client.connect(broker.host, broker.port, keepalive=15)
            except OSError as exc:  # refused, unreachable, or the TLS handshake failed
                index, failures = index + 1, failures + 1
                self._failed(broker, tls_reason(exc), failures)
                continue
            came_up = False
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            while not self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = self._step()
                came_up = came_up or self._connected.is_set()
                self._silence()
            self._generation += 1  # PUBACKs for earlier deliveries are void from here on
            self._connected.clear()
            if self._stop.is_set():
                break
            self.counters.reconnects += 1
            if self._sub_refused is not None:
                # Refused by the ACL, which no reconnect at once changes: the connect backoff.
                failures += 1
                self._backoff(failures, f"the broker refused the subscription: {self._sub_refused}")
                continue
            if came_up:
                # Sticky: the node that worked is tried first again; a failed connect moves on.
                failures = 0
                self._stop.wait(0.2)
                continue
            index, failures = index + 1, failures + 1
            self._failed(broker, self._refusal(broker), failures)

    def _refusal(self, broker: Broker) -> str:
        """Why a connection ended before the broker accepted it."""
        if self._refused is not None:
            hint = (
                " (no such user in the broker's ACL or password file?)" if "authori" in self._refused else ""
            )
            return f"the broker refused the connection: {self._refused}{hint}"
        if self._client.tls_failure is not None:
            return tls_reason(self._client.tls_failure)
        if not broker.tls:
            return "connection closed before the broker answered (a TLS port? use mqtts://)"
        return "connection closed during the TLS handshake or before the broker answered (its log says why)"

    def _failed(self, broker: Broker, reason: str, failures: int) -> None:
        """One line per failed attempt, then a wait that doubles each round, up to BACKOFF_MAX_S."""
        rounds, left = divmod(failures, len(self.cfg.brokers))
        delay = 0.0 if left else min(BACKOFF_MAX_S, 0.5 * 2 ** min(rounds - 1, 10))
        log.warning("ingest.connect_failed", broker=broker.address, reason=reason, retry_in_s=delay)
        if delay:
            self._stop.wait(delay)

    def _backoff(self, failures: int, reason: str) -> None:
        """The same broker again after 0.5 s, doubling with each refusal in a row, up to BACKOFF_MAX_S."""
        delay = min(BACKOFF_MAX_S, 0.5 * 2 ** min(failures - 1, 10))
        log.warning("ingest.resubscribe_later", reason=reason, retry_in_s=delay)
        self._stop.wait(delay)

    # ------------------------------------------------------------------ writer (calling thread)

    def _queue(self, delivery: _Delivery) -> None:
        """From the inbox into the fair queue (and the arrival order the PUBACKs follow)."""
        with self._ack_lock:
            self._unacked.append((delivery.n, delivery.generation, delivery.mid, delivery.qos))
        self._fair.put(delivery)

    def _batch(self) -> list[_Delivery]:
        """The next batch: once something waits, for up to `batch_ms` or until a batch's worth
        waits, then everything read so far into the fair queue, and a batch from it."""
        cfg, fair = self.cfg, self._fair
        if not fair:
            try:
                self._queue(self._inbox.get(timeout=min(1.0, cfg.gap_check_s)))
            except queue.Empty:
                return []
        deadline = time.monotonic() + cfg.batch_ms / 1000
        while len(fair) < cfg.batch_messages and fair.bytes < cfg.batch_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._queue(self._inbox.get(timeout=left))
            except queue.Empty:
                break
        while True:  # what is already read, without waiting: a quiet gateway's message among it
            try:
                self._queue(self._inbox.get_nowait())
            except queue.Empty:
                break
        batch = fair.take(cfg.batch_messages, cfg.batch_bytes)
        with self._inbox_lock:
            self._inbox_bytes -= sum(_held(d) for d in batch)
        return batch

    def _sort(
        self, batch: list[_Delivery]
    ) -> tuple[list[tuple[_Delivery, Message]], list[tuple[str, str, bytes]], _Backups]:
        messages: list[tuple[_Delivery, Message]] = []
        rejected: list[tuple[str, str, bytes]] = []
        backups: _Backups = []
        part = self.cfg.partition
        for d in batch:
            if d.topic.endswith("/status"):
                self.counters.presence += 1
                continue
            levels = d.topic.split("/")
            if part is not None and len(levels) >= 3:
                site, gateway, stream = levels[-3:]
                if partition_of(site, gateway, stream, part[1]) != part[0]:
                    self.counters.other_partition += 1
                    continue
            if is_backup_topic(d.topic):  # a part of a learnt-state backup, never a data message
                try:
                    backups.append((d, read_part(d.topic, d.payload, self.cfg.max_state_backup_bytes)))
                except BackupError as exc:
                    backups.append((d, str(exc)))
                continue
            try:
                messages.append((d, parse(d.topic, d.payload, d.content_type)))
            except PayloadError as exc:
                rejected.append((d.topic, str(exc), d.payload))
                self._alerts.warning("ingest.rejected", topic=d.topic, reason=str(exc))
        return messages, rejected, backups

    def _write(
        self, parsed: list[tuple[_Delivery, Message]], rejected: list[tuple[str, str, bytes]]
    ) -> Committed | None:
        """The batch in one transaction; if the database refuses a value in it, in halves, and each
        message it refuses goes to `rejected` with its reason (never retried forever)."""
        if not (parsed or rejected):
            return None
        parsed, rejected, refusals = self._admit(parsed, rejected)
        try:
            return self._store.commit([m for _, m in parsed], rejected, refusals)
        except StoreRefusedError:
            pass
        refused = list(rejected)
        half = len(parsed) // 2
        done = self._bisect(parsed[:half], refused) + self._bisect(parsed[half:], refused)
        return done + self._store.commit([], refused, refusals) if refused else done

    def _admit(
        self, parsed: list[tuple[_Delivery, Message]], rejected: list[tuple[str, str, bytes]]
    ) -> tuple[
        list[tuple[_Delivery, Message]], list[tuple[str, str, bytes]], list[tuple[str, str, str, int]]
    ]:
        """The batch without the messages of streams their gateway may not make (past
        `new_streams_per_day`), those added to `rejected` with the reason; and their keys."""
        limit = self.cfg.new_streams_per_day
        over = self._store.admit({m.key for _, m in parsed}, limit)
        if not over:
            return parsed, rejected, []
        kept: list[tuple[_Delivery, Message]] = []
        rejected = list(rejected)
        refusals: list[tuple[str, str, str, int]] = []
        for d, m in parsed:
            made = over.get(m.key)
            if made is None:
                kept.append((d, m))
                continue
            reason = (
                f"too many new streams: gateway {m.gateway!r} made {made} in the last 24 h (a new stream,"
                f" epoch or site each; limit {limit}, --new-streams-per-day): stream {m.stream!r}"
                f" epoch {m.epoch} of site {m.site!r} refused"
            )
            rejected.append((d.topic, reason, d.payload))
            refusals.append(m.key)
            self._alerts.warning(
                "ingest.streams_refused",
                site=m.site,
                gateway=m.gateway,
                stream=m.stream,
                epoch=m.epoch,
                seq=m.seq,
                made=made,
                limit=limit,
            )
        return kept, rejected, refusals

    def _bisect(
        self, parsed: list[tuple[_Delivery, Message]], refused: list[tuple[str, str, bytes]]
    ) -> Committed:
        """Commit `parsed`, or where the database refuses it, its halves down to the refused messages
        alone (added to `refused`): a refused message costs a few transactions, not one per message
        of its batch, so a gateway that sends one now and then cannot slow the ingest to a crawl."""
        if not parsed:
            return Committed(0, 0, 0, 0, 0)
        try:
            return self._store.commit([m for _, m in parsed])
        except StoreRefusedError as exc:
            if len(parsed) > 1:
                half = len(parsed) // 2
                return self._bisect(parsed[:half], refused) + self._bisect(parsed[half:], refused)
            d = parsed[0][0]
            reason = f"refused by the database: {exc}"
            refused.append((d.topic, reason, d.payload))
            self._alerts.warning("ingest.rejected", topic=d.topic, reason=reason)
            return Committed(0, 0, 0, 0, 0)

    def _write_backups(self, backups: _Backups) -> None:
        """The batch's parts of learnt-state backups, each in a transaction of its own (after the
        data's: a backup never holds the data up), taken off `backups` as they are done, so that a
        retry after a lost database does not do one twice. Refused ones go to `rejected`."""
        unread = [(d, why) for d, why in backups if isinstance(why, str)]
        if unread:
            self._keep_rejected([(d.topic, why, rejected_prefix(d.payload)) for d, why in unread])
            for d, why in unread:
                self._backup_rejected(d.topic, why)
            backups[:] = [(d, p) for d, p in backups if not isinstance(p, str)]
        cfg = self.cfg
        limits = BackupLimits(cfg.keep_state_backups, cfg.max_state_backup_bytes, MAX_UNPACKED_BYTES)
        while backups:
            d, part = backups[0]
            if not isinstance(part, str):  # (every one is: the unread went to `rejected` above)
                kept = rejected_prefix(d.payload)
                try:
                    outcome = self._store.add_backup_part(part, d.topic, kept, limits)
                except StoreRefusedError as exc:
                    reason = f"refused by the database: {exc}"
                    self._keep_rejected([(d.topic, reason, kept)])
                    outcome = BackupOutcome("rejected", reason)
                self._backup_done(d.topic, part, outcome)
            backups.pop(0)

    def _keep_rejected(self, rows: list[tuple[str, str, bytes]]) -> None:
        """Into `rejected`; one the database refuses even there is logged and dropped, not retried."""
        try:
            self._store.reject(rows)
        except StoreRefusedError as exc:
            log.error("ingest.rejected_not_kept", topics=sorted({t for t, _, _ in rows}), error=str(exc))

    def _backup_rejected(self, topic: str, reason: str) -> None:
        self.counters.state_backup_rejected += 1
        self._alerts.warning("ingest.state_backup_rejected", topic=topic, reason=reason)

    def _backup_done(self, topic: str, part: Part, outcome: BackupOutcome) -> None:
        c = self.counters
        for backup, why in outcome.dropped:
            c.state_backup_dropped += 1
            self._alerts.warning(
                "ingest.state_backup_dropped", site=part.site, gateway=part.gateway, backup=backup, why=why
            )
        if outcome.kind == "duplicate":
            c.state_backup_duplicates += 1
        elif outcome.kind == "rejected":
            self._backup_rejected(topic, outcome.reason or "")
        else:
            c.state_backup_parts += 1
        if outcome.kind == "stored":
            c.state_backups_stored += 1
            log.info(
                "ingest.state_backup_stored",
                site=part.site,
                gateway=part.gateway,
                backup=part.backup,
                bytes=outcome.size,
                files=outcome.files,
                parts=part.parts,
                agent_version=part.agent_version,
                retired=list(outcome.retired),
            )

    def _sweep_backups(self) -> None:
        try:
            dropped = self._store.sweep_backup_parts(STATE_BACKUP_PARTS_MAX_AGE_S)
        except (StoreError, StoreRefusedError) as exc:
            log.warning("ingest.state_backup_sweep_failed", error=str(exc))
            return
        for site, gateway, backup, held in dropped:
            self.counters.state_backup_dropped += 1
            self._alerts.warning(
                "ingest.state_backup_dropped",
                site=site,
                gateway=gateway,
                backup=backup,
                why=f"incomplete ({held} parts held) {STATE_BACKUP_PARTS_MAX_AGE_S // 3600} h after its"
                " first part",
            )

    def _commit(
        self,
        batch: list[_Delivery],
        parsed: list[tuple[_Delivery, Message]],
        rejected: list[tuple[str, str, bytes]],
        backups: _Backups,
    ) -> None:
        messages = [m for _, m in parsed]
        delay = 0.2
        written = False
        done: Committed | None = None
        while True:
            try:
                if not written:
                    done = self._write(parsed, rejected)
                    written = True
                self._write_backups(backups)
                break
            except StoreError as exc:
                self.counters.store_errors += 1
                log.warning("ingest.store_failed", error=str(exc), retry_in_s=delay)
                if self._stop.wait(delay):
                    return  # not acknowledged: the broker delivers it again
                delay = min(delay * 2, 10.0)
        c = self.counters
        c.received += len(batch)
        if done is not None:
            c.committed += done.messages
            c.duplicates += done.duplicates
            c.conflicts += done.conflicts
            c.readings += done.readings
            c.events += done.events
            c.rejected += done.rejected - done.refusals
            c.streams_refused += done.refusals
        if messages:
            c.last_lag_s = max(0.0, time.time() - messages[-1].sent_ns / 1e9)
        self._acknowledge(batch)
        self._alerts.roll()
        if self._on_commit is not None:
            self._on_commit(c)

    def _acknowledge(self, batch: list[_Delivery]) -> None:
        """PUBACK, in arrival order as MQTT requires, every delivery up to the first one not yet
        committed (a flood's older messages may still wait while a quiet gateway's are in)."""
        with self._ack_lock:
            self._done.update(d.n for d in batch)
            unacked, done = self._unacked, self._done
            while unacked and unacked[0][0] in done:
                n, generation, mid, qos = unacked.popleft()
                done.discard(n)
                if generation == self._generation:  # PUBACKs are void on a later connection
                    self._client.ack(mid, qos)

    def _check_gaps(self) -> None:
        try:
            found = self._store.check_gaps(self.cfg.gap_timeout_s)
        except (StoreError, StoreRefusedError) as exc:
            log.warning("ingest.gap_check_failed", error=str(exc))
            return
        for gap in found or ():
            self.counters.gaps += 1
            self._alerts.warning(
                "ingest.gap",
                site=gap.site,
                gateway=gap.gateway,
                stream=gap.stream,
                epoch=gap.epoch,
                first_seq=gap.first_seq,
                last_seq=gap.last_seq,
                explained=gap.explained,
            )
        self._alerts.roll()

    def run(self) -> None:
        net = threading.Thread(target=self._network, name="mqtt", daemon=True)
        writer = threading.Thread(target=self._writer, name="commit", daemon=True)
        net.start()
        writer.start()
        try:
            while not self._stop.is_set():
                batch = self._batch()
                if batch:
                    # Waits while the writer commits the batch before: at most one sorted batch waits.
                    self._offer((batch, *self._sort(batch)), lambda: not self._stop.is_set())
        finally:
            self._stop.set()
            self._offer(None, writer.is_alive)  # it commits what it was handed, then ends
            writer.join(timeout=30)
            net.join(timeout=5)
            self._client.disconnect()
            self._store.close()
            log.info("ingest.stopped", **vars(self.counters))
        if self._writer_failed is not None:
            raise self._writer_failed

    def _offer(self, item: _Sorted | None, keep_trying: Callable[[], bool]) -> None:
        """Hand `item` to the writer once it has room, for as long as `keep_trying()` holds."""
        while keep_trying():
            try:
                self._sorted.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _writer(self) -> None:
        """Commits the sorted batches in the order they were received, with gap checks between.

        An unexpected error ends the ingest, as it did when one thread did both: `run()` raises it."""
        try:
            self._write_batches()
        except BaseException as exc:  # noqa: BLE001  # handed to run(), which raises it
            self._writer_failed = exc
            self._stop.set()

    def _write_batches(self) -> None:
        next_gaps = time.monotonic() + self.cfg.gap_check_s
        next_sweep = next_gaps  # the first soon after the start, then every _BACKUP_SWEEP_S
        next_log = time.monotonic() + 10.0
        while True:
            try:
                item = self._sorted.get(timeout=min(1.0, self.cfg.gap_check_s))
            except queue.Empty:
                pass
            else:
                if item is None:
                    return
                self._commit(*item)
            now = time.monotonic()
            if now >= next_gaps:
                self._check_gaps()
                next_gaps = now + self.cfg.gap_check_s
            if now >= next_sweep:
                self._sweep_backups()
                next_sweep = now + _BACKUP_SWEEP_S
            if now >= next_log:
                log.info("ingest.progress", **vars(self.counters))
                next_log = now + 10.0

    def stop(self) -> None:
        self._stop.set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)
