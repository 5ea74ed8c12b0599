"""One Sparkplug connection as the Edge Node sees it: `seq` in wire order, what arrives, what it asks for.

The session numbers every message it publishes except NDEATH (`seq` 0..255, wrapping, NBIRTH
back to 0), stamps its payload timestamp, and listens to the transport: the CONNACK, the PUBACK
of a death, the UNSUBACKs of the history's probes, and messages on the subscribed topics, which
it sorts into the Primary Host's STATE, Sparkplug commands (NCMD/DCMD, decoded and judged here)
and the signed-command channel (handed to the command inbox). What follows from them (a birth, a
rebirth, a move to the next server) is the uplink's decision; the session only raises flags and
wakes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from water_edge.agent.uplink.commands import CommandInbox
from water_edge.agent.uplink.sparkplug.catalog import NEXT_SERVER, REBIRTH, Catalog
from water_edge.agent.uplink.sparkplug.history import RollingHistory
from water_edge.agent.uplink.sparkplug.host import HostState, Verdict
from water_edge.agent.uplink.sparkplug.proto import Payload
from water_edge.agent.uplink.sparkplug.topics import SparkplugTopics
from water_edge.agent.uplink.transport import (
    Connack,
    PublishError,
    Reason,
    TooLargeError,
    Transport,
    packet_limit,
    publish_packet_size,
)
from water_edge.core.reading import now_ns

log = structlog.get_logger(__name__)

__all__ = ["CommandCounts", "SparkplugSession", "TooLargeError"]


@dataclass
class CommandCounts:
    """What became of NCMD/DCMD messages."""

    rebirths: int = 0  # Node Control/Rebirth = true
    next_server: int = 0  # Node Control/Next Server = true
    refused: int = 0  # a write to a known metric: writes go through signed commands only
    unknown: int = 0  # a metric this node does not have
    invalid: int = 0  # not a Sparkplug payload, or a node control that is not Boolean


class SparkplugSession:
    """The `TransportListener` of one connection and the `seq` of what it publishes."""

    def __init__(
        self,
        transport: Transport,
        topics: SparkplugTopics,
        catalog: Catalog,
        *,
        history: RollingHistory,
        host: HostState | None,
        state_topic: str | None,
        counts: CommandCounts,
        wake: Callable[[], None],
        inbox: CommandInbox | None,
        error: Callable[[str], None] = lambda _why: None,
        broker_max_packet: int | None = None,
    ) -> None:
        """`error` notes what the operator must see (`ConnectionState.error`: the status' last error);
        `broker_max_packet` is the broker's packet limit as configured, for brokers that announce none."""
        self.transport = transport
        self.connack: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.history = history
        self.seq = 0
        self.sent = 0  # messages published on this connection (QoS 0 and NDEATH alike)
        self.max_packet: int | None = None  # the broker's Maximum Packet Size, once connected (if known)
        self.retain_available = True  # False: the broker said (MQTT 5) it keeps no retained messages
        self._broker_max_packet = broker_max_packet
        self.born = False
        self.rebirth = False  # asked for by NCMD, the host coming back, or a new metric
        self.host_online = False  # a valid online STATE arrived on this connection
        self.host_offline = False  # a valid offline STATE arrived: leave this server
        self.next_server = False  # NCMD Node Control/Next Server
        self._topics = topics
        self._catalog = catalog
        self._host = host
        self._state_topic = state_topic
        self._counts = counts
        self._wake = wake
        self._inbox = inbox
        self._error = error
        self._acks: dict[int, asyncio.Future[Reason]] = {}

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: Payload, *, birth: bool = False) -> bool:
        """Publish at QoS 0 with the next `seq` (0 for an NBIRTH); False (session closed) if it cannot.

        `TooLargeError` if the broker would not take it: nothing is sent and `seq` stays."""
        if birth:
            self.seq = 0
        payload.seq = self.seq
        payload.timestamp = now_ns() // 1_000_000
        data = payload.SerializeToString()
        if self.max_packet is not None and (size := publish_packet_size(topic, data, None)) > self.max_packet:
            limit = self.max_packet
            raise TooLargeError(f"{topic}: {size} bytes, over the broker's Maximum Packet Size ({limit})")
        try:
            self.transport.publish(topic, data, 0)
        except PublishError as exc:
            self.on_closed(str(exc))
            return False
        self.seq = (self.seq + 1) % 256
        self.sent += 1
        return True

    def publish_death(self, topic: str, payload: Payload) -> asyncio.Future[Reason]:
        """The explicit NDEATH at QoS 1 (no `seq`); the future gets its PUBACK reason."""
        return self.publish_qos1(topic, payload.SerializeToString())

    def publish_qos1(self, topic: str, data: bytes) -> asyncio.Future[Reason]:
        """`data` at QoS 1, not retained, outside Sparkplug's `seq` (an NDEATH, a state backup's
        part); the future gets its PUBACK reason (never, if the connection closes first)."""
        ack: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        try:
            self._acks[self.transport.publish(topic, data, 1)] = ack
        except PublishError as exc:
            self.on_closed(str(exc))
        return ack

    def probe(self, now: float) -> None:
        """Ask the broker for a receipt of everything published so far (history.py)."""
        try:
            mid = self.transport.unsubscribe(self._topics.probe)
        except PublishError as exc:
            self.on_closed(str(exc))
            return
        self.history.probe_sent(mid, now)

    async def wait(self, fut: asyncio.Future[Any], timeout_s: float, stop: asyncio.Event) -> Any:
        """The future's result, or None if the connection closes, `stop` is set, or time runs out."""
        closed = asyncio.ensure_future(self.closed.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({fut, closed, stopping}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            closed.cancel()
            stopping.cancel()
        return fut.result() if fut.done() and not fut.cancelled() else None

    def abort(self) -> None:
        self.transport.abort()
        self.closed.set()

    # ------------------------------------------------------------------ TransportListener

    def on_connack(self, connack: Connack) -> None:
        self.max_packet = packet_limit(connack.max_packet, self._broker_max_packet)
        self.retain_available = connack.retain_available
        if not self.connack.done():
            self.connack.set_result(connack.reason)

    def on_puback(self, mid: int, reason: Reason) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(reason)

    def on_unsuback(self, mid: int) -> None:
        if self.history.probe_answered(mid):
            self._wake()

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._state_topic and self._host is not None:
            self._on_state(payload)
        elif topic == self._topics.ncmd:
            self._on_command(None, payload)
        elif (device := self._topics.dcmd_device(topic)) is not None:
            self._on_command(device, payload)
        elif self._inbox is not None:
            self._inbox.offer(topic, payload)
        self._wake()

    def on_closed(self, reason: str) -> None:
        if reason:
            self.close_reason = reason
        self.closed.set()
        self._wake()

    # ------------------------------------------------------------------ what arrives

    def _on_state(self, payload: bytes) -> None:
        assert self._host is not None  # checked by the caller
        verdict = self._host.verdict(payload)
        if verdict is Verdict.IGNORED:
            # The node may wait for ever on a host that speaks another STATE: the status says why.
            self._error(f"STATE of Primary Host {self._host.host_id} ignored: {self._host.why}")
        elif verdict is Verdict.OFFLINE:
            self.host_online = False
            self.host_offline = True
            log.warning("sparkplug.host_offline", host=self._host.host_id, timestamp=self._host.timestamp)
        elif verdict in (Verdict.ONLINE, Verdict.BACK):
            if self.born and verdict is Verdict.BACK:
                self.rebirth = True
                log.info("sparkplug.host_back", host=self._host.host_id, timestamp=self._host.timestamp)
            self.host_online = True

    def _on_command(self, device: str | None, payload: bytes) -> None:
        counts = self._counts
        try:
            command = Payload.FromString(payload)
        except DecodeError:
            counts.invalid += 1
            log.warning("sparkplug.command_invalid", device=device, size=len(payload))
            return
        for metric in command.metrics:
            name = metric.name
            if not name and metric.HasField("alias"):
                found = self._catalog.by_alias.get(metric.alias)
                name = found[1].name if found is not None and found[0] == device else ""
            if device is None and name in (REBIRTH, NEXT_SERVER):
                if metric.WhichOneof("value") != "boolean_value":
                    # Both are Boolean: an Int 1 or a String "true" from a custom host is not
                    # obeyed, and the host's author has to be able to see why.
                    counts.invalid += 1
                    log.warning(
                        "sparkplug.command_invalid",
                        device=None,
                        metric=name,
                        value=metric.WhichOneof("value"),
                    )
                elif metric.boolean_value and name == REBIRTH:
                    counts.rebirths += 1
                    self.rebirth = True
                elif metric.boolean_value:
                    counts.next_server += 1
                    self.next_server = True
                continue
            if name and self._catalog.metric(device, name) is not None:
                counts.refused += 1
                log.warning("sparkplug.write_refused", device=device, metric=name)
            else:
                counts.unknown += 1
                log.warning("sparkplug.command_unknown_metric", device=device, metric=name or metric.alias)
