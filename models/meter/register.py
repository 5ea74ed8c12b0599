"""A meter's cumulative register, read one reading behind: each reading waits for the next before
it is used, so a single misread (a mis-decoded unit, a bit error the CRC let through) is dropped
instead of becoming a burst of use or a meter exchange.

A register only grows. A reading that the next one contradicts, while the readings before and after
it agree with each other, was wrong: up then back (x1000) or down then back (/1000). A register that
goes down and stays down was reset (a meter exchanged, a rollover); the drop is passed on as one step
down, which the consumer treats as it always has.
"""

from __future__ import annotations

from dataclasses import dataclass

Sample = tuple[int, float]  # (ts_ns, register value)


@dataclass(frozen=True, slots=True)
class Step:
    """A reading confirmed, and the confirmed reading before it (None for the first)."""

    before: Sample | None
    after: Sample


@dataclass
class Register:
    confirmed: Sample | None = None  # the last reading used
    pending: Sample | None = None  # the last reading received, waiting for the next
    glitches: int = 0  # readings dropped as misread
    resets: int = 0  # drops that stayed: a meter exchanged or a rollover

    def read(self, ts_ns: int, value: float) -> Step | None:
        """A reading in; the reading it confirms (the one before it), if any. O(1)."""
        before, held = self.confirmed, self.pending
        self.pending = (ts_ns, value)
        if held is None:
            return None
        if before is not None and before[1] <= value and not before[1] <= held[1] <= value:
            self.glitches += 1  # before and now agree, the held one lies outside: drop it
            return None
        self.confirmed = held
        if before is not None and held[1] < before[1]:
            self.resets += 1  # it went down and the reading after did not come back
        return Step(before, held)
