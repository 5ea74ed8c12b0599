"""Which outbox rows one connection publishes next: live data never waits behind a backlog.

At each CONNACK the uplink notes the newest committed row id (the *split*). Rows up to it are the
backlog lane, leased oldest first; rows committed after it are the live lane, also oldest first.
Live rows go out first, but while the backlog has rows it keeps a reserved quarter of the
in-flight window (at least one slot), so after hours offline the centre gets current values at
once while the backlog drains beside them. Within a lane rows go out in id order, so per stream
the seqs of each lane arrive ascending; across lanes a stream's live seqs may arrive before its
older backlog seqs. The centre orders by (stream, seq), never by arrival (docs/durability.md).

Plain data and decisions: no I/O, no asyncio, no MQTT, so every rule is tested by handing it rows
(`tests/test_uplink_lanes_unit.py`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from water_edge.buffer.types import OutboxRow

LaneName = Literal["live", "backlog"]


@dataclass
class Lane:
    """Rows of one lane: ids in (cursor, upto] are still to lease; `pending` is leased, not yet sent."""

    name: LaneName
    cursor: int
    upto: int | None
    pending: deque[OutboxRow] = field(default_factory=deque)
    active: bool = True  # the backlog lane ends for good when a lease comes back empty


class LaneScheduler:
    """The two lanes of one connection and the rules that pick the next rows to publish."""

    def __init__(self, split: int, window: int) -> None:
        if window < 1:
            raise ValueError("the in-flight window must be at least 1")
        self.split = split
        self.window = window
        self.backlog = Lane("backlog", cursor=0, upto=split)
        self.live = Lane("live", cursor=split, upto=None)

    @property
    def reserve(self) -> int:
        """Window slots kept for the backlog while it has rows."""
        return max(1, self.window // 4)

    def backlog_wants_rows(self) -> bool:
        return self.backlog.active and not self.backlog.pending

    def live_wants_rows(self, inflight: int) -> bool:
        """Lease the live lane only when it has nothing pending and the window has room."""
        return not self.live.pending and inflight < self.window

    def add(self, lane: Lane, rows: Sequence[OutboxRow]) -> None:
        """Rows leased for `lane` (oldest first). An empty lease ends the backlog."""
        if rows:
            lane.cursor = rows[-1].id
            lane.pending.extend(rows)
        elif lane is self.backlog and not lane.pending:
            lane.active = False

    def is_live(self, row: OutboxRow) -> bool:
        return row.id > self.split

    @property
    def has_pending(self) -> bool:
        return bool(self.live.pending or self.backlog.pending)

    @property
    def exhausted(self) -> bool:
        """Nothing pending and the backlog finished (new live rows may still be leased)."""
        return not self.backlog.active and not self.has_pending

    def plan(self, inflight: Collection[OutboxRow]) -> list[tuple[LaneName, OutboxRow]]:
        """Take the rows that fill the window now, in publish order, out of the lanes."""
        free = self.window - len(inflight)
        if free <= 0:
            return []
        live, backlog = self.live, self.backlog
        live_cap = self.window - (self.reserve if backlog.active or backlog.pending else 0)
        live_inflight = sum(1 for row in inflight if row.id > self.split)
        out: list[tuple[LaneName, OutboxRow]] = []
        for _ in range(free):
            if live.pending and (live_inflight < live_cap or not backlog.pending):
                out.append(("live", live.pending.popleft()))
                live_inflight += 1
            elif backlog.pending:
                out.append(("backlog", backlog.pending.popleft()))
            else:
                break
        return out
