"""The ingest's alert lines (`ingest.rejected`, `ingest.conflict`, `ingest.gap`,
`ingest.seq_outlier`), at most a burst of each kind per window.

Every one of them is also kept in the database (the `rejected`, `conflicts`, `gaps` and
`seq_outliers` tables, and their views); the log line is the alert that they are arriving. A
gateway or a fleet that turns into a producer of them (an update that breaks the payload, an SD
card cloned from a running gateway: a conflict per message; a gateway numbering its rows in jumps:
a gap per message) would otherwise write one line each, thousands a minute, and journald, past its
own rate limit, would drop every line of the ingest, the other kinds with them. So: the first
`burst` lines of each kind per window are written in full (which gateways, which reasons), the
rest counted, and each kind's count is said once (`<kind>_suppressed`, with the first line left
out) when the window ends. One kind's flood does not silence another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

log = structlog.get_logger(__name__)

BURST = 20
WINDOW_S = 60.0

# Where every line of a kind is kept, said with its count of lines left out.
KEPT_IN: Final = {
    "ingest.rejected": "every rejected message is in the rejected table",
    "ingest.conflict": "every conflict is in the conflicts table (view gateway_conflicts)",
    "ingest.gap": "every gap is in the gaps table (edge-centre gaps lists the open ones)",
    "ingest.seq_outlier": "every outlier is in the seq_outliers table",
}


@dataclass(slots=True)
class _Tally:
    written: int = 0
    suppressed: int = 0
    first: dict[str, Any] = field(default_factory=dict)  # the first line left out


class BurstLog:
    """Thread-safe: the consumer parses in one thread and commits (and checks gaps) in another."""

    def __init__(
        self, burst: int = BURST, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._window_start = clock()
        self._tallies: dict[str, _Tally] = {}
        self._lock = threading.Lock()

    def warning(self, event: str, **fields: Any) -> None:
        """Log `event` with `fields` as a warning, unless its kind has had its burst this window."""
        with self._lock:
            self._roll()
            tally = self._tallies.setdefault(event, _Tally())
            if tally.written < self.burst:
                tally.written += 1
                log.warning(event, **fields)
                return
            if not tally.suppressed:
                tally.first = fields
            tally.suppressed += 1

    def roll(self) -> None:
        """End the window if its time is up, saying how many lines of each kind it left out (called
        after every batch and gap check: the count of a flood that stopped is said then)."""
        with self._lock:
            self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start < self.window_s:
            return
        for event, tally in self._tallies.items():
            if tally.suppressed:
                log.warning(
                    f"{event}_suppressed",
                    count=tally.suppressed,
                    window_s=self.window_s,
                    **{f"first_{k}": v for k, v in tally.first.items()},
                    note=KEPT_IN.get(event, ""),
                )
        self._window_start = now
        self._tallies.clear()
