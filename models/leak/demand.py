"""A plastic pipe's night of more demand: how far its leak band rose together, and what that explains.

In a PVC or PE main the flow noise of night demand sits in the same low band as a leak's, and a
night of more demand than the baseline's seven nights heard lifts the leak band *together*: on the
dev seeds' leak-free nights of +2.3 to +7 dB more demand, the non-tonal leak bands from about 20 Hz
up rose 3-7 dB alike (a plateau), and two or three of them cleared their band-by-band thresholds
(learned from seven nights that understate demand's night-to-night spread). A leak adds a spectrum
of its own: its bands stand above whatever the rest of the band did.

`plateau_db` is the night's demand as the leak band shows it: the median rise of its bands that
are not tonal (a pump's or the mains' line in the baseline or tonight does not follow demand), at
most `cap_db` (the judgement passes `min_rise_db`, 3 dB: a band standing that much above a night's
plateau is the band's own; dev seeds: 2-4 dB gave the same false alarms, 6 dB or more kept one
more weak leak waiting past its second night). `judge.judge` then asks whether the check would
still be positive with every band's rise lowered by it; if not, the check is *demand-like*: it may
open a warning, keep a leak up or confirm one on a later night, but it does not confirm a warning
on the night it was opened (`Confirmation`): demand changes from night to night, a leak does not,
and the two checks of one night share that night's demand (the same reasoning as the accumulated
evidence's "later night" guard, `accumulate.py`).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Fewer non-tonal leak bands than this: the plateau is read from every leak band.
MIN_PLATEAU_BANDS: Final = 3


def plateau_bands(
    mask: BoolArray, baseline_tonal: FloatArray, tonal_ok: BoolArray, tonal_tol_db: float
) -> BoolArray:
    """The leak bands that follow demand: not tonal in the baseline (a pump's line standing more
    than `tonal_tol_db` further out than the leak band's median tonality) nor tonight."""
    usual = float(np.median(baseline_tonal[mask]))
    out: BoolArray = mask & (baseline_tonal <= usual + tonal_tol_db) & tonal_ok
    return out if int(out.sum()) >= MIN_PLATEAU_BANDS else mask


def plateau_db(level_rise: FloatArray, bands: BoolArray, cap_db: float) -> float:
    """How far those bands rose together (their median rise), within 0 … `cap_db`."""
    return float(np.clip(np.median(level_rise[bands]), 0.0, cap_db))
