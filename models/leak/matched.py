"""A metal pipe's leak band judged against the spectrum a leak would add: a matched joint test.

A leak in a metal pipe is a broadband hiss across its material's leak band; the background at the
sensor (flow noise, traffic rumble) is loudest at the bottom of that band and falls by 10-20 dB
towards its top. A weak leak therefore lifts the top of the band by 1-3 dB and the bottom by a few
tenths: the plain joint test (`joint.py`), which weights every leak band alike, dilutes the few
bands where the leak shows with the many where it cannot. Here the bands are weighted by what a leak
would add to each over the sensor's own quiet: a hiss of flat spectrum puts power in proportion to
a band's width, and over the baseline's level that is a rise of about 4.34 x width / power dB per
unit of leak power (small rises add linearly in power). The nuisance patterns (`nuisance.py`) take
part of that rise away; the template is what they leave (the same projection), so a leak that the
patterns partly explain is weighed by the part they cannot.

`matched_z` is the joint test's statistic (`joint.joint_z`: the sum's spread under the residuals'
shrunk band-to-band correlation, and the same statistic on each baseline check's leave-one-out
residual, from which the judgement sets its threshold) with the bands weighted by that template.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.models.leak import features
from water_edge.models.leak.joint import Joint, joint_z

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

WIDTHS_HZ: Final = np.diff(features.BAND_EDGES_HZ)


def leak_template(level: FloatArray, components: FloatArray, band: BoolArray) -> FloatArray:
    """Per band, the residual rise (dB, up to scale) a weak flat-spectrum hiss in `band` would
    leave over a background of `level` (dB per band) once the nuisance patterns (`components`,
    orthonormal rows) explained what they could of it; peak of the raw rise scaled to 1."""
    power = WIDTHS_HZ * 10 ** (-(level - float(np.max(level[band]))) / 10)
    t = np.where(band, power, 0.0)
    t = t / float(np.max(t))
    out: FloatArray = t - components.T @ (components @ t)
    return out


def matched_z(
    residual: FloatArray,
    sigma: FloatArray,
    loo: FloatArray,
    use: BoolArray,
    extra_db: FloatArray,
    *,
    template: FloatArray,
) -> Joint | None:
    """`joint.joint_z` with each band's z-score weighted by the template's z (the residual rise a
    leak would leave, over the band's spread). None with < 2 bands or no weight."""
    return joint_z(residual, sigma, loo, use, extra_db, weights=template / sigma)
