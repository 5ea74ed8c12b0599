"""The drain of one connection: lease rows by lane → publish → collect PUBACKs → delete from the outbox.

It lives as long as the uplink (it owns the wake-up event `notify()` sets) and serves one
`Session` at a time; which rows go next is `lanes.LaneScheduler`'s decision, what a PUBACK means
is the session's. When the connection ends, or a stop has drained what it could, `serve()` returns
and `MqttUplink` decides what comes next.

Rows the broker refuses (a PUBACK failure reason code, session.py) stay in the outbox, and their
stream is set aside (`Refusals`): its rows are skipped, the other streams keep flowing, and after a
backoff (doubling from `retry_min_s` to `retry_max_s`, once per refused probe: the rows in flight
together when the stream was first refused are one refusal) the stream's oldest row goes as a
probe. Accepted, the stream flows again; refused, it waits longer. This survives reconnects, since
some brokers close the connection after a refusal (Mosquitto 2.0 does for an ACL denial). A refused
stream whose rows have all left the outbox (evicted, aged out) is forgotten once the outbox has been
read to its end on a connection and its wait is over: there is nothing left to probe with.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from water_edge.agent.uplink.health import RefusedStream
from water_edge.agent.uplink.interfaces import EncodeError, Encoder, LeaseAckOutbox
from water_edge.agent.uplink.lanes import Lane, LaneScheduler
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.session import Session
from water_edge.agent.uplink.state import ConnectionState
from water_edge.agent.uplink.transport import PublishProperties, publish_packet_size
from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import BufferError

log = structlog.get_logger(__name__)

HELD_MAX: Final = 256  # rows of refused streams kept in memory per connection; the rest wait in the outbox
# Acknowledged rows are deleted together: one outbox transaction per PUBACK or two cost a fifth of
# the uplink's rate on one-reading messages (medians alternated: 8,797 → 10,742 msg/s at 64). A
# row whose delete waits is sent again only if the process dies first (at least once, deduplicated
# by the centre).
ACK_BATCH_ROWS: Final = 64
ACK_DELAY_S: Final = 0.1  # the longest a PUBACKed row waits for its delete while others are in flight


@dataclass
class Parked:
    """A stream whose topic the broker refused: its rows wait in the outbox until `until`."""

    topic: str
    reason: str
    until: float
    delay: float
    probe_id: int | None = None  # the row sent to find out whether the broker takes it again
    overflow: int = 0  # rows skipped on this connection and not held in memory


class Refusals:
    """Streams the broker refused (PUBACK failure codes) and the rows held back for them.

    Kept across connections (a broker may close the connection after refusing, as Mosquitto 2.0
    does for an ACL denial), so a refused stream does not cost every connection its life: its
    rows are skipped, left in the outbox, until a probe (its oldest row) is due after a backoff
    that doubles from `retry_min_s` to `retry_max_s` at each refused probe; the probe accepted,
    the stream flows again.
    """

    def __init__(self, retry_min_s: float, retry_max_s: float) -> None:
        self.parked: dict[str, Parked] = {}
        self.held: list[OutboxRow] = []  # this connection's skipped rows, oldest first per stream
        self._min = retry_min_s
        self._max = max(retry_max_s, retry_min_s)

    @property
    def waiting(self) -> int:
        """Rows skipped on this connection (in memory or only in the outbox)."""
        return len(self.held) + sum(p.overflow for p in self.parked.values())

    def describe(self) -> str:
        return "; ".join(
            f"broker refused {p.topic}: {p.reason}; its rows are kept in the outbox and tried again"
            for p in self.parked.values()
        )

    def new_connection(self, now: float) -> None:
        """What was held belongs to the last connection: the outbox gives it again, oldest first.
        The next probe waits a full delay, so a broker that drops us for a refusal still lets
        each connection carry the other streams first."""
        self.held = []
        for park in self.parked.values():
            park.probe_id = None
            park.overflow = 0
            park.until = max(park.until, now + park.delay)

    def take(self, refused: list[tuple[OutboxRow, str, str]], now: float) -> bool:
        """Set aside the streams of the rows a session saw refused (and empty its list); True if any."""
        for row, topic, reason in refused:
            self.refused(row, topic, reason, now)
        took = bool(refused)
        refused.clear()
        return took

    def refused(self, row: OutboxRow, topic: str, reason: str, now: float) -> None:
        """`row` came back refused. The backoff doubles once per retry round: when the stream's
        probe is refused. The rows that were in flight together when the stream was first refused
        come back refused one by one and are one refusal: the first try waits `retry_min_s`."""
        park = self.parked.get(row.stream)
        if park is None:
            park = self.parked[row.stream] = Parked(topic, reason, now + self._min, self._min)
        elif park.probe_id == row.id:
            park.delay = min(park.delay * 2, self._max)
            park.until, park.probe_id = now + park.delay, None
        park.topic, park.reason = topic, reason
        self._hold(row, park)

    def streams(self) -> tuple[RefusedStream, ...]:
        """The refused streams as the status shows them, each with its rows held back."""
        held = Counter(r.stream for r in self.held)
        return tuple(
            RefusedStream(stream, p.topic, p.reason, held[stream] + p.overflow)
            for stream, p in self.parked.items()
        )

    def skip(self, row: OutboxRow, now: float) -> bool:
        """True if `row` is not to be sent now (its stream is refused); it is then held."""
        park = self.parked.get(row.stream)
        if park is None or park.probe_id == row.id:
            return False
        if park.probe_id is None and now >= park.until:
            park.probe_id = row.id
            return False
        self._hold(row, park)
        return True

    def probes(self, now: float) -> list[OutboxRow]:
        """For each refused stream whose wait is over, its oldest held row, sent as the probe."""
        out = []
        for stream, park in self.parked.items():
            if park.probe_id is None and now >= park.until:
                rows = [r for r in self.held if r.stream == stream]
                if rows:
                    probe = min(rows, key=lambda r: r.id)
                    self.held.remove(probe)
                    park.probe_id = probe.id
                    out.append(probe)
        return out

    def forget_gone(self, now: float) -> list[str]:
        """Drop the refused streams that have no row left to probe, once the outbox has been read
        to its end on this connection: their rows aged out or were evicted, so no probe can ever
        come and the stream would be reported refused until a restart. The streams dropped."""
        held = {r.stream for r in self.held}
        gone = [
            stream
            for stream, park in self.parked.items()
            if park.probe_id is None and now >= park.until and not park.overflow and stream not in held
        ]
        for stream in gone:
            del self.parked[stream]
        if gone:
            log.info("uplink.refused_stream_gone", streams=gone)
        return gone

    def acked(self, ids: list[int]) -> tuple[list[OutboxRow], int]:
        """A probe was accepted: its stream flows again. The held rows to send, and how many rows
        were skipped without being held (only a new connection leases them again)."""
        done = {s for s, p in self.parked.items() if p.probe_id is not None and p.probe_id in ids}
        if not done:
            return [], 0
        release = [r for r in self.held if r.stream in done]
        self.held = [r for r in self.held if r.stream not in done]
        overflow = sum(self.parked.pop(s).overflow for s in done)
        log.info("uplink.refused_stream_accepted", streams=sorted(done), rows=len(release) + overflow)
        return release, overflow

    def _hold(self, row: OutboxRow, park: Parked) -> None:
        if len(self.held) < HELD_MAX:
            self.held.append(row)
        else:
            park.overflow += 1


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
        retry_min_s: float = 0.5,
        retry_max_s: float = 60.0,
        ack_timeout_s: float = 60.0,
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
        self.refusals = Refusals(retry_min_s, retry_max_s)  # refused streams, across connections
        self._released: list[OutboxRow] = []  # held rows of a stream the broker takes again
        self._reconnect_for = 0  # skipped rows not held: sent after a clean reconnect
        self._ack_timeout_s = ack_timeout_s
        self._acks_since: float | None = None  # when the oldest PUBACK not yet deleted was first seen

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
        refusals = self.refusals
        refusals.new_connection(loop.time())
        if refusals.parked:
            self._state.error(refusals.describe())
        answered = loop.time()  # the last PUBACK, or when nothing was in flight
        while True:
            self.wake.clear()
            self.beats += 1
            now = loop.time()
            took = refusals.take(session.refused, now)
            if session.closed.is_set():
                return False
            progressed = self._acks_due(session, now) and await self.flush_acks(session)
            answered = now if took or progressed or session.acks_waiting or not session.inflight else answered
            if now - answered >= self._ack_timeout_s:
                self._ack_timed_out(session, now - answered)
                return False
            progressed |= self._refused_rows_again(session, lanes, now)
            stopping = stop.is_set()
            if refusals.parked and lanes.exhausted and not self._more:
                refusals.forget_gone(now)
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
                wait_s = self._beat_s if self._acks_since is None else ACK_DELAY_S
                if not stopping:
                    await self._wait_wake(wait_s)
                elif session.inflight or lanes.has_pending or self._more:
                    await self._wait_wake(min(wait_s, max(0.0, deadline() - loop.time())))

    def _refused_rows_again(self, session: Session, lanes: LaneScheduler, now: float) -> bool:
        """Put the due probes and the rows of streams the broker takes again back in their lanes;
        True if any."""
        again = self.refusals.probes(now)
        if self._released:
            again += self._released
            self._released = []
        if self._reconnect_for and not session.inflight:
            # Rows of a stream the broker takes again were skipped without being held: a clean
            # reconnect leases them again from the oldest.
            session.close_reason = (
                f"reconnecting to send {self._reconnect_for} rows the broker refused earlier"
            )
            log.info("uplink.refused_rows_resend", rows=self._reconnect_for)
            self._reconnect_for = 0
            session.transport.disconnect()
        if not again:
            return False
        for row in again:
            (lanes.live if lanes.is_live(row) else lanes.backlog).pending.append(row)
        for lane in (lanes.live, lanes.backlog):
            lane.pending = deque(sorted(lane.pending, key=lambda r: r.id))
        return True

    def _ack_timed_out(self, session: Session, waited_s: float) -> None:
        """The broker takes PUBLISHes and answers none: give the connection up. Nothing in flight
        was deleted, so the next connection sends it again from the outbox."""
        self._metrics.ack_timeouts += 1
        session.close_reason = (
            f"no PUBACK from the broker for {waited_s:.0f} s with {len(session.inflight)} messages "
            f"in flight (ack_timeout_s = {self._ack_timeout_s:g}): reconnecting, the rows stay in the outbox"
        )
        log.warning("uplink.ack_timeout", waited_s=round(waited_s, 1), inflight=len(session.inflight))

    def _acks_due(self, session: Session, now: float) -> bool:
        """Whether the PUBACKed rows are to be deleted now: `ACK_BATCH_ROWS` of them, the oldest
        `ACK_DELAY_S` old, or nothing else in flight (a trickle is deleted at once)."""
        waiting = session.acks_waiting
        if not waiting:
            return False
        if self._acks_since is None:
            self._acks_since = now
        return waiting >= ACK_BATCH_ROWS or not session.inflight or now - self._acks_since >= ACK_DELAY_S

    async def flush_acks(self, session: Session) -> bool:
        """Delete PUBACKed rows from the outbox in one call; True if there were any."""
        self._acks_since = None
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
        if self.refusals.parked:
            release, overflow = self.refusals.acked(ids)
            self._released += release
            self._reconnect_for += overflow
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
        now = asyncio.get_running_loop().time()
        refusals = self.refusals if self.refusals.parked else None
        for lane, row in lanes.plan(session.inflight.values()):
            if session.closed.is_set():
                break
            if refusals is not None and refusals.skip(row, now):
                taken = True
                continue
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
