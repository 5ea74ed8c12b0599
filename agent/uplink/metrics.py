"""The uplink's counters and its acknowledgement rate over the last seconds, bumped on the loop thread."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from water_edge.core.reading import now_ns

RATE_WINDOW_S = 10.0


class UplinkMetrics:
    """Plain counters (cumulative over the uplink's life) and the samples of the ack-rate window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.published = 0
        self.acked = 0
        self.readings_acked = 0
        self.reconnects = 0
        self.refused = 0
        self.rejected = 0
        self.encode_errors = 0
        self.ack_errors = 0
        self.ack_timeouts = 0  # connections given up: messages in flight, no PUBACK for ack_timeout_s
        self.taken_over = 0  # connections the broker closed: another client took our client id
        self.published_live = 0
        self.published_backlog = 0
        self.backlog_upto_id = 0  # the split of the current (or last) connection
        self.last_ack_ns: int | None = None
        self._clock = clock
        self._rate: deque[tuple[float, int, int]] = deque()

    def lane_published(self, lane: str) -> None:
        if lane == "live":
            self.published_live += 1
        else:
            self.published_backlog += 1

    def acks_deleted(self) -> None:
        """PUBACKed rows were deleted from the outbox: stamp it and take a sample for the rate."""
        self.last_ack_ns = now_ns()
        now = self._clock()
        self._rate.append((now, self.acked, self.readings_acked))
        while self._rate and now - self._rate[0][0] > RATE_WINDOW_S:
            self._rate.popleft()

    def rates(self) -> tuple[float, float]:
        """Messages and readings acknowledged per second over the window (0.0 with fewer than 2 samples)."""
        if len(self._rate) < 2:
            return 0.0, 0.0
        t0, m0, r0 = self._rate[0]
        dt = self._clock() - t0
        if dt <= 0:
            return 0.0, 0.0
        _, m1, r1 = self._rate[-1]
        return round((m1 - m0) / dt, 1), round((r1 - r0) / dt, 1)
