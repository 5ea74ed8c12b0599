"""A machine's run signal from its PLC (`running_tag`): whether it ran through a clip.

A microphone next to a pump hears the station when the pump is off: its neighbours, the flow in the
pipes, the room. Learnt as the pump's normal sound, that stretch blurs the calibration; scored
against a calibration of the running pump, every stop is a change of sound. The level
(`running_min_dbfs`) only tells silence from sound; the PLC knows. Readings of the signal are kept
by reading time (the last `KEEP` of them: more than an hour at one a second), so a clip is judged
by what the signal said while it was recorded, whichever arrives first: the clip or the readings.
"""

from __future__ import annotations

import bisect

from water_edge.core.reading import Reading, numeric_value

KEEP = 8192
NS = 1_000_000_000


class RunSignal:
    def __init__(self, tag: str, running_min: float, stale_s: float) -> None:
        device, slash, name = tag.partition("/")
        self._device: str | None = device if slash else None
        self._tag = name if slash else tag
        self.running_min = running_min
        self.stale_ns = int(stale_s * NS)
        self._ts: list[int] = []
        self._running: list[bool] = []

    def take(self, r: Reading) -> None:
        """Keep `r` if it is a good numeric reading of the signal."""
        if r.tag != self._tag or (self._device is not None and r.source != self._device):
            return
        value = numeric_value(r)
        if value is None:
            return
        i = bisect.bisect_right(self._ts, r.ts_ns)
        self._ts.insert(i, r.ts_ns)
        self._running.insert(i, value >= self.running_min)
        if len(self._ts) > KEEP:
            del self._ts[: KEEP // 2], self._running[: KEEP // 2]

    def ran_through(self, start_ns: int, end_ns: int) -> bool | None:
        """Whether the machine ran from `start_ns` to `end_ns`: the last reading at or before the
        start (no older than the stale limit) and every reading inside said running. None when no
        reading tells the state at the start."""
        first = bisect.bisect_right(self._ts, start_ns)
        if first == 0 or start_ns - self._ts[first - 1] > self.stale_ns:
            return None
        last = bisect.bisect_right(self._ts, end_ns)
        return all(self._running[first - 1 : last])
