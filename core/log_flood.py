"""A structlog processor that writes at most a burst of lines of one kind per window and counts the
rest, so a flood from outside (forged telegrams, a broker refusing every row, a noisy serial line)
neither wears the SD card nor trips journald's own rate limit, which would drop every line.

A kind is (logger name, event): library records are told apart by their message template, so one
"Failed to connect to %s" is one kind whatever the address. Windows are aligned to the monotonic
clock and shared by all kinds: when one ends, each kind's count of lines left out is reported once,
on the line of that kind that opens the next window, or else as one `log.suppressed` line.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import structlog
from structlog.typing import EventDict, WrappedLogger

# 20 lines show the start of a flood in full (which devices, which addresses); per minute, a lasting
# flood of 300-byte lines writes some 9 MB a day instead of 2.6 GB at 100 a second. The worst case,
# 256 kinds flooding at once, is some 5,400 lines a minute: below journald's default limit (10,000
# messages per 30 s), so the guard itself never trips it.
DEFAULT_BURST = 20
DEFAULT_WINDOW_S = 60.0
MAX_KINDS = 256
SUMMARY_EVENT = "log.suppressed"
# Kinds first seen once MAX_KINDS are tracked in a window share this one budget.
OTHER_KINDS = ("", "(other kinds)")
# Long enough for a lasting flood's own next line to carry its count, so that the timer reports
# only the floods that stopped; short enough that those are reported about when their window ends.
_TIMER_GRACE_S = 1.0
_KIND_TEXT_MAX = 200  # of an event's text kept in a kind: bounds memory with MAX_KINDS

Kind = tuple[str, str]


@dataclass(slots=True)
class _Tally:
    written: int = 0
    suppressed: int = 0
    level: str = "warning"


class FloodGuard:
    """The processor: put it after `add_log_level` and before anything costly (time stamps,
    rendering), so that a dropped line costs little. `debug` lines pass untouched."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        window_s: float = DEFAULT_WINDOW_S,
        max_kinds: int = MAX_KINDS,
    ) -> None:
        if burst < 1 or window_s <= 0 or max_kinds < 1:
            raise ValueError("expected burst >= 1, window_s > 0 and max_kinds >= 1")
        self.burst = burst
        self.window_s = window_s
        self.max_kinds = max_kinds
        self._lock = threading.Lock()
        self._window = self._window_of(time.monotonic())
        self._tallies: dict[Kind, _Tally] = {}
        self._timer_window: int | None = None  # the window a timer will report, once it ends

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if method_name == "debug" or event_dict.get("event") == SUMMARY_EVENT:
            return event_dict
        kind = _kind_of(event_dict)
        with self._lock:
            ended = self._roll_over()
            carried = ended.pop(kind, None)
            admitted = self._admit(kind, method_name)
            timer_for = None if admitted else self._claim_timer()
        self._report(ended)
        if timer_for is not None:
            self._start_timer(timer_for)
        if not admitted:
            raise structlog.DropEvent
        if carried is not None:
            event_dict["suppressed"] = carried.suppressed
            event_dict["suppressed_window_s"] = self.window_s
        return event_dict

    @property
    def tracked_kinds(self) -> int:
        """How many kinds the current window holds a tally for (at most max_kinds + 1)."""
        return len(self._tallies)

    def report_ended(self) -> None:
        """Report the counts of a window that ended though no line came since (the timer calls it)."""
        with self._lock:
            ended = self._roll_over()
        self._report(ended)

    def _window_of(self, now: float) -> int:
        return int(now // self.window_s)

    def _roll_over(self) -> dict[Kind, _Tally]:
        """Start a new window if the current one ended; return the kinds it left lines out of."""
        window = self._window_of(time.monotonic())
        if window == self._window:
            return {}
        ended, self._tallies, self._window = self._tallies, {}, window
        return {kind: tally for kind, tally in ended.items() if tally.suppressed}

    def _admit(self, kind: Kind, level: str) -> bool:
        tally = self._tallies.get(kind)
        if tally is None:
            if len(self._tallies) >= self.max_kinds:
                kind = OTHER_KINDS
            tally = self._tallies.setdefault(kind, _Tally(level=level))
        if tally.written < self.burst:
            tally.written += 1
            return True
        tally.suppressed += 1
        return False

    def _claim_timer(self) -> int | None:
        """The current window, if no timer will report it yet (one timer per window at most)."""
        if self._timer_window == self._window:
            return None
        self._timer_window = self._window
        return self._window

    def _start_timer(self, window: int) -> None:
        delay = (window + 1) * self.window_s - time.monotonic() + min(_TIMER_GRACE_S, self.window_s / 4)
        timer = threading.Timer(max(delay, 0.0), self._on_timer)
        timer.daemon = True
        timer.start()

    def _on_timer(self) -> None:
        # A guard left behind by a later `configure` (or a test's reset) must not write anywhere.
        if self in structlog.get_config()["processors"]:
            self.report_ended()

    def _report(self, ended: dict[Kind, _Tally]) -> None:
        if not ended:
            return
        # A fresh proxy: one cached at an earlier configure would keep that level and output.
        log = structlog.get_logger(__name__)
        for (logger_name, event), tally in ended.items():
            level = logging.getLevelNamesMapping().get(tally.level.upper(), logging.WARNING)
            named = {"of_logger": logger_name} if logger_name else {}
            log.log(
                level,
                SUMMARY_EVENT,
                of_event=event,
                **named,
                suppressed=tally.suppressed,
                window_s=self.window_s,
            )


def _kind_of(event_dict: EventDict) -> Kind:
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and isinstance(record.msg, str):
        event = record.msg  # the template, not the text its arguments make
    else:
        event = str(event_dict.get("event"))
    return str(event_dict.get("logger", "")), event[:_KIND_TEXT_MAX]
