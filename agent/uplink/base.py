"""What every uplink encoding shares: the connection loop around one encoding's session.

`MqttUplink` (JSON, PUBACK per row) and `SparkplugUplink` (an Edge Node, rows released by the
rolling history) differ in what one connection does; they share everything around it, here:

- the public face the agent uses: `run()`, `stop()`, `notify()`, `heartbeat`, `commands`, `health()`;
- the loop: connect to the current server; on a failed connect the next server at once, a capped
  jittered backoff only once a whole round failed (servers.py); after a lost connection, back off;
- the stop: a deadline the connection honours, and a backstop that drops a stuck connection
  (rows not yet acknowledged simply stay in the outbox);
- the counters and state every encoding reports (`UplinkHealth`).

An encoding implements `_connect(server)` (a session, or None with the state saying why),
`_after_connect(session)` (serve it until it ends; True to move to the next server at once) and
`_inflight()` (rows sent and not yet released).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

import structlog

from water_edge.agent.uplink.commands import CommandHandler, CommandInbox
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.health import UplinkHealth, age_s
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.servers import Rotation, Server
from water_edge.agent.uplink.state import ConnectionState, ConnState, StateHook
from water_edge.agent.uplink.topics import Topics
from water_edge.agent.uplink.transport import (
    BROKER_DISCONNECTED,
    CERTIFICATE_REFUSED,
    REFUSED_THEN_CLOSED,
    TAKEN_OVER,
    ConnectError,
    ConnectOptions,
    Reason,
    TlsError,
    TooLargeError,
    Transport,
    TransportFactory,
    TransportListener,
    publish_packet_size,
)
from water_edge.core.errors import UplinkError
from water_edge.core.reading import now_ns

log = structlog.get_logger(__name__)

STOP_GRACE_S: Final = 5.0
# A connection that ends sooner than this after coming online does not reset the backoff: a
# broker that closes every connection at once (another gateway with the same client id taking it
# over, a publish it denies and drops us for) meets a growing backoff, not a reconnect loop.
STABLE_S: Final = 10.0
# Short connections in a row after which `last_error` says what usually causes them.
FLAPS_TO_EXPLAIN: Final = 3
# Longest a wait inside the uplink lasts before it marks itself alive again (for the watchdog;
# `beat_s` shortens it when the watchdog interval is short).
_BEAT_S: Final = 1.0
# CONNACK reasons with a fix on the gateway's side (MQTT 5 reason codes; paho gives an MQTT 3.1.1
# broker's "unacceptable protocol version", return code 1, as 0x84).
UNSUPPORTED_PROTOCOL_VERSION: Final = 0x84
QOS_NOT_SUPPORTED: Final = 0x9B


class _Drain(Protocol):
    wake: asyncio.Event
    beats: int

    def notify(self) -> None: ...


class _Session(TransportListener, Protocol):
    connack: asyncio.Future[Reason]
    close_reason: str
    max_packet: int | None

    def publish_qos1(self, topic: str, data: bytes) -> asyncio.Future[Reason]: ...

    async def wait(
        self, fut: asyncio.Future[Reason], timeout_s: float, stop: asyncio.Event
    ) -> Reason | None: ...

    def abort(self) -> None: ...


SessionT = TypeVar("SessionT", bound=_Session)


class ConnectionTap(Protocol):
    """Shares the uplink's connection with another part of the agent (the identity keeper renews
    the certificate over it: a second connection under the same client id would close this one).
    Called at every connection; returns the listener to give the transport, which hands the
    session every event that is not the tap's own."""

    def listener(self, session: TransportListener, transport: Transport) -> TransportListener: ...


