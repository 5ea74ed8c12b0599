"""Flow from a volume totaliser: m³/h from two readings of a meter's total-volume register.

A district's bulk meter read over M-Bus, or a SCADA historian that keeps only the meter's index,
gives the volume that has passed (m³), not a flow. The flow between two readings is the volume
drawn over the time between them; averaged over a night window this is exact whatever the
register's resolution (the differences add up). A register that goes down — a meter replaced, a
register rolled over, a reading out of order — is a reset: that interval gives no flow and is
counted, and the next readings go on from the new value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NS_PER_HOUR = 3_600_000_000_000
# A flow column that never falls over this many days and this share of its rows is a totaliser
# (a district's flow falls every night); read as flow it would give a "night flow" rising forever.
TOTALISER_MIN_DAYS = 2.0
TOTALISER_SHARE = 0.99


@dataclass
class VolumeRate:
    """One totaliser: each new reading gives the flow since the one before, or None."""

    last: tuple[int, float] | None = None
    resets: int = 0

    def rate(self, ts_ns: int, volume_m3: float) -> float | None:
        """m³/h since the previous reading; None for the first, a repeat and a reset."""
        prev = self.last
        if prev is not None and ts_ns <= prev[0]:
            return None  # the same reading again (or an older one): nothing new
        self.last = (ts_ns, volume_m3)
        if prev is None:
            return None
        if volume_m3 < prev[1]:
            self.resets += 1
            return None
        return (volume_m3 - prev[1]) * NS_PER_HOUR / (ts_ns - prev[0])


def looks_like_totaliser(ts_ns: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> bool:
    """Whether a series given as a flow is rather a volume register: over at least two days it rose
    and never (or almost never) fell."""
    if len(values) < 3 or (ts_ns[-1] - ts_ns[0]) < TOTALISER_MIN_DAYS * 24 * NS_PER_HOUR:
        return False
    steps = np.diff(values)
    rising = int(np.count_nonzero(steps >= 0))
    return rising >= TOTALISER_SHARE * len(steps) and values[-1] > values[0]
