"""One broker connection as the uplink sees it: the CONNACK, the rows in flight, the PUBACKs to act on.

A `Session` is the `TransportListener` of one transport and lives exactly as long as the
connection: what is in flight on it dies with it, and the next connection leases again from the
outbox. A PUBACK deletes a row (through `take_acked`) only with a success reason code. A row the
broker refuses (a PUBACK with a failure reason code: 0x87 an ACL denies its topic, 0x97 quota
exceeded, 0x99 payload format invalid, 0x80...) stays in the outbox and goes to `refused`, for the
drain to set its stream aside and try again later (drain.py); the connection and every other row
go on, so a denied topic neither loses data nor blocks the streams the broker takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from water_edge.agent.uplink.commands import CommandInbox
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.state import ConnectionState
from water_edge.agent.uplink.transport import (
    Connack,
    PublishError,
    PublishProperties,
    Reason,
    Transport,
    packet_limit,
)
from water_edge.buffer.types import OutboxRow

log = structlog.get_logger(__name__)


class Session:
    """What is in flight on one connection; the listener of its transport's events."""

    def __init__(
        self,
        transport: Transport,
        window: int,
        *,
        metrics: UplinkMetrics,
        state: ConnectionState,
        wake: Callable[[], None],
        inbox: CommandInbox | None = None,
        broker_max_packet: int | None = None,
    ) -> None:
        """`broker_max_packet`: the broker's packet limit as configured, for brokers that announce none."""
        self.transport = transport
        self.window = window
        self.connack: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.inflight: dict[int, OutboxRow] = {}
        self.refused: list[tuple[OutboxRow, str, str]] = []  # (row, topic, reason), for the drain
        self._topics: dict[int, str] = {}  # the topic of each row in flight, to name a refusal
        self.max_packet: int | None = None  # the broker's Maximum Packet Size, once connected (if known)
        self._broker_max_packet = broker_max_packet
        self._status_acks: dict[int, asyncio.Future[Reason]] = {}
        self._acked_ids: list[int] = []
        self._metrics = metrics
        self._state = state
        self._wake = wake
        self._inbox = inbox

    # ------------------------------------------------------------------ what the uplink does

    def publish_row(
        self, row: OutboxRow, topic: str, payload: bytes, props: PublishProperties | None
    ) -> bool:
        """Publish one row at QoS 1; False (and the session closed) if the connection cannot take it."""
        try:
            mid = self.transport.publish(topic, payload, 1, False, props)
        except PublishError as exc:
            self.on_closed(str(exc))
            return False
        self.inflight[mid] = row
        self._topics[mid] = topic
        return True

    def publish_status(self, topic: str, payload: bytes, *, retain: bool = True) -> asyncio.Future[Reason]:
        """Publish a status message (retained unless the broker keeps none); the future gets its
        PUBACK reason (never, if closed)."""
        ack: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        try:
            self._status_acks[self.transport.publish(topic, payload, 1, retain)] = ack
        except PublishError as exc:
            self.on_closed(str(exc))
        return ack

    def publish_qos1(self, topic: str, data: bytes) -> asyncio.Future[Reason]:
        """A message that is not an outbox row (a state backup's part) at QoS 1, not retained; the
        future gets its PUBACK reason (never, if closed)."""
        return self.publish_status(topic, data, retain=False)

    async def wait(self, fut: asyncio.Future[Reason], timeout_s: float, stop: asyncio.Event) -> Reason | None:
        """The future's result, or None if the connection closes, `stop` is set, or time runs out."""
        closed = asyncio.ensure_future(self.closed.wait())
        stopping = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[Any]] = {fut, closed, stopping}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            closed.cancel()
            stopping.cancel()
        return fut.result() if fut.done() and not fut.cancelled() else None

    @property
    def acks_waiting(self) -> int:
        """Rows PUBACKed and not yet taken for deletion."""
        return len(self._acked_ids)

    def take_acked(self) -> list[int]:
        """Ids of rows PUBACKed since the last call, to delete from the outbox."""
        ids, self._acked_ids = self._acked_ids, []
        return ids

    def abort(self) -> None:
        """Close without DISCONNECT (the broker publishes the Will); in-flight rows stay in the outbox."""
        self.transport.abort()
        self.closed.set()

    # ------------------------------------------------------------------ TransportListener

    def on_connack(self, connack: Connack) -> None:
        self.max_packet = packet_limit(connack.max_packet, self._broker_max_packet)
        if connack.receive_maximum is not None:
            # The broker's Receive Maximum bounds our window: exceeding it gets us disconnected.
            self.window = min(self.window, connack.receive_maximum)
        if not self.connack.done():
            self.connack.set_result(connack.reason)

    def on_puback(self, mid: int, reason: Reason) -> None:
        row = self.inflight.pop(mid, None)
        topic = self._topics.pop(mid, "")
        if row is None:
            status = self._status_acks.pop(mid, None)
            if status is not None and not status.done():
                status.set_result(reason)
            return
        if reason.is_failure:
            # Not delivered: the row stays in the outbox and is offered again later (drain.py).
            why = f"{reason} (0x{reason.value:02X})"
            self.refused.append((row, topic, why))
            self._metrics.rejected += 1
            self._state.error(
                f"broker refused row {row.id} on {topic}: {why}; its rows are kept in the outbox "
                "and tried again"
            )
            log.warning("uplink.rejected", row=row.id, stream=row.stream, topic=topic, reason=str(reason))
            self._wake()
            return
        self._acked_ids.append(row.id)
        self._metrics.acked += 1
        self._metrics.readings_acked += row.count
        self._wake()

    def on_message(self, topic: str, payload: bytes) -> None:
        if self._inbox is not None:
            self._inbox.offer(topic, payload)

    def on_unsuback(self, mid: int) -> None:
        """The JSON uplink never unsubscribes."""

    def on_closed(self, reason: str) -> None:
        if reason:
            self.close_reason = reason
        self.closed.set()
        self._wake()
