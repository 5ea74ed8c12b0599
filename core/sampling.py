"""When a processor takes a sample: every `step` of reading time, and again from a clock stepped back.

Processors sample on the readings' own timestamps, so a replayed history behaves as a live feed. A
gateway whose clock is stepped back (a Pi without a real-time clock that ran ahead until NTP set it,
an operator fixing the time) then stamps its readings earlier than the samples already taken: left
alone, sampling waited until reading time caught up with the next sample due - for as long as the
step, days perhaps - and said nothing. A reading more than `STEP_BACK_S` older than the newest one
seen is such a step: sampling starts again from it, and the caller is told how far back it went.
"""

from __future__ import annotations

from dataclasses import dataclass

NS = 1_000_000_000
# Readings are stamped where they are read and reach a processor in the order they were submitted,
# so devices polled side by side are out of order by a poll's duration at most (seconds; a slow
# M-Bus segment, a minute or two). Ten minutes is beyond that; a smaller correction costs at most
# ten minutes of samples, as it always did.
STEP_BACK_S = 600.0


@dataclass(frozen=True)
class Due:
    """What a reading at one instant sets off: the samples due before it is taken in (oldest first),
    or, when the clock was stepped back, how far (then no sample is due)."""

    samples: tuple[int, ...] = ()
    stepped_back_ns: int = 0


class SampleTimes:
    """The next sample due, in reading time; see the module docstring."""

    def __init__(self, step_s: float, *, step_back_s: float = STEP_BACK_S) -> None:
        if step_s <= 0:
            raise ValueError("the sampling step must be positive")
        self.step_ns = int(step_s * NS)
        self.step_back_ns = int(step_back_s * NS)
        self.next_ns: int | None = None  # the next sample due (UTC ns); None before the first reading
        self.newest_ns: int | None = None  # the newest reading seen since the last step back
        self.steps_back = 0

    def reading(self, ts_ns: int) -> Due:
        """A reading stamped `ts_ns` has come: the samples due before it counts (their instants,
        oldest first), or the clock's step back found in it, from which sampling starts again."""
        step = self.step_ns
        if self.newest_ns is not None and self.newest_ns - ts_ns > self.step_back_ns:
            back = self.newest_ns - ts_ns
            self.steps_back += 1
            self.newest_ns, self.next_ns = ts_ns, (ts_ns // step + 1) * step
            return Due(stepped_back_ns=back)
        self.newest_ns = ts_ns if self.newest_ns is None else max(self.newest_ns, ts_ns)
        if self.next_ns is None:
            self.next_ns = (ts_ns // step + 1) * step
            return Due()
        due: list[int] = []
        while ts_ns > self.next_ns:
            due.append(self.next_ns)
            # After a gap take one sample, not one per missed interval.
            self.next_ns = max(self.next_ns + step, (ts_ns // step) * step)
        return Due(tuple(due))
