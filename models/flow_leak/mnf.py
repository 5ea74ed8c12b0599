"""Minimum night flow of one night: the lowest `average_minutes` mean of the net flow in the window.

Samples are (UTC ns, net flow m3/h) at any regular interval. The net flow is averaged over a
sliding `average_minutes` window (samples farther apart than that are their own averages: an
hourly export gives the lowest hourly value), and the lowest such mean is the night's MNF. A night
whose samples cover less than `min_coverage` of the window is not judged (None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NS = 1_000_000_000
# What historians and PLCs write into a flow or pressure value they could not measure. One of them in
# a night used to be that night's "minimum" (-9999 m3/h), and the night went unjudged. No meter reads
# exactly these, so a value equal to one is treated as missing, counted, and said.
ERROR_CODES = frozenset((-999.0, -9999.0, -99999.0))


def is_error_code(value: float) -> bool:
    return value in ERROR_CODES


def minimum_night_flow(
    ts_ns: Sequence[int],
    flow: Sequence[float],
    *,
    window_min: float,
    average_minutes: float = 15.0,
    min_coverage: float = 0.5,
) -> float | None:
    t = np.asarray(ts_ns, dtype=np.int64)
    v = np.asarray(flow, dtype=np.float64)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if v.size == 0:
        return None
    step_s = float(np.median(np.diff(t))) / NS if t.size > 1 else window_min * 60.0
    covered_min = v.size * min(step_s / 60.0, window_min)
    if covered_min < min_coverage * window_min:
        return None
    n = max(1, round(average_minutes * 60.0 / step_s)) if step_s > 0 else 1
    if n >= v.size:
        return float(v.mean())
    means = np.convolve(v, np.ones(n) / n, mode="valid")
    return float(means.min())
