"""`ingest.rejected` log lines, at most a burst per window.

Every rejected message is kept in the `rejected` table with its reason and payload; the log line is
the alert that they are arriving. A fleet that an update or a misconfigured gateway turns into a
producer of bad payloads would otherwise write one line per message (thousands a second), and
journald, past its own rate limit, would drop every line of the ingest, the gap reports with them.
So: the first `burst` rejections of each window are logged in full (which gateways, which reasons),
the rest counted, and the count is said once (`ingest.rejected_suppressed`) when the window ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

BURST = 20
WINDOW_S = 60.0


class RejectionLog:
    """Thread-safe: the consumer parses in one thread and commits (and bisects refused batches) in
    another."""

    def __init__(
        self, burst: int = BURST, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._window_start = clock()
        self._written = 0
        self._suppressed = 0
        self._first_topic = ""
        self._lock = threading.Lock()

    def rejected(self, topic: str, reason: str) -> None:
        with self._lock:
            self._roll()
            self._note(topic, reason)

    def roll(self) -> None:
        """End the window if its time is up, saying how many lines it left out (called after every
        batch: the count of a flood that stopped is said then)."""
        with self._lock:
            self._roll()

    def _note(self, topic: str, reason: str) -> None:
        if self._written < self.burst:
            self._written += 1
            log.warning("ingest.rejected", topic=topic, reason=reason)
            return
        if not self._suppressed:
            self._first_topic = topic
        self._suppressed += 1

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start < self.window_s:
            return
        if self._suppressed:
            log.warning(
                "ingest.rejected_suppressed",
                count=self._suppressed,
                window_s=self.window_s,
                first_topic=self._first_topic,
                note="every rejected message is in the rejected table",
            )
        self._window_start, self._written, self._suppressed = now, 0, 0
