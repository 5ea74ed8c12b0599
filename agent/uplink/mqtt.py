"""The MQTT uplink: drains the outbox to the broker at QoS 1 and deletes rows only on PUBACK.

`MqttUplink` is the orchestration: connect → serve → reconnect with capped, jittered backoff;
stop (drain within a deadline, then the retained offline status and DISCONNECT); the retained
status topic (`online` after connect, `offline` on stop, and as Last Will on loss). The parts,
one job each:

    transport.py   the seam to an MQTT library: `Transport` (one connection), its events, errors
    connection.py  `PahoTransport`, the real one: paho driven on the asyncio loop (design notes there)
    testing.py     `FakeBroker`/`FakeTransport`: scripted connections for tests without a broker
    session.py     one connection as the uplink sees it: CONNACK, rows in flight, what a PUBACK means
    drain.py       lease → publish → PUBACK → delete on the current session
    lanes.py       the pure lane scheduler: which rows go next (live first, backlog reserve)
    commands.py    the command inbox: size check, bounded queue, the handler worker
    state.py       the connection state (`ConnState`) with the last error and its time
    metrics.py     counters and the ack-rate window; health.py: `UplinkHealth`, what health() returns
    presence.py    the retained status documents (online, offline) and the Last Will
    servers.py     the `[uplink] servers` list and the failover rule (`Rotation`)

Resend and duplicates
    paho 2.x keeps unacknowledged QoS 1 messages in memory across `reconnect()` and sends them
    again (DUP=1) after the next CONNACK, whatever the clean-start flag. If we also resent from the
    outbox, each outage would double every in-flight message. So the outbox is the *only* resend
    source: every connection is a fresh transport with clean start (no broker session), whatever
    the library held in memory is thrown away with it, and after CONNACK the uplink leases again
    from the oldest unacknowledged row. A message is therefore sent at most once per connection;
    duplicates after an outage are bounded by the in-flight window (messages whose PUBACK was
    lost). The centre deduplicates on (stream, seq).

Several brokers (failover)
    With `[uplink] servers = [...]` a failed connect moves to the next server at once; only when
    every server failed in a round does the uplink back off (servers.py). Every node gets the same
    client id and a clean start with no session (Session Expiry 0): a cluster node that takes the
    gateway over has nothing to resume and nothing to reconcile, and a half-open connection left on
    another node is closed by the cluster's client-id takeover. The outbox resends from the oldest
    unacknowledged row, as after any reconnect, so moving nodes loses nothing and duplicates at
    most the in-flight window.

Two lanes, PUBACK failures, commands
    Live rows go out before a backlog, which keeps a reserved share of the window (lanes.py);
    a PUBACK with a failure reason code drops the connection so the row is retried, not skipped
    (session.py). With `on_command`, every connection subscribes (QoS 1) to
    `{prefix}/{site}/{gateway}/cmd/#` and hands messages to the command inbox (commands.py).
    Subscriptions live on the clean-start connection only, so commands sent while the gateway is
    offline are not delivered: the sender watches for the `command_result` event and retries.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from water_edge.agent.secrets import resolve_secret
from water_edge.agent.uplink import presence
from water_edge.agent.uplink.commands import CommandHandler, CommandInbox
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.drain import Drain
from water_edge.agent.uplink.health import UplinkHealth, age_s
from water_edge.agent.uplink.interfaces import Encoder, LeaseAckOutbox
from water_edge.agent.uplink.json_encoding import JsonEncoder
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.servers import Rotation, Server
from water_edge.agent.uplink.session import Session
from water_edge.agent.uplink.state import ConnectionState, ConnState, StateHook
from water_edge.agent.uplink.topics import Topics
from water_edge.agent.uplink.transport import (
    CertificateTimeError,
    ConnectError,
    ConnectOptions,
    PublishProperties,
    TlsError,
    TransportFactory,
)
from water_edge.core.errors import UplinkError
from water_edge.core.reading import now_ns

__all__ = ["CommandHandler", "MqttUplink", "StateHook"]

log = structlog.get_logger(__name__)

STOP_GRACE_S = 5.0
# Room for the fixed header, topic and properties around the largest command payload; commands up
# to twice the limit still reach the inbox, so their refusal is audited and answered.
PACKET_HEADROOM: Final = 4096
MIN_PACKET_SIZE: Final = 64 * 1024
# Longest a wait inside the uplink lasts before it marks itself alive again (for the watchdog;
# `beat_s` shortens it when the watchdog interval is short).
_BEAT_S: Final = 1.0


class MqttUplink:
    """Publishes outbox rows to an MQTT broker, at least once and in order per stream.

    Call `run()` as a task, `notify()` after each outbox append, `stop()` to finish cleanly.
    All methods must be called from the event loop thread that runs `run()`. `transport` makes
    one connection per call (default: paho); `commands` is the command inbox when `on_command`
    is given.
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
        transport: TransportFactory = PahoTransport,
        clock_synchronised: Callable[[], bool | None] | None = None,
    ) -> None:
        self._cfg = config
        self.topics = Topics(config.prefix, site, gateway)
        encoder = encoder or JsonEncoder(self.topics, compression=config.compression)
        self._client_id = config.effective_client_id(site, gateway)
        self._new_transport = transport
        self._clock_synchronised = clock_synchronised
        self._servers = Rotation(config.server_list())
        self._state = ConnectionState(on_state_change)
        self._metrics = UplinkMetrics()
        self.commands = None if on_command is None else CommandInbox(self.topics, on_command)
        self._password = resolve_secret(config.password)
        largest = 0 if self.commands is None else 2 * self.commands.max_bytes
        self._max_packet = max(MIN_PACKET_SIZE, PACKET_HEADROOM + largest)
        self._beat_s = min(beat_s, _BEAT_S)
        props = None if config.protocol != "5" else PublishProperties(encoder.content_type, encoder.utf8)
        self._drain = Drain(
            outbox,
            encoder,
            metrics=self._metrics,
            state=self._state,
            lease_rows=config.lease_rows,
            properties=props,
            beat_s=self._beat_s,
        )
        self._beats = 0
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._stop_deadline = 0.0
        self._session: Session | None = None

    # ------------------------------------------------------------------ public API

    @property
    def heartbeat(self) -> int:
        """Bumped by every pass of the drain, backoff and keepalive: the watchdog's proof of life."""
        return self._beats + self._drain.beats

    def notify(self) -> None:
        """New rows were appended: wake the drain if it is waiting for work."""
        self._drain.notify()

    def health(self) -> UplinkHealth:
        """State and counters for the status socket and the CLI."""
        m, state, session = self._metrics, self._state, self._session
        msg_rate, rdg_rate = m.rates()
        now = now_ns()
        return UplinkHealth(
            state=state.state,
            connected=session is not None and state.state is ConnState.ONLINE,
            broker=self._servers.current.address,
            client_id=self._client_id,
            published=m.published,
            acked=m.acked,
            readings_acked=m.readings_acked,
            inflight=len(session.inflight) if session else 0,
            reconnects=m.reconnects,
            refused=m.refused,
            rejected=m.rejected,
            encode_errors=m.encode_errors,
            ack_errors=m.ack_errors,
            last_error=state.last_error,
            last_error_ns=state.last_error_ns,
            connections=state.connections,
            online_since_ns=state.online_since_ns,
            down_since_ns=state.down_since_ns,
            online_for_s=age_s(state.online_since_ns, now),
            down_for_s=age_s(state.down_since_ns, now),
            last_error_age_s=age_s(state.last_error_ns, now),
            last_ack_age_s=age_s(m.last_ack_ns, now),
            last_ack_ns=m.last_ack_ns,
            ack_rate_msg_s=msg_rate,
            ack_rate_readings_s=rdg_rate,
            backlog_upto_id=m.backlog_upto_id,
            published_live=m.published_live,
            published_backlog=m.published_backlog,
            commands=None if self.commands is None else self.commands.stats(),
            servers=len(self._servers.servers),
            server_index=self._servers.index,
            failovers=self._servers.failovers,
        )

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
        self._drain.wake.set()
        try:
            # The run loop honours the deadline; this bound is the backstop that keeps a stuck
            # connection from holding up shutdown (unacked rows simply stay in the outbox).
            async with asyncio.timeout(drain_timeout_s + STOP_GRACE_S):
                await self._finished.wait()
        except TimeoutError:
            log.warning(
                "uplink.stop_timed_out",
                after_s=drain_timeout_s + STOP_GRACE_S,
                state=self._state.state,
                inflight=len(self._session.inflight) if self._session else 0,
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
            None
            if self.commands is None
            else asyncio.create_task(self.commands.run(), name="uplink-commands")
        )
        try:
            while not self._stop_requested.is_set():
                self._beats += 1
                session = await self._connect(self._servers.current)
                if session is not None:
                    attempt = 0
                    self._servers.worked()
                    await self._serve(session)
                    await self._drain.flush_acks(session)
                    self._servers.lost()
                if self._stop_requested.is_set():
                    break
                if session is None and self._servers.failed():
                    self._metrics.reconnects += 1
                    continue  # the next server of this round, at once
                attempt += 1
                self._metrics.reconnects += 1
                delay = self._backoff(attempt)
                log.info("uplink.backoff", delay_s=round(delay, 3), attempt=attempt)
                await self._sleep_beating(delay)
        finally:
            if worker is not None:
                worker.cancel()
            self._drop_connection()
            self._running = False
            self._stop_requested.clear()
            self._state.to(ConnState.STOPPED)
            self._finished.set()

    # ------------------------------------------------------------------ connection

    async def _connect(self, server: Server) -> Session | None:
        """Connect to `server` and publish the online status; None (the state says why) on failure."""
        cfg = self._cfg
        self._state.to(ConnState.CONNECTING)
        started = time.monotonic()
        transport = self._new_transport()
        session = Session(
            transport,
            cfg.max_inflight,
            metrics=self._metrics,
            state=self._state,
            wake=self._drain.wake.set,
            inbox=self.commands,
        )
        options = ConnectOptions.from_config(
            cfg,
            server,
            self._client_id,
            presence.last_will(self.topics),
            password=self._password,
            max_packet_size=self._max_packet,
        )
        try:
            await transport.open(options, session)
        except TlsError as exc:
            self._fail(ConnState.TLS_ERROR, self._tls_reason(exc))
            return None
        except ConnectError as exc:
            self._fail(ConnState.OFFLINE, str(exc))
            return None
        self._session = session

        reason = await session.wait(session.connack, cfg.connect_timeout_s, self._stop_requested)
        if reason is None or reason.is_failure:
            if reason is not None:
                self._metrics.refused += 1
                self._fail(ConnState.REFUSED, str(reason))
            else:
                self._fail(ConnState.OFFLINE, session.close_reason or "no CONNACK from broker")
            self._drop_connection()
            return None

        if self.commands is not None:
            transport.subscribe(self.topics.commands, qos=1)
        ack = session.publish_status(self.topics.status, presence.online(self.topics))
        status = await session.wait(ack, cfg.connect_timeout_s, self._stop_requested)
        if status is None or status.is_failure:
            self._fail(ConnState.OFFLINE, f"online status not acknowledged: {status or session.close_reason}")
            self._drop_connection()
            return None
        self._state.to(ConnState.ONLINE)
        log.info(
            "uplink.connected",
            server=server.uri,
            protocol=cfg.protocol,
            window=session.window,
            after_s=round(time.monotonic() - started, 3),
        )
        return session

    async def _serve(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        if await self._drain.serve(session, self._stop_requested, lambda: self._stop_deadline):
            await self._finish(session, max(self._stop_deadline - loop.time(), 1.0))
            return
        reason = session.close_reason or "connection closed"
        self._state.fail(ConnState.OFFLINE, reason)
        log.warning("uplink.disconnected", reason=reason, unacked=len(session.inflight))
        self._drop_connection()

    async def _finish(self, session: Session, timeout_s: float) -> None:
        """Clean end of a connection on stop: retained offline status, then DISCONNECT."""
        self._state.to(ConnState.STOPPING)
        if session.inflight:
            log.warning("uplink.stop_with_inflight", unacked=len(session.inflight))
        ack = session.publish_status(self.topics.status, presence.stopped(self.topics))
        closed = asyncio.ensure_future(session.closed.wait())
        waiting: set[asyncio.Future[Any]] = {ack, closed}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when="FIRST_COMPLETED")
            if not session.closed.is_set():
                session.transport.disconnect()
            await asyncio.wait({closed}, timeout=1.0)
        finally:
            closed.cancel()
        await self._drain.flush_acks(session)
        self._drop_connection()
        log.info("uplink.stopped", acked=self._metrics.acked, unacked=len(session.inflight))

    def _tls_reason(self, exc: TlsError) -> str:
        """The TLS error, and when the certificate's dates are the problem, what the clock says."""
        if not isinstance(exc, CertificateTimeError):
            return str(exc)
        now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        synced = None if self._clock_synchronised is None else self._clock_synchronised()
        if synced is False:
            return (
                f"{exc}: the gateway's clock is not synchronised (it reads {now}); the certificate "
                "will be accepted once NTP has set the time"
            )
        return f"{exc} (by the gateway's clock, which reads {now})"

    def _drop_connection(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    def _fail(self, kind: ConnState, reason: str) -> None:
        self._state.fail(kind, reason)
        log.warning("uplink.connect_failed", kind=str(kind), reason=reason, server=self._servers.current.uri)

    # ------------------------------------------------------------------ waiting

    def _backoff(self, attempt: int) -> float:
        lo, hi = self._cfg.reconnect_min_s, self._cfg.reconnect_max_s
        cap = min(hi, lo * 2.0 ** min(attempt, 32))
        return random.uniform(lo, cap)  # noqa: S311 - jitter, not cryptography

    async def _sleep_beating(self, delay_s: float) -> None:
        """Sleep `delay_s` (or until stop), marking the uplink alive at least every second."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay_s
        while not self._stop_requested.is_set():
            left = until - loop.time()
            if left <= 0:
                return
            self._beats += 1
            try:
                async with asyncio.timeout(min(left, self._beat_s)):
                    await self._stop_requested.wait()
            except TimeoutError:
                pass
