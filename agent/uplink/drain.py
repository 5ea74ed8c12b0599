"""The drain of one connection: lease rows by lane → publish → collect PUBACKs → delete from the outbox.

It lives as long as the uplink (it owns the wake-up event `notify()` sets) and serves one
`Session` at a time; which rows go next is `lanes.LaneScheduler`'s decision, what a PUBACK means
is the session's. When the connection ends, or a stop has drained what it could, `serve()` returns
and `MqttUplink` decides what comes next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from water_edge.agent.uplink.interfaces import EncodeError, Encoder, LeaseAckOutbox
from water_edge.agent.uplink.lanes import Lane, LaneScheduler
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.session import Session
from water_edge.agent.uplink.state import ConnectionState
from water_edge.agent.uplink.transport import PublishProperties, publish_packet_size
from water_edge.core.errors import BufferError

log = structlog.get_logger(__name__)


class Drain:
    """Publishes outbox rows on the current session, oldest first per lane, deleting them on PUBACK."""

    def __init__(
        self,
        outbox: LeaseAckOutbox,
        encoder: Encoder,
        *,
        metrics: UplinkMetrics,
        state: ConnectionState,
        lease_rows: int,
        properties: PublishProperties | None,
        beat_s: float,
    ) -> None:
        self._outbox = outbox
        self._encoder = encoder
        self._metrics = metrics
        self._state = state
        self._lease_rows = lease_rows
        self._props = properties
        self._beat_s = beat_s
        self.wake = asyncio.Event()
        self.beats = 0  # every pass of the loop: part of the uplink's proof of life
        self._more = True  # rows may have been committed since the live lane's last lease

    def notify(self) -> None:
        """New rows were appended: wake the drain if it is waiting for work."""
        self._more = True
        self.wake.set()

    async def serve(self, session: Session, stop: asyncio.Event, deadline: Callable[[], float]) -> bool:
        """Drain until the session closes (False) or, after `stop`, all is out or time is up (True)."""
        loop = asyncio.get_running_loop()
        split = await self._outbox.last_id()
        self._metrics.backlog_upto_id = split
        lanes = LaneScheduler(split, session.window)
        self._more = True
        while True:
            self.wake.clear()
            self.beats += 1
            if session.closed.is_set():
                return False
            progressed = await self.flush_acks(session)
            stopping = stop.is_set()
            idle = not session.inflight and lanes.exhausted and not self._more
            if stopping and (idle or loop.time() >= deadline()):
                return True
            if lanes.backlog_wants_rows():
                progressed |= await self._lease(lanes, lanes.backlog)
            if self._more and lanes.live_wants_rows(len(session.inflight)):
                self._more = False
                if await self._lease(lanes, lanes.live):
                    self._more = progressed = True
            progressed |= self._publish(session, lanes)
            if not progressed:
                if not stopping:
                    await self._wait_wake(self._beat_s)
                elif session.inflight or lanes.has_pending or self._more:
                    await self._wait_wake(min(self._beat_s, max(0.0, deadline() - loop.time())))

    async def flush_acks(self, session: Session) -> bool:
        """Delete PUBACKed rows from the outbox in one call; True if there were any."""
        ids = session.take_acked()
        if not ids:
            return False
        try:
            await self._outbox.ack(ids)
        except BufferError as exc:
            # The rows stay and are sent again after the next reconnect: a duplicate, not a loss.
            self._metrics.ack_errors += 1
            self._state.error(f"outbox ack failed: {exc}")
            log.error("uplink.ack_failed", rows=len(ids), error=str(exc))
            return True
        self._metrics.acks_deleted()
        return True

    async def _lease(self, lanes: LaneScheduler, lane: Lane) -> bool:
        try:
            rows = await self._outbox.lease(lane.cursor, self._lease_rows, lane.upto)
        except BufferError as exc:
            # Said and retried at the next beat, never the agent's end: a damaged outbox has
            # already asked the agent to restart (`buffer.damaged_restarting`, exit code 75).
            self._state.error(f"outbox lease failed: {exc}")
            log.error("uplink.lease_failed", error=str(exc))
            return False
        lanes.add(lane, rows)
        return bool(rows)

    def _publish(self, session: Session, lanes: LaneScheduler) -> bool:
        """Fill the window with what the scheduler picks; True if any row was taken."""
        metrics = self._metrics
        taken = False
        for lane, row in lanes.plan(session.inflight.values()):
            if session.closed.is_set():
                break
            try:
                msg = self._encoder.encode(row)
            except EncodeError as exc:
                # Left in the outbox (eviction will age it out) rather than wedging its stream.
                metrics.encode_errors += 1
                self._state.error(str(exc))
                log.error("uplink.encode_failed", row=row.id, stream=row.stream, error=str(exc))
            else:
                size = publish_packet_size(msg.topic, msg.payload, self._props)
                if session.max_packet is not None and size > session.max_packet:
                    # Published, it would get the connection dropped, and again at every
                    # reconnect, with every row behind it waiting: left in the outbox, as above.
                    metrics.encode_errors += 1
                    why = f"row {row.id}: a message of {size} bytes, over the broker's Maximum Packet Size"
                    self._state.error(f"{why} ({session.max_packet}): not sent, left in the outbox")
                    log.error(
                        "uplink.too_large", row=row.id, stream=row.stream, size=size, limit=session.max_packet
                    )
                elif not session.publish_row(row, msg.topic, msg.payload, self._props):
                    break
                else:
                    metrics.published += 1
            taken = True
            metrics.lane_published(lane)
        return taken

    async def _wait_wake(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self.wake.wait()
        except TimeoutError:
            pass
