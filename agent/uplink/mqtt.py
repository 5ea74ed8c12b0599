"""The MQTT uplink: drains the outbox to the broker at QoS 1 and deletes rows only on PUBACK.

`MqttUplink` is one connection of the JSON encoding: CONNECT with the Last Will, the retained
status topic (`online` after connect, `offline` on stop, and as Last Will on loss), the drain, and
the clean end on stop (drain within a deadline, the retained offline status, DISCONNECT). The loop
around connections (reconnect with capped, jittered backoff, failover, stop) is shared with the
Sparkplug uplink in base.py. The parts, one job each:

    base.py        `UplinkLoop`: the connection loop, stop, CONNACK handling, shared health
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
    a row the broker refuses (a PUBACK with a failure reason code, such as 0x87 when an ACL denies
    its topic) stays in the outbox and is offered again with backoff while the other rows flow on
    the same connection (session.py, drain.py). With `on_command`, every connection subscribes (QoS 1) to
    `{prefix}/{site}/{gateway}/cmd/#` and hands messages to the command inbox (commands.py).
    Subscriptions live on the clean-start connection only, so commands sent while the gateway is
    offline are not delivered: the sender watches for the `command_result` event and retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from water_edge.agent.secrets import resolve_secret
from water_edge.agent.uplink import presence
from water_edge.agent.uplink.base import UplinkLoop
from water_edge.agent.uplink.commands import CommandHandler
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.drain import Drain
from water_edge.agent.uplink.health import UplinkHealth
from water_edge.agent.uplink.interfaces import Encoder, LeaseAckOutbox
from water_edge.agent.uplink.json_encoding import JsonEncoder
from water_edge.agent.uplink.servers import Server
from water_edge.agent.uplink.session import Session
from water_edge.agent.uplink.state import ConnState, StateHook
from water_edge.agent.uplink.transport import (
    CertificateTimeError,
    ConnectOptions,
    PublishProperties,
    TlsError,
    TransportFactory,
)

__all__ = ["CommandHandler", "MqttUplink", "StateHook"]

log = structlog.get_logger(__name__)

# Room for the fixed header, topic and properties around the largest command payload; commands up
# to twice the limit still reach the inbox, so their refusal is audited and answered.
PACKET_HEADROOM: Final = 4096
MIN_PACKET_SIZE: Final = 64 * 1024
# MQTT 5 CONNACK reason "Retain not supported": the broker refused the retained Will.
RETAIN_NOT_SUPPORTED: Final = 0x9A
# MQTT 5 PUBACK reason "Not authorized": an ACL denies the topic.
NOT_AUTHORIZED: Final = 0x87
CLOSED_AT_CONNECT_TO_EXPLAIN: Final = 3


def _refused(session: Session, code: int) -> bool:
    """The broker answered CONNECT with reason `code`."""
    connack = session.connack
    return connack.done() and not connack.cancelled() and connack.result().value == code


class MqttUplink(UplinkLoop[Session]):
    """Publishes outbox rows to an MQTT broker, at least once and in order per stream.

    Call `run()` as a task, `notify()` after each outbox append, `stop()` to finish cleanly.
    All methods must be called from the event loop thread that runs `run()`. `transport` makes
    one connection per call (default: paho); `commands` is the command inbox when `on_command`
    is given. `epoch` is the outbox's (`AsyncOutbox.epoch`), sent in every message.
    """

    _drain: Drain

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
        epoch: int = 0,
    ) -> None:
        super().__init__(
            config,
            site,
            gateway,
            on_state_change=on_state_change,
            on_command=on_command,
            beat_s=beat_s,
            transport=transport,
        )
        encoder = encoder or JsonEncoder(self.topics, compression=config.compression, epoch=epoch)
        self._clock_synchronised = clock_synchronised
        self._password = resolve_secret(config.password)
        self._proxy_password = resolve_secret(config.proxy_password)
        self._no_retain: set[str] = set()  # servers that refused a retained Will (MQTT 5: 0x9A)
        self._retained = config.retain  # whether this connection's status messages are retained
        self._closed_at_connect = 0  # connections in a row the broker closed before its CONNACK
        largest = 0 if self.commands is None else 2 * self.commands.max_bytes
        self._max_packet = max(MIN_PACKET_SIZE, PACKET_HEADROOM + largest)
        props = None if config.protocol != "5" else PublishProperties(encoder.content_type, encoder.utf8)
        self._drain = Drain(
            outbox,
            encoder,
            metrics=self._metrics,
            state=self._state,
            lease_rows=config.lease_rows,
            properties=props,
            beat_s=self._beat_s,
            retry_min_s=config.reconnect_min_s,
            retry_max_s=config.reconnect_max_s,
            ack_timeout_s=config.ack_timeout_s,
        )

    # ------------------------------------------------------------------ public API

    def health(self) -> UplinkHealth:
        """State and counters for the status socket and the CLI."""
        refusals = self._drain.refusals
        return self._health(
            refused_streams=len(refusals.parked),
            held_back=refusals.waiting,
            refusals=refusals.streams(),
            retained_status=self._retained,
        )

    def _inflight(self) -> int:
        return len(self._session.inflight) if self._session else 0

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
            broker_max_packet=cfg.broker_max_packet_size,
        )
        retain = cfg.retain and server.uri not in self._no_retain
        options = ConnectOptions.from_config(
            cfg,
            server,
            self._client_id,
            presence.last_will(self.topics, retain=retain),
            password=self._password,
            max_packet_size=self._max_packet,
            proxy_password=self._proxy_password,
        )
        if not await self._open(transport, options, session, self._tls_reason):
            if retain and _refused(session, RETAIN_NOT_SUPPORTED):
                self._no_retain.add(server.uri)
                log.warning(
                    "uplink.retain_not_supported",
                    server=server.uri,
                    hint="the broker keeps no retained messages: the status topic is sent without "
                    "retain, seen only by subscribers connected when it is sent",
                )
                return await self._connect(server)
            self._explain_closed_at_connect(session, retain)
            return None
        self._retained = retain
        self._closed_at_connect = 0

        if self.commands is not None:
            transport.subscribe(self.topics.commands, qos=1)
        ack = session.publish_status(self.topics.status, presence.online(self.topics), retain=retain)
        status = await session.wait(ack, cfg.connect_timeout_s, self._stop_requested)
        if status is None or status.is_failure:
            why = f"online status not acknowledged: {status or session.close_reason}"
            if status is not None and status.value == NOT_AUTHORIZED:
                # The ACL binds the topics to the certificate: a site or id in the config other than
                # the certificate's is refused here, on the first topic the gateway publishes.
                why += (
                    f" (the broker's ACL does not let this gateway publish {self.topics.status}: do "
                    "[gateway] site and id match the certificate's? edge-agent check-config says)"
                )
            self._fail(ConnState.OFFLINE, why)
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

    def _explain_closed_at_connect(self, session: Session, retain: bool) -> None:
        """MQTT 3.1.1 brokers close the connection without a word at a CONNECT they will not take:
        after a few in a row, say what commonly causes it."""
        if session.connack.done() or not session.closed.is_set():
            self._closed_at_connect = 0
            return
        self._closed_at_connect += 1
        if self._closed_at_connect >= CLOSED_AT_CONNECT_TO_EXPLAIN and self._cfg.protocol == "3.1.1":
            cause = (
                "a broker that keeps no retained messages does that at the agent's retained Last Will "
                "([uplink] retain = false); "
                if retain
                else ""
            )
            self._state.error(
                f"{session.close_reason or 'connection closed'}: the broker closed the connection at "
                f"CONNECT {self._closed_at_connect} times in a row without a CONNACK; {cause}the "
                "broker's log says why"
            )

    async def _after_connect(self, session: Session) -> bool:
        await self._serve(session)
        await self._drain.flush_acks(session)
        return False

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
        ack = session.publish_status(self.topics.status, presence.stopped(self.topics), retain=self._retained)
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
