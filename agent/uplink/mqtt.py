"""The MQTT uplink: drains the outbox to the broker at QoS 1 and deletes rows only on PUBACK.

How paho is driven
    paho runs *on the asyncio loop* through its external-loop socket callbacks: `add_reader` calls
    `loop_read`, `on_socket_register_write` adds a writer that calls `loop_write`, and a timer task
    calls `loop_misc` (keepalive). There is no paho thread, so every paho callback (CONNACK, PUBACK,
    disconnect) runs on the loop thread and touches our state without locks or
    `call_soon_threadsafe` hops per message, and backoff/reconnect stays entirely ours instead of
    fighting `loop_start()`'s built-in reconnect. The one blocking call, `Client.connect()` (DNS,
    TCP connect, TLS handshake; bounded by `connect_timeout_s`), runs in `asyncio.to_thread`
    before any socket callback is installed.

Resend and duplicates
    paho 2.x keeps unacknowledged QoS 1 messages in `Client._out_messages` across `reconnect()` and
    sends them again (DUP=1) after the next CONNACK, whatever the clean-start flag. If we also
    resent from the outbox, each outage would double every in-flight message. So the outbox is
    the *only* resend source: every connection is a fresh `Client` with clean start (no broker
    session), paho's in-memory copies are thrown away with it, and after CONNACK the uplink leases
    again from the oldest unacknowledged row. A message is therefore sent at most once per
    connection; duplicates after an outage are bounded by the in-flight window (messages whose
    PUBACK was lost). The centre deduplicates on (stream, seq).

Two lanes: live data never waits behind a backlog
    At each CONNACK the uplink notes the newest committed row id (the *split*). Rows up to it are
    the backlog lane, leased oldest first; rows committed after it are the live lane, also oldest
    first. Live rows go out first, but the backlog always keeps a reserved quarter of the
    in-flight window, so after hours offline the centre gets current values at once while the
    backlog drains beside them. Within a lane rows go out in id order, so per stream the seqs of
    each lane arrive ascending; across lanes a stream's live seqs may arrive before its older
    backlog seqs. The centre orders by (stream, seq), never by arrival (docs/durability.md).
    After a PUBACK with a failure reason code (MQTT 5, e.g. not authorised, quota exceeded)
    nothing further on that connection is acknowledged and the connection is dropped, so the
    rejected row is retried after backoff rather than skipped.

Command channel
    With `on_command`, every connection subscribes (QoS 1) to `{prefix}/{site}/{gateway}/cmd/#`
    and hands each message to `on_command(suffix, payload)` through a small bounded queue served
    by one task: the drain never waits for a handler; when the queue is full, or the payload is
    larger than `MAX_COMMAND_BYTES`, the command is dropped, counted and logged. Subscriptions
    live on the clean-start connection only, so commands sent while the gateway is offline are
    not delivered: the sender watches for the `command_result` event and retries.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from water_edge.agent import __version__
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.connection import Connection
from water_edge.agent.uplink.interfaces import EncodeError, Encoder, LeaseAckOutbox
from water_edge.agent.uplink.json_encoding import JsonEncoder
from water_edge.agent.uplink.topics import Topics
from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import BufferError, UplinkError
from water_edge.core.reading import now_ns

log = structlog.get_logger(__name__)

StateHook = Callable[[str], None]
STOP_GRACE_S = 5.0
CommandHandler = Callable[[str, bytes], Awaitable[None]]

_RATE_WINDOW_S = 10.0
# Longest a wait inside the uplink lasts before it marks itself alive again (for the watchdog;
# `beat_s` shortens it when the watchdog interval is short).
_BEAT_S: Final = 1.0
MAX_COMMAND_BYTES: Final = 64 * 1024
COMMAND_QUEUE: Final = 16
COMMAND_TIMEOUT_S: Final = 30.0


@dataclass
class _Lane:
    """Rows leased for one lane of the drain: ids in (cursor, upto], oldest first."""

    cursor: int
    upto: int | None
    pending: deque[OutboxRow] = field(default_factory=deque)
    active: bool = True  # the backlog lane ends when a lease comes back empty


class MqttUplink:
    """Publishes outbox rows to an MQTT broker, at least once and in order per stream.

    Call `run()` as a task, `notify()` after each outbox append, `stop()` to finish cleanly.
    All methods must be called from the event loop thread that runs `run()`.
    """

    def __init__(
        self,
        config: MqttConfig,
        outbox: LeaseAckOutbox,
        site: str,
        gateway: str,
        *,
        encoder: Encoder | None = None,
        on_state_change: StateHook | None = None,
        on_command: CommandHandler | None = None,
        beat_s: float = 1.0,
    ) -> None:
        self._cfg = config
        self._outbox = outbox
        self.topics = Topics(config.prefix, site, gateway)
        self._encoder: Encoder = encoder or JsonEncoder(self.topics)
        self._client_id = config.effective_client_id(site, gateway)
        self._on_state_change = on_state_change
        self._on_command = on_command
        self._commands: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(COMMAND_QUEUE)
        self._cmd_stats = {"received": 0, "handled": 0, "dropped": 0, "rejected": 0, "failed": 0}
        # Bumped by every pass of the drain, backoff and keepalive: the watchdog's proof of life.
        self.heartbeat = 0
        self._beat_s = min(beat_s, _BEAT_S)
        self._split = 0
        self._lane_published = {"live": 0, "backlog": 0}

        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._more = True
        self._running = False
        self._stop_deadline = 0.0
        self._conn: Connection | None = None
        self._acked_ids: list[int] = []

        self._state = "idle"
        self._last_error: str | None = None
        self._published = 0
        self._acked = 0
        self._readings_acked = 0
        self._reconnects = 0
        self._refused = 0
        self._rejected = 0
        self._encode_errors = 0
        self._ack_errors = 0
        self._last_ack_ns: int | None = None
        self._rate: deque[tuple[float, int, int]] = deque()

    # ------------------------------------------------------------------ public API

    def notify(self) -> None:
        """New rows were appended: wake the drain if it is waiting for work."""
        self._more = True
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """Counters and state for the status socket and the CLI."""
        msg_rate, rdg_rate = self._rates()
        return {
            "state": self._state,
            "connected": self._conn is not None and self._state == "online",
            "broker": f"{self._cfg.host}:{self._cfg.port}",
            "client_id": self._client_id,
            "published": self._published,
            "acked": self._acked,
            "readings_acked": self._readings_acked,
            "inflight": len(self._conn.inflight) if self._conn else 0,
            "reconnects": self._reconnects,
            "refused": self._refused,
            "rejected": self._rejected,
            "encode_errors": self._encode_errors,
            "ack_errors": self._ack_errors,
            "last_error": self._last_error,
            "last_ack_ns": self._last_ack_ns,
            "ack_rate_msg_s": msg_rate,
            "ack_rate_readings_s": rdg_rate,
            "backlog_upto_id": self._split,
            "published_live": self._lane_published["live"],
            "published_backlog": self._lane_published["backlog"],
            "commands": dict(self._cmd_stats) if self._on_command is not None else None,
        }

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Finish cleanly: drain, publish the retained offline status, disconnect.

        Within `drain_timeout_s` the uplink keeps sending what the outbox holds (so an event
        appended just before `stop()`, e.g. "agent stopped", still goes out) and waits for the
        in-flight PUBACKs; whatever is not acknowledged by then stays in the outbox for next time.
        If the broker is unreachable it returns at once (no waiting for a reconnect).
        """
        if not self._running:
            return
        self._stop_deadline = asyncio.get_running_loop().time() + drain_timeout_s
        self._stop_requested.set()
        self._wake.set()
        try:
            # The run loop honours the deadline; this bound is the backstop that keeps a stuck
            # connection from holding up shutdown (unacked rows simply stay in the outbox).
            async with asyncio.timeout(drain_timeout_s + STOP_GRACE_S):
                await self._finished.wait()
        except TimeoutError:
            log.warning(
                "uplink.stop_timed_out",
                after_s=drain_timeout_s + STOP_GRACE_S,
                state=self._state,
                inflight=len(self._conn.inflight) if self._conn else 0,
            )
            self._drop_connection()

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff; returns after `stop()`."""
        if self._running:
            raise UplinkError("MqttUplink.run() is already running")
        self._running = True
        self._finished.clear()
        attempt = 0
        worker = (
            asyncio.create_task(self._command_worker(self._on_command), name="uplink-commands")
            if self._on_command is not None
            else None
        )
        try:
            while not self._stop_requested.is_set():
                self.heartbeat += 1
                conn = await self._connect()
                if conn is not None:
                    attempt = 0
                    await self._serve(conn)
                    await self._flush_acks()
                if self._stop_requested.is_set():
                    break
                attempt += 1
                self._reconnects += 1
                delay = self._backoff(attempt)
                log.info("uplink.backoff", delay_s=round(delay, 3), attempt=attempt)
                await self._sleep_beating(delay)
        finally:
            if worker is not None:
                worker.cancel()
            if self._conn is not None:
                self._conn.abort()
                self._conn = None
            self._running = False
            self._stop_requested.clear()
            self._set_state("stopped")
            self._finished.set()

    async def _sleep_beating(self, delay_s: float) -> None:
        """Sleep `delay_s` (or until stop), marking the uplink alive at least every second."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay_s
        while not self._stop_requested.is_set():
            left = until - loop.time()
            if left <= 0:
                return
            self.heartbeat += 1
            try:
                async with asyncio.timeout(min(left, self._beat_s)):
                    await self._stop_requested.wait()
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ commands

    def _on_message(self, _c: paho.Client, _conn: Connection, msg: paho.MQTTMessage) -> None:
        suffix = self.topics.command_suffix(msg.topic)
        stats = self._cmd_stats
        stats["received"] += 1
        if suffix is None or len(msg.payload) > MAX_COMMAND_BYTES:
            stats["rejected"] += 1
            log.warning("uplink.command_rejected", topic=msg.topic, size=len(msg.payload))
            return
        try:
            self._commands.put_nowait((suffix, bytes(msg.payload)))
        except asyncio.QueueFull:
            stats["dropped"] += 1
            log.warning("uplink.command_dropped", command=suffix, reason="handler busy")

    async def _command_worker(self, handler: CommandHandler) -> None:
        while True:
            suffix, payload = await self._commands.get()
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    await handler(suffix, payload)
                self._cmd_stats["handled"] += 1
            except TimeoutError:
                self._cmd_stats["failed"] += 1
                log.error("uplink.command_timeout", command=suffix, after_s=COMMAND_TIMEOUT_S)
            except Exception:
                # Last resort for a plug-in handler: one bad command must not end the channel.
                self._cmd_stats["failed"] += 1
                log.exception("uplink.command_failed", command=suffix)

    # ------------------------------------------------------------------ connection

    def _backoff(self, attempt: int) -> float:
        lo, hi = self._cfg.reconnect_min_s, self._cfg.reconnect_max_s
        cap = min(hi, lo * 2.0 ** min(attempt, 32))
        return random.uniform(lo, cap)  # noqa: S311 - jitter, not cryptography

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        doc: dict[str, Any] = {
            "state": state,
            "site": self.topics.site,
            "gateway": self.topics.gateway,
            "ts": now_ns(),
            "agent": __version__,
        }
        if reason is not None:
            doc["reason"] = reason
        return orjson.dumps(doc)

    def _make_client(self) -> paho.Client:
        cfg = self._cfg
        v5 = cfg.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else True,
        )
        # +1 leaves room for the offline status at stop; our own window never lets paho queue more.
        client.max_inflight_messages_set(cfg.max_inflight + 1)
        client.max_queued_messages_set(cfg.max_inflight + 1)
        client.connect_timeout = cfg.connect_timeout_s
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            tls = cfg.tls
            client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(not tls.verify_hostname)
        client.will_set(self.topics.status, self._status_payload("offline", "lost"), qos=1, retain=True)
        return client

    async def _connect(self) -> Connection | None:
        """Open a connection and publish the online status; None (state says why) on failure."""
        cfg = self._cfg
        self._set_state("connecting")
        started = time.monotonic()
        try:
            client = self._make_client()
        except (OSError, ValueError) as exc:
            self._fail("tls-error", f"cannot load TLS files: {exc}")
            return None
        if not await self._open_socket(client):
            return None

        loop = asyncio.get_running_loop()
        conn = Connection(client, loop, cfg.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.user_data_set(conn)
        self._conn = conn
        conn.attach(misc_period_s=max(0.5, min(5.0, cfg.keepalive_s / 4)))

        reason = await self._wait_for(conn, conn.connack, cfg.connect_timeout_s)
        if reason is None or reason.is_failure:
            if reason is not None:
                self._refused += 1
                self._fail("refused", str(reason))
            else:
                self._fail("offline", conn.close_reason or "no CONNACK from broker")
            self._drop_connection()
            return None

        if self._on_command is not None:
            client.on_message = self._on_message
            client.subscribe(self.topics.commands, qos=1)
        info = client.publish(self.topics.status, self._status_payload("online"), qos=1, retain=True)
        ack = loop.create_future()
        conn.status_acks[info.mid] = ack
        status = await self._wait_for(conn, ack, cfg.connect_timeout_s)
        if status is None or status.is_failure:
            self._fail("offline", f"online status not acknowledged: {status or conn.close_reason}")
            self._drop_connection()
            return None
        self._set_state("online")
        log.info(
            "uplink.connected",
            host=cfg.host,
            port=cfg.port,
            protocol=cfg.protocol,
            window=conn.window,
            after_s=round(time.monotonic() - started, 3),
        )
        return conn

    async def _open_socket(self, client: paho.Client) -> bool:
        """DNS, TCP connect, TLS handshake and CONNECT sent, in a thread (paho does them blocking)."""
        cfg = self._cfg
        try:
            await asyncio.to_thread(client.connect, cfg.host, cfg.port, cfg.keepalive_s)
        except ssl.SSLCertVerificationError as exc:
            self._fail("tls-error", exc.verify_message or str(exc))
            return False
        except ssl.SSLError as exc:
            self._fail("tls-error", exc.reason or str(exc))
            return False
        except OSError as exc:
            self._fail("offline", f"connect: {exc}")
            return False
        return True

    async def _wait_for(
        self, conn: Connection, fut: asyncio.Future[ReasonCode], timeout_s: float
    ) -> ReasonCode | None:
        """The future's result, or None if the connection closes, stop is asked, or time runs out."""
        closed = asyncio.ensure_future(conn.closed.wait())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        waiting: set[asyncio.Future[Any]] = {fut, closed, stop}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            closed.cancel()
            stop.cancel()
        return fut.result() if fut.done() and not fut.cancelled() else None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    # ------------------------------------------------------------------ paho callbacks (loop thread)

    def _on_connect(
        self, _c: paho.Client, conn: Connection, _flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        receive_max = getattr(props, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            # paho ignores the broker's Receive Maximum; exceeding it gets us disconnected.
            conn.window = min(conn.window, receive_max)
        if not conn.connack.done():
            conn.connack.set_result(reason)

    def _on_disconnect(
        self, _c: paho.Client, conn: Connection, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        conn.close_reason = f"connection lost: {reason}"
        conn.closed.set()
        self._wake.set()

    def _on_publish(
        self, _c: paho.Client, conn: Connection, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        row = conn.inflight.pop(mid, None)
        if row is None:
            status = conn.status_acks.pop(mid, None)
            if status is not None and not status.done():
                status.set_result(reason)
            return
        if reason.is_failure or conn.rejected:
            if not conn.rejected:
                conn.rejected = True
                self._rejected += 1
                self._last_error = f"publish of row {row.id} rejected: {reason}"
                log.warning("uplink.rejected", row=row.id, stream=row.stream, reason=str(reason))
                conn.client.disconnect()
            return
        self._acked_ids.append(row.id)
        self._acked += 1
        self._readings_acked += row.count
        self._wake.set()

    # ------------------------------------------------------------------ drain

    async def _serve(self, conn: Connection) -> None:
        """Lease → publish → collect PUBACKs → delete, until the connection ends or stop is done."""
        loop = asyncio.get_running_loop()
        props = self._publish_properties()
        self._split = await self._outbox.last_id()
        backlog = _Lane(cursor=0, upto=self._split)
        live = _Lane(cursor=self._split, upto=None)
        self._more = True
        while True:
            self._wake.clear()
            self.heartbeat += 1
            if conn.closed.is_set():
                self._set_state("offline")
                self._last_error = conn.close_reason or "connection closed"
                log.warning("uplink.disconnected", reason=self._last_error, unacked=len(conn.inflight))
                self._drop_connection()
                return
            progressed = await self._flush_acks()
            stopping = self._stop_requested.is_set()
            idle = (
                not conn.inflight
                and not backlog.active
                and not backlog.pending
                and not live.pending
                and not self._more
            )
            if stopping and (idle or loop.time() >= self._stop_deadline):
                await self._finish(conn, max(self._stop_deadline - loop.time(), 1.0))
                return
            if backlog.active and not backlog.pending:
                progressed |= await self._lease(backlog)
                backlog.active = bool(backlog.pending)
            if not live.pending and self._more and len(conn.inflight) < conn.window:
                self._more = False
                if await self._lease(live):
                    self._more = progressed = True
            progressed |= self._publish_lanes(conn, live, backlog, props)
            if not progressed:
                if not stopping:
                    await self._wait_wake(self._beat_s)
                elif conn.inflight or live.pending or backlog.pending or self._more:
                    await self._wait_wake(min(self._beat_s, max(0.0, self._stop_deadline - loop.time())))

    async def _lease(self, lane: _Lane) -> bool:
        rows = await self._outbox.lease(lane.cursor, self._cfg.lease_rows, lane.upto)
        if rows:
            lane.cursor = rows[-1].id
            lane.pending.extend(rows)
        return bool(rows)

    def _publish_lanes(self, conn: Connection, live: _Lane, backlog: _Lane, props: Properties | None) -> bool:
        """Fill the window: live rows first, but a quarter stays reserved for the backlog."""
        backlog_left = backlog.active or bool(backlog.pending)
        live_cap = conn.window - (max(1, conn.window // 4) if backlog_left else 0)
        live_inflight = sum(1 for row in conn.inflight.values() if row.id > self._split)
        published = False
        while len(conn.inflight) < conn.window and not conn.closed.is_set():
            if live.pending and (live_inflight < live_cap or not backlog.pending):
                lane, name = live, "live"
            elif backlog.pending:
                lane, name = backlog, "backlog"
            else:
                break
            row = lane.pending.popleft()
            if not self._publish(conn, row, props):
                break
            published = True
            self._lane_published[name] += 1
            live_inflight += name == "live"
        return published

    def _publish(self, conn: Connection, row: OutboxRow, props: Properties | None) -> bool:
        """Publish one row; False if the connection can take no more."""
        try:
            msg = self._encoder.encode(row)
        except EncodeError as exc:
            # Left in the outbox (eviction will age it out) rather than wedging its stream.
            self._encode_errors += 1
            self._last_error = str(exc)
            log.error("uplink.encode_failed", row=row.id, stream=row.stream, error=str(exc))
            return True
        info = conn.client.publish(msg.topic, msg.payload, qos=1, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            conn.close_reason = f"publish failed: {paho.error_string(info.rc)}"
            conn.closed.set()
            return False
        conn.inflight[info.mid] = row
        self._published += 1
        return True

    async def _wait_wake(self, timeout_s: float | None) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _finish(self, conn: Connection, timeout_s: float) -> None:
        """Clean end of a connection on stop: retained offline status, then DISCONNECT."""
        self._set_state("stopping")
        if conn.inflight:
            log.warning("uplink.stop_with_inflight", unacked=len(conn.inflight))
        info = conn.client.publish(
            self.topics.status, self._status_payload("offline", "stopped"), qos=1, retain=True
        )
        ack = asyncio.get_running_loop().create_future()
        conn.status_acks[info.mid] = ack
        closed = asyncio.ensure_future(conn.closed.wait())
        waiting: set[asyncio.Future[Any]] = {ack, closed}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when="FIRST_COMPLETED")
            conn.client.disconnect()
            await asyncio.wait({closed}, timeout=1.0)
        finally:
            closed.cancel()
        await self._flush_acks()
        self._drop_connection()
        log.info("uplink.stopped", acked=self._acked, unacked=len(conn.inflight))

    async def _flush_acks(self) -> bool:
        """Delete PUBACKed rows from the outbox in one call; True if there were any."""
        if not self._acked_ids:
            return False
        ids, self._acked_ids = self._acked_ids, []
        try:
            await self._outbox.ack(ids)
        except BufferError as exc:
            # The rows stay and are sent again after the next reconnect: a duplicate, not a loss.
            self._ack_errors += 1
            self._last_error = f"outbox ack failed: {exc}"
            log.error("uplink.ack_failed", rows=len(ids), error=str(exc))
            return True
        self._last_ack_ns = now_ns()
        now = time.monotonic()
        self._rate.append((now, self._acked, self._readings_acked))
        while self._rate and now - self._rate[0][0] > _RATE_WINDOW_S:
            self._rate.popleft()
        return True

    # ------------------------------------------------------------------ small helpers

    def _publish_properties(self) -> Properties | None:
        if self._cfg.protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.PayloadFormatIndicator = 1
        props.ContentType = self._encoder.content_type
        return props

    def _rates(self) -> tuple[float, float]:
        if not self._rate:
            return 0.0, 0.0
        t0, m0, r0 = self._rate[0]
        dt = time.monotonic() - t0
        if dt <= 0 or len(self._rate) < 2:
            return 0.0, 0.0
        _, m1, r1 = self._rate[-1]
        return round((m1 - m0) / dt, 1), round((r1 - r0) / dt, 1)

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state_change is not None:
            self._on_state_change(state)

    def _fail(self, kind: str, reason: str) -> None:
        self._last_error = reason
        self._set_state(f"{kind}: {reason}" if kind != "offline" else "offline")
        log.warning("uplink.connect_failed", kind=kind, reason=reason, host=self._cfg.host)