class UplinkLoop(Generic[SessionT]):
    """The connection loop, stop and shared health of an uplink (see the module docstring)."""

    log_prefix: ClassVar[str] = "uplink"
    _drain: _Drain

    def __init__(
        self,
        config: MqttConfig,
        site: str,
        gateway: str,
        *,
        on_state_change: StateHook | None,
        on_command: CommandHandler | None,
        beat_s: float,
        transport: TransportFactory = PahoTransport,
    ) -> None:
        self._cfg = config
        self.topics = Topics(config.prefix, site, gateway)
        self._client_id = config.effective_client_id(site, gateway)
        self._new_transport = transport
        self._servers = Rotation(config.server_list())
        self._state = ConnectionState(on_state_change)
        self._metrics = UplinkMetrics()
        self.commands = None if on_command is None else CommandInbox(self.topics, on_command)
        self._beat_s = min(beat_s, _BEAT_S)
        self._beats = 0
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._stop_deadline = 0.0
        self._session: SessionT | None = None
        self.tap: ConnectionTap | None = None  # see ConnectionTap (agent.identity_keeper)
        self._one_acked = asyncio.Lock()  # publish_acked: one message in flight at a time

    # ------------------------------------------------------------------ what an encoding adds

    async def _connect(self, server: Server) -> SessionT | None:
        raise NotImplementedError

    async def _after_connect(self, session: SessionT) -> bool:
        """Serve the connection until it ends; True: move to the next server at once."""
        raise NotImplementedError

    def _inflight(self) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    @property
    def heartbeat(self) -> int:
        """Bumped by every pass of the drain, backoff and keepalive: the watchdog's proof of life."""
        return self._beats + self._drain.beats

    def notify(self) -> None:
        """New rows were appended: wake the drain if it is waiting for work."""
        self._drain.notify()

    def _health(self, **encoding: Any) -> UplinkHealth:
        """State and counters every encoding reports; `encoding`: the fields only it has."""
        m, state = self._metrics, self._state
        msg_rate, rdg_rate = m.rates()
        now = now_ns()
        return UplinkHealth(
            state=state.state,
            connected=self._session is not None and state.state is ConnState.ONLINE,
            broker=self._servers.current.address,
            client_id=self._client_id,
            published=m.published,
            acked=m.acked,
            readings_acked=m.readings_acked,
            inflight=self._inflight(),
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
            taken_over=m.taken_over,
            ack_timeouts=m.ack_timeouts,
            **encoding,
        )

    async def publish_acked(self, topic: str, payload: bytes, timeout_s: float) -> Reason | None:
        """Publish one message at QoS 1, not retained, on the live connection, and wait for its PUBACK.

        Returns the PUBACK's reason (a failure such as 0x87 Not authorized when the broker's ACL
        denies the topic: check `is_failure`), or None when nothing was acknowledged: not online
        (connecting, offline, stopping), the connection closed, `stop()` was called, or no PUBACK
        came within `timeout_s`. A message over the broker's Maximum Packet Size (announced in its
        CONNACK or `[uplink] broker_max_packet_size`) raises `TooLargeError` and is not sent: the
        broker would drop the connection for it. Callers share one slot: a second call waits until
        the first has its answer, so such messages never crowd out the outbox's rows. Not an outbox
        row: nothing is resent on the next connection; the caller tries again."""
        async with self._one_acked:
            session = self._session
            if session is None or self._state.state is not ConnState.ONLINE or self._stop_requested.is_set():
                return None
            limit = session.max_packet
            if limit is not None and (size := publish_packet_size(topic, payload, None)) > limit:
                raise TooLargeError(
                    f"{topic}: {size} bytes, over the broker's Maximum Packet Size ({limit}): not sent"
                )
            ack = session.publish_qos1(topic, payload)
            return await session.wait(ack, timeout_s, self._stop_requested)

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Finish cleanly within `drain_timeout_s`: the connection sends what it can and says
        goodbye; what is not acknowledged by then stays in the outbox for next time. If the
        broker is unreachable it returns at once (no waiting for a reconnect)."""
        if not self._running:
            return
        self._stop_deadline = asyncio.get_running_loop().time() + drain_timeout_s
        self._stop_requested.set()
        self._drain.wake.set()
        try:
            # The run loop honours the deadline; this bound is the backstop that keeps a stuck
            # connection from holding up shutdown.
            async with asyncio.timeout(drain_timeout_s + STOP_GRACE_S):
                await self._finished.wait()
        except TimeoutError:
            log.warning(
                f"{self.log_prefix}.stop_timed_out",
                after_s=drain_timeout_s + STOP_GRACE_S,
                state=self._state.state,
                inflight=self._inflight(),
            )
            self._drop_connection()

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after `stop()`."""
        if self._running:
            raise UplinkError(f"{type(self).__name__}.run() is already running")
        self._running = True
        self._finished.clear()
        attempt = 0
        flaps = 0  # connections in a row that ended within STABLE_S
        loop = asyncio.get_running_loop()
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
                    online_at = loop.time()
                    self._servers.worked()
                    moved = await self._after_connect(session)
                    flaps = self._after_loss(session, loop.time() - online_at, flaps)
                    if not flaps:
                        attempt = 0
                    if moved:
                        self._metrics.reconnects += 1
                        if self._servers.failed():
                            continue  # the next server, at once
                    else:
                        self._servers.lost()
                if self._stop_requested.is_set():
                    break
                if session is None and self._servers.failed():
                    self._metrics.reconnects += 1
                    continue  # the next server of this round, at once
                attempt += 1
                self._metrics.reconnects += 1
                delay = self._backoff(attempt)
                log.info(f"{self.log_prefix}.backoff", delay_s=round(delay, 3), attempt=attempt)
                await self._sleep_beating(delay)
        finally:
            if worker is not None:
                worker.cancel()
            self._drop_connection()
            self._running = False
            self._stop_requested.clear()
            self._state.to(ConnState.STOPPED)
            self._finished.set()

    # ------------------------------------------------------------------ helpers

    async def _open(
        self,
        transport: Transport,
        options: ConnectOptions,
        session: SessionT,
        tls_reason: Callable[[TlsError], str] = str,
    ) -> bool:
        """Connect and wait for the CONNACK; False (the state says why) if that failed."""
        listener = session if self.tap is None else self.tap.listener(session, transport)
        try:
            await transport.open(options, listener)
        except TlsError as exc:
            self._fail(ConnState.TLS_ERROR, tls_reason(exc))
            return False
        except ConnectError as exc:
            self._fail(ConnState.OFFLINE, str(exc))
            return False
        self._session = session
        reason = await session.wait(session.connack, self._cfg.connect_timeout_s, self._stop_requested)
        if reason is not None and not reason.is_failure:
            return True
        if reason is not None:
            self._metrics.refused += 1
            self._fail(ConnState.REFUSED, self._refusal(reason))
        elif session.close_reason.startswith(CERTIFICATE_REFUSED):
            # The broker's TLS alert after the handshake (TLS 1.3): the certificate, not the network.
            self._fail(ConnState.TLS_ERROR, session.close_reason)
        else:
            self._fail(ConnState.OFFLINE, session.close_reason or "no CONNACK from broker")
        self._drop_connection()
        return False

    def _refusal(self, reason: Reason) -> str:
        """The broker's reason for refusing the CONNECT, with what to do where the fix is here."""
        text = str(reason)
        if reason.value == UNSUPPORTED_PROTOCOL_VERSION and self._cfg.protocol == "5":
            return f'{text}: the broker does not speak MQTT 5; set [uplink] protocol = "3.1.1"'
        if reason.value == QOS_NOT_SUPPORTED:
            return (
                f"{text}: the broker grants QoS 0 only; the agent sends at QoS 1 to know what arrived "
                "(the data stays in the outbox until a broker takes it)"
            )
        return text

    def _after_loss(self, session: SessionT, lasted_s: float, flaps: int) -> int:
        """Count and explain how a connection ended; the new count of short connections in a row."""
        reason = session.close_reason
        if reason.startswith(TAKEN_OVER):
            self._metrics.taken_over += 1
            log.warning(
                f"{self.log_prefix}.client_id_taken_over",
                client_id=self._client_id,
                after_s=round(lasted_s, 1),
                hint="another client uses this client id (a cloned gateway?)",
            )
        if self._stop_requested.is_set() or lasted_s >= STABLE_S:
            return 0
        flaps += 1
        if flaps >= FLAPS_TO_EXPLAIN and not reason.startswith(TAKEN_OVER):
            short = f"{reason or 'connection lost'}: {flaps} connections in a row ended within {STABLE_S:g} s"
            if reason.startswith((BROKER_DISCONNECTED, REFUSED_THEN_CLOSED)):
                # The broker said why it ended them: no guess at a cloned gateway over its words.
                self._state.error(f"{short}; backing off")
            else:
                self._state.error(
                    f"{short}; if another client uses this client id ({self._client_id}, a cloned "
                    "gateway?) they take it from each other; backing off"
                )
        return flaps

    def _drop_connection(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    def _fail(self, kind: ConnState, reason: str) -> None:
        self._state.fail(kind, reason)
        log.warning(
            f"{self.log_prefix}.connect_failed",
            kind=str(kind),
            reason=reason,
            server=self._servers.current.uri,
        )

    def _backoff(self, attempt: int) -> float:
        lo, hi = self._cfg.reconnect_min_s, self._cfg.reconnect_max_s
        cap = min(hi, lo * 2.0 ** min(attempt, 32))
        return random.uniform(lo, cap)  # noqa: S311 - jitter, not cryptography

    async def _sleep_beating(self, delay_s: float) -> None:
        """Sleep `delay_s` (or until stop), marking the uplink alive at least every beat."""
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
