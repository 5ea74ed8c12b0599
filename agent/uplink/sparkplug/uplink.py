"""The Sparkplug B uplink: the gateway as one Edge Node (`[uplink] encoding = "sparkplug_b"`).

The same public face as `agent.uplink.mqtt.MqttUplink` (`run`, `stop`, `notify`, `health`,
`heartbeat`, `commands`), the same transport seam, server rotation, connection states and
outbox; what differs is the session. One connection, in order:

1. the next `bdSeq` is stored (bdseq.py); CONNECT with clean start (MQTT 5 Session Expiry 0,
   MQTT 3.1.1 clean session) and the Will = NDEATH carrying that bdSeq, QoS 1, not retained;
2. after CONNACK: subscribe to NCMD, DCMD, the Primary Host's STATE (if one is configured) and the
   signed-command topics (`{prefix}/{site}/{gateway}/cmd/#`), all before any birth;
3. with a Primary Host, wait until its STATE says online (a timestamp not older than the last
   seen); then NBIRTH and the DBIRTHs, then data (drain.py);
4. a valid offline STATE, or NCMD `Node Control/Next Server`: NDEATH, DISCONNECT, next server at
   once; NCMD `Node Control/Rebirth`, the host coming back, or a new metric: births again with the
   same bdSeq, without reconnecting;
5. `stop()`: the last live rows, then an explicit NDEATH (QoS 1) and DISCONNECT. Its PUBACK comes
   after every row published before it, so those rows are released at once.

Rows are acknowledged by the rolling history (history.py), never by PUBACK: DATA is QoS 0.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from water_edge.agent.uplink.commands import CommandHandler, CommandInbox
from water_edge.agent.uplink.config import MqttConfig, SparkplugConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.health import UplinkHealth, age_s
from water_edge.agent.uplink.interfaces import BodyCodec, LeaseAckOutbox
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.servers import Rotation, Server
from water_edge.agent.uplink.sparkplug import payloads
from water_edge.agent.uplink.sparkplug.bdseq import BdSeqStore
from water_edge.agent.uplink.sparkplug.catalog import Catalog
from water_edge.agent.uplink.sparkplug.drain import (
    DeviceStates,
    Outcome,
    SparkplugCounters,
    SparkplugDrain,
    Values,
)
from water_edge.agent.uplink.sparkplug.health import SparkplugHealth
from water_edge.agent.uplink.sparkplug.history import RollingHistory
from water_edge.agent.uplink.sparkplug.host import HostState
from water_edge.agent.uplink.sparkplug.session import CommandCounts, SparkplugSession
from water_edge.agent.uplink.sparkplug.topics import SparkplugTopics, state_topic
from water_edge.agent.uplink.state import ConnectionState, ConnState, StateHook
from water_edge.agent.uplink.topics import Topics
from water_edge.agent.uplink.transport import (
    ConnectError,
    ConnectOptions,
    TlsError,
    TransportFactory,
    Will,
)
from water_edge.core.errors import UplinkError
from water_edge.core.reading import Reading, now_ns

log = structlog.get_logger(__name__)

STOP_GRACE_S: Final = 5.0
HISTORY_FACTOR: Final = 1.5  # rows are kept 1.5 x keep-alive after they went out
_BEAT_S: Final = 1.0


def _no_values() -> Mapping[tuple[str, str], Reading]:
    return {}


def _all_up() -> Mapping[str, bool]:
    return {}


class SparkplugUplink:
    """Publishes the outbox as a Sparkplug B Edge Node (see the module docstring)."""

    def __init__(
        self,
        config: MqttConfig,
        outbox: LeaseAckOutbox,
        site: str,
        gateway: str,
        *,
        catalog: Catalog,
        values: Values = _no_values,
        device_states: DeviceStates = _all_up,
        bdseq_path: Path | None = None,
        on_state_change: StateHook | None = None,
        on_command: CommandHandler | None = None,
        beat_s: float = 1.0,
        transport: TransportFactory = PahoTransport,
        codec: BodyCodec | None = None,
        history_keep_s: float | None = None,
    ) -> None:
        """`history_keep_s` overrides 1.5 x keep-alive (tests only: the keep-alive is at least 5 s)."""
        self._cfg = config
        spb = config.sparkplug or SparkplugConfig()
        self.spb = spb
        self.topics = Topics(config.prefix, site, gateway)  # the signed-command tree
        self.sp_topics = SparkplugTopics(spb.group_id or site, spb.edge_node_id or gateway)
        self._client_id = config.effective_client_id(site, gateway)
        self._new_transport = transport
        self._servers = Rotation(config.server_list())
        self._state = ConnectionState(on_state_change)
        self._metrics = UplinkMetrics()
        self._counters = SparkplugCounters()
        self._commands = CommandCounts()
        self.commands = None if on_command is None else CommandInbox(self.topics, on_command)
        self._bdseq = BdSeqStore(bdseq_path)
        self._host = None if spb.primary_host_id is None else HostState(spb.primary_host_id)
        self._state_topic = None if spb.primary_host_id is None else state_topic(spb.primary_host_id)
        self.catalog = catalog
        self._beat_s = min(beat_s, _BEAT_S)
        keep_s = HISTORY_FACTOR * config.keepalive_s if history_keep_s is None else history_keep_s
        self._keep_s = keep_s
        self._drain = SparkplugDrain(
            outbox,
            catalog,
            self.sp_topics,
            values=values,
            device_states=device_states,
            metrics=self._metrics,
            counters=self._counters,
            state=self._state,
            lease_rows=config.lease_rows,
            backlog_rows_per_s=spb.backlog_rows_per_s,
            beat_s=self._beat_s,
            codec=codec,
        )
        self._beats = 0
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._stop_deadline = 0.0
        self._session: SparkplugSession | None = None

    # ------------------------------------------------------------------ public API

    @property
    def heartbeat(self) -> int:
        return self._beats + self._drain.beats

    def notify(self) -> None:
        self._drain.notify()

    def health(self) -> UplinkHealth:
        m, state, session = self._metrics, self._state, self._session
        msg_rate, rdg_rate = m.rates()
        now = now_ns()
        c, cmd = self._counters, self._commands
        return UplinkHealth(
            state=state.state,
            connected=session is not None and state.state is ConnState.ONLINE,
            broker=self._servers.current.address,
            client_id=self._client_id,
            published=m.published,
            acked=m.acked,
            readings_acked=m.readings_acked,
            inflight=len(session.history) if session else 0,
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
            sparkplug=SparkplugHealth(
                group_id=self.sp_topics.group,
                edge_node_id=self.sp_topics.node,
                primary_host_id=self.spb.primary_host_id,
                host_online=None if self._host is None else self._host.online,
                born=session is not None and session.born,
                bdseq=self._bdseq.current,
                seq=None if session is None else session.seq,
                births=c.births,
                rebirths=c.rebirths,
                device_births=c.device_births,
                device_deaths=c.device_deaths,
                history_rows=len(session.history) if session else 0,
                history_keep_s=self._keep_s,
                historical_rows=c.historical_rows,
                suppressed_dead=c.suppressed_dead,
                commands_rebirth=cmd.rebirths,
                commands_refused=cmd.refused,
                commands_unknown=cmd.unknown,
                commands_invalid=cmd.invalid,
            ),
        )

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Publish what is live, then NDEATH and DISCONNECT (unreleased rows stay in the outbox)."""
        if not self._running:
            return
        self._stop_deadline = asyncio.get_running_loop().time() + drain_timeout_s
        self._stop_requested.set()
        self._drain.wake.set()
        try:
            async with asyncio.timeout(drain_timeout_s + STOP_GRACE_S):
                await self._finished.wait()
        except TimeoutError:
            log.warning("sparkplug.stop_timed_out", after_s=drain_timeout_s + STOP_GRACE_S)
            self._drop()

    async def run(self) -> None:
        if self._running:
            raise UplinkError("SparkplugUplink.run() is already running")
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
                outcome: Outcome | None = None
                if session is not None:
                    attempt = 0
                    self._servers.worked()
                    outcome = await self._serve(session)
                    if outcome in (Outcome.HOST_OFFLINE, Outcome.NEXT_SERVER):
                        self._metrics.reconnects += 1
                        if self._servers.failed():
                            continue  # the next server, at once
                    else:
                        self._servers.lost()
                if self._stop_requested.is_set():
                    break
                if session is None and self._servers.failed():
                    self._metrics.reconnects += 1
                    continue
                attempt += 1
                self._metrics.reconnects += 1
                await self._sleep(self._backoff(attempt))
        finally:
            if worker is not None:
                worker.cancel()
            self._drop()
            self._running = False
            self._stop_requested.clear()
            self._state.to(ConnState.STOPPED)
            self._finished.set()

    # ------------------------------------------------------------------ one connection

    async def _connect(self, server: Server) -> SparkplugSession | None:
        cfg = self._cfg
        self._state.to(ConnState.CONNECTING)
        started = time.monotonic()
        try:
            bdseq = self._bdseq.next()
        except UplinkError as exc:
            self._fail(ConnState.OFFLINE, str(exc))
            return None
        will = Will(self.sp_topics.ndeath, self._death(bdseq), qos=1, retain=False)
        transport = self._new_transport()
        session = SparkplugSession(
            transport,
            self.sp_topics,
            self.catalog,
            history=RollingHistory(self._keep_s, probe_every_s=min(self._keep_s / 3, cfg.keepalive_s / 4)),
            host=self._host,
            state_topic=self._state_topic,
            counts=self._commands,
            wake=self._drain.wake.set,
            inbox=self.commands,
        )
        options = ConnectOptions.from_config(cfg, server, self._client_id, will)
        try:
            await transport.open(options, session)
        except TlsError as exc:
            self._fail(ConnState.TLS_ERROR, str(exc))
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
            self._drop()
            return None
        # Every subscription goes out before any birth (the broker handles them in order).
        transport.subscribe(self.sp_topics.ncmd, qos=1)
        transport.subscribe(self.sp_topics.dcmd_filter, qos=1)
        if self._state_topic is not None:
            transport.subscribe(self._state_topic, qos=1)
        if self.commands is not None:
            transport.subscribe(self.topics.commands, qos=1)
        self._state.to(ConnState.ONLINE)
        log.info(
            "sparkplug.connected",
            server=server.uri,
            bdseq=bdseq,
            node=f"{self.sp_topics.group}/{self.sp_topics.node}",
            after_s=round(time.monotonic() - started, 3),
        )
        return session

    def _death(self, bdseq: int) -> bytes:
        return payloads.ndeath(bdseq, now_ns() // 1_000_000).SerializeToString()

    async def _serve(self, session: SparkplugSession) -> Outcome:
        bdseq = self._bdseq.current
        if bdseq is None:
            raise UplinkError("no bdSeq for the connection")  # _connect sets it first
        if self._host is not None and not await self._host_online(session):
            return await self._leave(
                session, bdseq, Outcome.STOPPED if self._stop_requested.is_set() else None
            )
        outcome = await self._drain.serve(session, bdseq, self._stop_requested, lambda: self._stop_deadline)
        return await self._leave(session, bdseq, outcome)

    async def _host_online(self, session: SparkplugSession) -> bool:
        """Wait, publishing nothing, until the Primary Host is online; False if stopped or closed."""
        log.info("sparkplug.waiting_for_host", host=self.spb.primary_host_id)
        while not session.host_online:
            self._beats += 1
            if session.closed.is_set() or self._stop_requested.is_set():
                return False
            self._drain.wake.clear()
            try:
                async with asyncio.timeout(self._beat_s):
                    await self._drain.wake.wait()
            except TimeoutError:
                pass
        session.host_offline = False  # an offline STATE seen before the go-ahead is history
        return True

    async def _leave(self, session: SparkplugSession, bdseq: int, outcome: Outcome | None) -> Outcome:
        """End the connection: NDEATH first unless it is already gone."""
        if outcome is None or outcome is Outcome.LOST or session.closed.is_set():
            reason = session.close_reason or "connection closed"
            self._state.fail(ConnState.OFFLINE, reason)
            log.warning("sparkplug.disconnected", reason=reason, unreleased=len(session.history))
            self._drop()
            return Outcome.LOST
        if outcome is Outcome.STOPPED:
            self._state.to(ConnState.STOPPING)
        loop = asyncio.get_running_loop()
        timeout = max(self._stop_deadline - loop.time(), 1.0) if outcome is Outcome.STOPPED else 5.0
        ack = session.publish_death(self.sp_topics.ndeath, payloads.ndeath(bdseq, now_ns() // 1_000_000))
        reason = await session.wait(ack, timeout, asyncio.Event())
        if reason is not None and not reason.is_failure:
            # The PUBACK of the death follows every row published before it: all are delivered.
            await self._drain.ack(session.history.release_all_proven())
        if not session.closed.is_set():
            session.transport.disconnect()
            closed = asyncio.ensure_future(session.closed.wait())
            await asyncio.wait({closed}, timeout=1.0)
            closed.cancel()
        if outcome is not Outcome.STOPPED:
            self._state.fail(ConnState.OFFLINE, f"left the server: {outcome}")
        log.info("sparkplug.left", outcome=str(outcome), unreleased=len(session.history))
        self._drop()
        return outcome

    def _drop(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    def _fail(self, kind: ConnState, reason: str) -> None:
        self._state.fail(kind, reason)
        log.warning(
            "sparkplug.connect_failed", kind=str(kind), reason=reason, server=self._servers.current.uri
        )

    def _backoff(self, attempt: int) -> float:
        lo, hi = self._cfg.reconnect_min_s, self._cfg.reconnect_max_s
        return random.uniform(lo, min(hi, lo * 2.0 ** min(attempt, 32)))  # noqa: S311 - jitter

    async def _sleep(self, delay_s: float) -> None:
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


__all__ = ["SparkplugUplink"]
