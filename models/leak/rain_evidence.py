"""What a rained-on check may say in a plastic pipe: the classifier only under the rain, and
which bands a rained-out check confirms a warning with (twelfth pass).

Two plastic false-alarm mechanisms of rainy nights (docs/leak-detection.md, twelfth pass):

- **The classifier hears rain as a leak** (+7 to +17 log-odds on leak-free rainy plastic checks).
  A check judged as rained on (`rain`: the bands above the leak band risen and gusting) but not
  disturbed is positive with one risen band and the classifier's rise; on the dev seeds that one
  band was a band *in* the rain (68-295 Hz, risen 8-23 x its threshold: the rain itself, steady
  enough within a 40 s check) in most plastic rain alarms. A plastic leak's own bands lie under the
  rain (below `rained_out.OPEN_MAX_HZ`, 45 Hz): there one band and the classifier still count
  (`plastic_rain_low_classifier`: `classifier_counts`).
- **The rain's skirt confirms a warning that showed other bands.** A disturbed check's steady leak
  bands may confirm an open warning (ninth pass); the rain lifts the two steady bands just under
  where it wanders (28-51 Hz) over their level thresholds, and confirmed warnings a dry check had
  opened on other bands (traffic's 11-16 Hz, a pump's or the rain's 68-295 Hz). A leak keeps its
  spectrum from check to check: a rained-out check confirms a warning only with a band the warning
  showed or one next to it, or with at least `FREE_BANDS` steady bands risen (a leak that began on
  a night of more demand showed only its top hiss there, 164 Hz, and its low bands under the next
  night's rain) (`plastic_rain_same_bands`: `confirms`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final

from water_edge.models.leak import features
from water_edge.models.leak.rained_out import OPEN_MAX_HZ

CENTRES: Final = tuple(features.band_centres_hz())
# A rained-out check with at least this many steady leak bands risen confirms whatever bands the
# warning showed (the skirt lifts two).
FREE_BANDS: Final = 3


def classifier_counts(risen_hz: Iterable[float]) -> bool:
    """In a plastic check judged as rained on: may one risen band and the classifier's rise make it
    positive? Only when a risen band lies under the rain (at most `OPEN_MAX_HZ`)."""
    return any(hz <= OPEN_MAX_HZ for hz in risen_hz)


def confirms(warning_hz: Collection[float], risen_hz: Collection[float]) -> bool:
    """May a rained-out plastic check with these steady risen bands confirm a warning that showed
    `warning_hz`? With a band the warning showed or its neighbour, or with `FREE_BANDS` bands."""
    if len(risen_hz) >= FREE_BANDS:
        return True
    near = {_index(hz) + d for hz in warning_hz for d in (-1, 0, 1)}
    return any(_index(hz) in near for hz in risen_hz)


def _index(hz: float) -> int:
    return min(range(len(CENTRES)), key=lambda i: abs(CENTRES[i] - hz))
