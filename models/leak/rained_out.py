"""A plastic pipe's leak under rain: may a disturbed check open a warning (`plastic_rain_opens`)?

A check with more than `max_unsteady_bands` bands wandering (rain, works) is not judged; since the
ninth pass its leak bands that stayed steady and whose level rose may *confirm* an open warning,
never open one. So a leak in a PVC or PE pipe whose two nights are both rained out was lost
within them (docs/leak-detection.md, eleventh pass: on the rainy dev set 28000-28099, 108 of 400
leaks at SNR >= -10 dB, every one with at most one judged check in its two nights).

In a plastic pipe a leak's noise is strongest at the bottom of the leak band, while rain on the
street reaches the buried pipe above it (in the simulator from 60 Hz up) and gusts. The rain still
lifts the steady bands just below where it wanders a little (its skirt: on the leak-free rainy dev
nights 28-51 Hz by up to about twice their level thresholds); a leak lifts its own bands by more.
Hence: a disturbed check in a plastic pipe *opens* a warning when at least `min_bands` of its leak
bands below `OPEN_MAX_HZ`, steady within `rain_spread_db` and not tonal, rose over the baseline's
level by `OPEN_K` times their level threshold; and a warning so opened is confirmed by a disturbed
check only when that check clears the same bar (`Confirmation`), by a dry check as any warning.
The second bar (`plastic_rain_second_bar`, twelfth pass): `SECOND_BANDS` (3) such bands at
`SECOND_K` (1.5) x open too — a weak leak lifts three or four low bands a little, the rain's skirt
mostly two (dev seeds: docs/leak-detection.md, twelfth pass).
Only the level counts, as for confirming: the residual and the classifier are fooled by rain (ninth
pass). Metal pipes are not changed: rain overlaps a metal pipe's leak band (tenth pass: opening on
the steady bands there took 24000-24023 from 1 to 12 false alarms), and it starts above 45 Hz.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.models.leak import features

FloatArray = npt.NDArray[np.float64]
CENTRES: Final = features.CENTRES_HZ
# A band opens only at this multiple of its level threshold (confirming needs 1 x).
OPEN_K: Final = 2.0
# Only bands below this open: a plastic leak's strongest bands, under the rain's (60 Hz up).
OPEN_MAX_HZ: Final = 45.0
# The second bar (`plastic_rain_second_bar`, twelfth pass): this many bands below `OPEN_MAX_HZ` at
# this multiple open too. A leak lifts three or four low bands; the rain's skirt mostly two.
SECOND_BANDS: Final = 3
SECOND_K: Final = 1.5


def opens(
    level_rise: FloatArray,
    t_level: FloatArray,
    counted: npt.NDArray[np.bool_],
    min_bands: int,
    *,
    second_bar: bool = False,
) -> bool:
    """Do at least `min_bands` of the `counted` bands (leak bands, steady in the rain, not tonal)
    below `OPEN_MAX_HZ` stand `OPEN_K` x their level threshold over the baseline's level, or (with
    `second_bar`) `SECOND_BANDS` of them `SECOND_K` x? (The judgement asks only for a plastic pipe.)"""
    low = counted & (CENTRES <= OPEN_MAX_HZ)
    if int(np.count_nonzero(low & (level_rise >= OPEN_K * t_level))) >= min_bands:
        return True
    return second_bar and int(np.count_nonzero(low & (level_rise >= SECOND_K * t_level))) >= SECOND_BANDS
