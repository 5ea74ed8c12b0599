"""Which bands a rained-out check confirms a plastic pipe's warning with (`plastic_rain_same_bands`,
twelfth pass).

A disturbed check's steady leak bands may confirm an open warning (ninth pass). In a PVC or PE main
the rain lifts the two steady bands just under where it wanders (its skirt, 28-51 Hz) over their
level thresholds, and on the rainy dev nights that skirt confirmed warnings a dry check had opened
on *other* bands: traffic's 11-16 Hz, a pump's or the rain's 68-295 Hz (docs/leak-detection.md,
twelfth pass). A leak keeps its spectrum from check to check. So a rained-out check confirms a
plastic warning only with a band the warning showed or one next to it (a leak's bands move by a
band between checks), or with at least `FREE_BANDS` steady bands (the skirt lifts two), or when the
warning was demand-like (`demand.py`): on a night of more demand a leak shows only what stands
above the demand's plateau, its top hiss (dev high-demand starts 28083 and 29508: 164-295 Hz), and
its low bands under the next night's rain.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from water_edge.models.leak import features

CENTRES: Final = features.CENTRES_HZ
# A rained-out check with at least this many steady leak bands risen confirms whatever bands the
# warning showed.
FREE_BANDS: Final = 3


def confirms(warning_hz: Collection[float], risen_hz: Collection[float], *, demand_like: bool) -> bool:
    """May a rained-out plastic check with these steady risen bands confirm a warning that showed
    `warning_hz` (`demand_like`: the warning's check was)?"""
    if demand_like or len(risen_hz) >= FREE_BANDS:
        return True
    near = {_index(hz) + d for hz in warning_hz for d in (-1, 0, 1)}
    return any(_index(hz) in near for hz in risen_hz)


def _index(hz: float) -> int:
    return min(range(len(CENTRES)), key=lambda i: abs(CENTRES[i] - hz))
