"""The rolling history: how rows published at QoS 0 are acknowledged, apart from any encoding.

QoS 0 has no PUBACK, so a published row stays in the outbox, listed here with the time it went
out. It is deleted (released) only when both hold, on the same connection:

- it is older than `keep_s` (1.5 x the keep-alive: by then a dead connection has been noticed,
  the technique established Sparkplug gateways use), and
- the broker has answered a request sent *after* it: an UNSUBSCRIBE of a filter never subscribed
  (the *probe*, sent while rows wait). MQTT keeps a connection's packets in order, so the
  UNSUBACK says the broker has read every PUBLISH before it. This turns "no error was seen" into
  a receipt, at the cost of one small packet pair per probe interval.

When the connection ends, everything still listed stays in the outbox and is published again,
as historical, after the next birth: at least once, with the duplicates bounded by what the last
`keep_s` (plus one probe interval) carried. The history of one connection dies with it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    row_id: int
    count: int  # readings or events in the row
    sent_at: float  # monotonic
    n: int  # publish order on this connection


class RollingHistory:
    """Rows published on one connection and not yet released."""

    def __init__(self, keep_s: float, probe_every_s: float) -> None:
        self.keep_s = keep_s
        self.probe_every_s = probe_every_s
        self._rows: deque[_Entry] = deque()
        self._n = 0
        self._proven = 0  # every row with n <= this was read by the broker
        self._probes: dict[int, int] = {}  # probe mid -> n it covers
        self._last_probe = float("-inf")

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row_id: int, count: int, now: float) -> None:
        self._n += 1
        self._rows.append(_Entry(row_id, count, now, self._n))

    def probe_due(self, now: float) -> bool:
        """A probe should go out: rows wait for a receipt, none is pending, the interval has passed."""
        waiting = bool(self._rows) and self._rows[-1].n > self._proven
        return waiting and not self._probes and now - self._last_probe >= self.probe_every_s

    def probe_sent(self, mid: int, now: float) -> None:
        self._probes[mid] = self._n
        self._last_probe = now

    def probe_answered(self, mid: int) -> bool:
        """An UNSUBACK arrived; True if it was one of our probes."""
        covers = self._probes.pop(mid, None)
        if covers is None:
            return False
        self._proven = max(self._proven, covers)
        return True

    def release(self, now: float) -> list[tuple[int, int]]:
        """(row id, count) of the rows that may be deleted now, oldest first."""
        out: list[tuple[int, int]] = []
        rows = self._rows
        while rows and rows[0].n <= self._proven and now - rows[0].sent_at >= self.keep_s:
            entry = rows.popleft()
            out.append((entry.row_id, entry.count))
        return out

    def release_all_proven(self) -> list[tuple[int, int]]:
        """On a clean stop, after the NDEATH's PUBACK (which follows every row): all of them."""
        out = [(e.row_id, e.count) for e in self._rows]
        self._rows.clear()
        return out

    def next_release_in(self, now: float) -> float | None:
        """Seconds until the oldest row is old enough (None when empty)."""
        if not self._rows:
            return None
        return max(0.0, self._rows[0].sent_at + self.keep_s - now)
