"""What a glitch in a district's net flow is: a sample beyond `GLITCH_FACTOR` times a reference flow,
either way, that lasts at most `GLITCH_SAMPLES` samples in a row (and, in a night, one whose sign
is flipped: `night_glitches`).

A register misread or a poll scaled wrong gives one such sample; an inlet sized for fire flow can
pass that much for hours when a large main bursts, and a flow that stays out there is real. The
burst detector judges each sample as it comes against the district's mean flow, and while it
learns against the median slot flow learnt so far (`burst.py`); a night's samples are judged
together, once the night is over, against the night's median (`night_glitches`), so the night flow
needs no burst detection and no learnt figure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

GLITCH_FACTOR = 10.0
GLITCH_SAMPLES = 2  # samples in a row skipped as glitches; a longer run is flow
# Fewer samples than this have no median a single glitch cannot move (an hourly export's night).
NIGHT_MIN_SAMPLES = 3


def night_glitches(flow: Sequence[float]) -> list[bool]:
    """Which of a night's net-flow samples (in time order) are glitches: beyond `GLITCH_FACTOR` x
    the night's median flow, either way, or below minus half of it (its sign flipped: a register
    read as signed, a poll scaled wrong; the flipped sample is about minus the median itself), in a
    run of at most `GLITCH_SAMPLES`. A night whose median is not above zero, or with fewer than
    `NIGHT_MIN_SAMPLES` samples, has none. A slightly negative sample of a net flow near zero
    (two meters' noise) stays flow."""
    finite = [v for v in flow if math.isfinite(v)]
    out = [False] * len(flow)
    if len(finite) < NIGHT_MIN_SAMPLES:
        return out
    reference = statistics.median(finite)
    if reference <= 0:
        return out
    beyond = [math.isfinite(v) and (abs(v) > GLITCH_FACTOR * reference or v < -reference / 2) for v in flow]
    start = 0
    while start < len(flow):
        end = start
        while end < len(flow) and beyond[end]:
            end += 1
        if 0 < end - start <= GLITCH_SAMPLES:
            out[start:end] = [True] * (end - start)
        start = end + 1
    return out
