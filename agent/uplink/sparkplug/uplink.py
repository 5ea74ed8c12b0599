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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from water_edge.agent.secrets import resolve_secret
from water_edge.agent.uplink.base import UplinkLoop
from water_edge.agent.uplink.commands import CommandHandler
from water_edge.agent.uplink.config import MqttConfig, SparkplugConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.health import UplinkHealth
from water_edge.agent.uplink.interfaces import BodyCodec, LeaseAckOutbox
from water_edge.agent.uplink.mqtt import MIN_PACKET_SIZE, PACKET_HEADROOM
from water_edge.agent.uplink.servers import Server
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
from water_edge.agent.uplink.state import ConnState, StateHook
from water_edge.agent.uplink.transport import (
    ConnectOptions,
    TransportFactory,
    Will,
)
from water_edge.core.errors import UplinkError
from water_edge.core.reading import Reading, now_ns

log = structlog.get_logger(__name__)

HISTORY_FACTOR: Final = 1.5  # rows are kept 1.5 x keep-alive after they went out


def _no_values() -> Mapping[tuple[str, str], Reading]:
    return {}


def _all_up() -> Mapping[str, bool]:
    return {}


class SparkplugUplink(UplinkLoop[SparkplugSession]):
    """Publishes the outbox as a Sparkplug B Edge Node (see the module docstring)."""

    log_prefix = "sparkplug"
    _drain: SparkplugDrain

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
        super().__init__(
            config,
            site,
            gateway,
            on_state_change=on_state_change,
            on_command=on_command,
            beat_s=beat_s,
            transport=transport,
        )
        spb = config.sparkplug or SparkplugConfig()
        self.spb = spb
        self.sp_topics = SparkplugTopics(spb.group_id or site, spb.edge_node_id or gateway)
        self._counters = SparkplugCounters()
        self._commands = CommandCounts()
        self._bdseq = BdSeqStore(bdseq_path)
        self._host = None if spb.primary_host_id is None else HostState(spb.primary_host_id)
        self._state_topic = None if spb.primary_host_id is None else state_topic(spb.primary_host_id)
        self.catalog = catalog
        self._password = resolve_secret(config.password)
        self._proxy_password = resolve_secret(config.proxy_password)
        # As the JSON uplink: the broker drops, unannounced, a message over what CONNECT said we take,
        # so a signed command up to the handler's limit must fit (and one over it arrive, to be refused).
        largest = 0 if self.commands is None else 2 * self.commands.max_bytes
        self._max_packet = max(MIN_PACKET_SIZE, PACKET_HEADROOM + largest)
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

    # ------------------------------------------------------------------ public API

    def health(self) -> UplinkHealth:
        session, c, cmd = self._session, self._counters, self._commands
        return self._health(
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
                broker_retains=None if self._host is None or session is None else session.retain_available,
                host_state_ns=(
                    None
                    if self._host is None or self._host.timestamp is None
                    else self._host.timestamp * 10**6
                ),
                backlog_holds=c.backlog_holds,
                backlog_held_s=round(c.backlog_held_s, 3),
            ),
        )

    def _inflight(self) -> int:
        return len(self._session.history) if self._session else 0

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
            error=self._state.error,
            broker_max_packet=cfg.broker_max_packet_size,
        )
        options = ConnectOptions.from_config(
            cfg,
            server,
            self._client_id,
            will,
            password=self._password,
            max_packet_size=self._max_packet,
            proxy_password=self._proxy_password,
        )
        if not await self._open(transport, options, session):
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

    async def _after_connect(self, session: SparkplugSession) -> bool:
        return await self._serve(session) in (Outcome.HOST_OFFLINE, Outcome.NEXT_SERVER)

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
        if not session.retain_available:
            log.warning(
                "sparkplug.broker_keeps_no_retained",
                host=self.spb.primary_host_id,
                why="the host's STATE reaches this node only when the host publishes it: until then "
                "the node is not born (a Sparkplug broker keeps retained messages)",
            )
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
            self._drop_connection()
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
        self._drop_connection()
        return outcome


__all__ = ["SparkplugUplink"]
