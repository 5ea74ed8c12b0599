"""Values held upstream: a device that answers every poll with the values it had.

A Modbus TCP-to-RTU gateway that lost its serial side and answers from its cache, a PLC whose
input scan stopped, a data concentrator replaying its last image: the device is up, every read
works, and every value is what it was. Per device with `frozen_after_s` set, `FrozenValues`
watches the readings the runner submits: once no tag that has changed since the agent started (a
tag that never moved — a constant, a set point, a map version — says nothing) has changed for
`frozen_after_s` while reads work, the values are frozen (`values_frozen`), and the first change
ends it (`values_resumed`). A device coming back up starts the clock again: its first answers are
judged afresh. While they are frozen, its good readings are stored `uncertain` with reason
`values_frozen` (OPC UA's "last usable value"): the value is what the device sent, but nothing
says it is the process's now. The readings before the event, inside the `frozen_after_s` that
detection takes, keep their quality; `values_frozen`'s `unchanged_for_s` says how far back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from water_edge.core.reading import BAD, GOOD, UNCERTAIN, Reading, Value

NS = 1_000_000_000
FROZEN_REASON = "values_frozen"
_UNSEEN = object()


class FrozenValues:
    def __init__(self, after_s: float) -> None:
        self.after_ns = int(after_s * NS)
        self._last: dict[str, Value | object] = {}
        self.moved: set[str] = set()  # tags seen to change since the agent started
        self._changed_ns: int | None = None  # when one last changed (or the clock was started)
        self.frozen_since_ns: int | None = None  # the last change before the values froze

    def restart(self, now_ns: int) -> None:
        """The device answers again after being down: judge its answers from now."""
        self._changed_ns = now_ns if self.moved else None

    def see(self, readings: Iterable[Reading], now_ns: int) -> Literal["frozen", "resumed"] | None:
        """Take one poll's readings; what changed in the device's state, if anything."""
        changed = False
        for r in readings:
            if r.quality == BAD or r.value is None or r.value != r.value:  # NaN: no value to compare
                continue
            before = self._last.get(r.tag, _UNSEEN)
            if before is not _UNSEEN and before != r.value:
                self.moved.add(r.tag)
                changed = True
            self._last[r.tag] = r.value
        if changed:
            self._changed_ns = now_ns
            if self.frozen_since_ns is not None:
                self.frozen_since_ns = None
                return "resumed"
            return None
        if self._changed_ns is None or self.frozen_since_ns is not None:
            return None
        if now_ns - self._changed_ns >= self.after_ns:
            self.frozen_since_ns = self._changed_ns
            return "frozen"
        return None


def held_upstream(r: Reading) -> Reading:
    """A reading taken while the device's values are frozen: a good one becomes uncertain."""
    return dataclasses.replace(r, quality=UNCERTAIN, reason=FROZEN_REASON) if r.quality == GOOD else r
