"""Minimum night flow of one night: the lowest `average_minutes` mean of the net flow in the window.

Samples are (UTC ns, net flow m3/h) at any regular interval. The net flow is averaged over a
sliding `average_minutes` window (samples farther apart than that are their own averages: an
hourly export gives the lowest hourly value), and the lowest such mean is the night's MNF. A night
whose samples cover less than `min_coverage` of the window is not judged (None); each sample covers
the step between the night's samples, at most the source's own sampling interval when it is known
(`interval_s`: a file's, the gateway's): a lone sample has no step of its own, and used to count as
the whole window (a file's first row at 03:45 was that night's MNF); without the interval it is too
little to judge.

`night_figures` gives a night's figures as the gateway and `score flow-leak` report them: its MNF
without the night's glitches (`glitch.night_glitches`) and its pressure (`night_pressure`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from water_edge.core.export_numbers import LARGEST_READING
from water_edge.models.flow_leak.glitch import night_glitches

NS = 1_000_000_000
# What historians and PLCs write into a flow or pressure value they could not measure. One of them in
# a night used to be that night's "minimum" (-9999 m3/h), and the night went unjudged. No meter reads
# exactly these, so a value equal to one is treated as missing, counted, and said.
ERROR_CODES = frozenset((-999.0, -9999.0, -99999.0))
# No district's flow reaches this in any unit; a logger's or a historian's "largest double" for no
# value (1.8e308) does, and overflows every sum taken of it. The bound of the export readers
# (`core.export_numbers`), on the gateway too.
LARGEST_FLOW = LARGEST_READING
PRESSURE_SPREADS = 5.0  # a night's pressure sample farther than this from its median is a glitch


def is_error_code(value: float) -> bool:
    return value in ERROR_CODES


def minimum_night_flow(
    ts_ns: Sequence[int],
    flow: Sequence[float],
    *,
    window_min: float,
    average_minutes: float = 15.0,
    min_coverage: float = 0.5,
    interval_s: float | None = None,
) -> float | None:
    t = np.asarray(ts_ns, dtype=np.int64)
    v = np.asarray(flow, dtype=np.float64)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if v.size == 0:
        return None
    step_s = float(np.median(np.diff(t))) / NS if t.size > 1 else interval_s
    if step_s is None:
        return None
    each_s = step_s if interval_s is None else min(step_s, interval_s)
    covered_min = v.size * min(each_s / 60.0, window_min)
    if covered_min < min_coverage * window_min:
        return None
    n = max(1, round(average_minutes * 60.0 / step_s)) if step_s > 0 else 1
    if n >= v.size:
        return float(v.mean())
    means = np.convolve(v, np.ones(n) / n, mode="valid")
    return float(means.min())


@dataclass(frozen=True)
class NightFigures:
    flow: float | None  # the MNF of the night's samples but its glitches, m3/h (None: not judged)
    pressure: float | None  # its pressure, glitches left out (`night_pressure`; None: no pressure)
    glitches: int  # net-flow samples left out as glitches


def night_figures(
    ts_ns: Sequence[int],
    flow: Sequence[float],
    pressure: Sequence[float],
    *,
    window_min: float,
    average_minutes: float = 15.0,
    interval_s: float | None = None,
) -> NightFigures:
    """One night's figures from its samples in time order (`pressure` NaN where not measured);
    `interval_s`: the source's sampling interval, when known (`minimum_night_flow`)."""
    skip = night_glitches(flow)
    kept = [i for i, s in enumerate(skip) if not s]
    mnf = minimum_night_flow(
        [ts_ns[i] for i in kept],
        [flow[i] for i in kept],
        window_min=window_min,
        average_minutes=average_minutes,
        interval_s=interval_s,
    )
    return NightFigures(mnf, night_pressure(pressure), sum(skip))


def night_pressure(pressure: Sequence[float]) -> float | None:
    """The mean of a night's pressure samples within `PRESSURE_SPREADS` robust spreads of their
    median (1.4826 x MAD, at least 1 % of the median: a transmitter read in coarse steps): one
    glitched reading (1000x, or 0 from an open loop) moved a plain mean as far as it liked - a
    night's pressure-corrected flow came out a hundredth of itself. The median alone would do
    that too, but it is the noisier figure of a steady night: a mean of what is left is not."""
    finite = [p for p in pressure if math.isfinite(p)]
    if not finite:
        return None
    middle = statistics.median(finite)
    spread = max(1.4826 * statistics.median(abs(p - middle) for p in finite), 0.01 * abs(middle))
    return statistics.fmean(p for p in finite if abs(p - middle) <= PRESSURE_SPREADS * spread)
