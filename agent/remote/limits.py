"""Rate limits of the command channel: per-key command rates, and a budget for answering refusals.

`KeyRates` bounds what one authenticated operator key can make the gateway do per minute (a
read-only key must not drive hundreds of extra PLC reads a second). `RefusalBudget` bounds what a
flood of refused commands costs: the first `per_minute` refusals in a window are audited and
answered one by one, the rest are counted and written as one summary when the budget allows again,
so neither the audit log nor the outbox grows with the rate of an attacker's traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class KeyRates:
    """Sliding one-minute window per key: `allow(key, limit)` is False once `limit` were allowed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def allow(self, key: str, limit: int) -> bool:
        now = self._clock()
        recent = self._seen.setdefault(key, deque())
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        if len(recent) >= limit:
            return False
        recent.append(now)
        return True


class RefusalBudget:
    """At most `per_minute` refusals answered in full per window; the rest counted as suppressed."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._window_start = clock()
        self._used = 0
        self.suppressed = 0  # waiting to be reported
        self.suppressed_total = 0

    def admit(self) -> bool:
        """True if this refusal may be audited and answered on its own."""
        now = self._clock()
        if now - self._window_start >= WINDOW_S:
            self._window_start = now
            self._used = 0
        if self._used < self.per_minute:
            self._used += 1
            return True
        self.suppressed += 1
        self.suppressed_total += 1
        return False

    def take_suppressed(self) -> int:
        """How many refusals went unreported since the last call (to report them now)."""
        count, self.suppressed = self.suppressed, 0
        return count
