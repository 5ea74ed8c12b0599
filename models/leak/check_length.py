"""How long a check of a recording is: its defaults and bounds, apart from the reading code so that
the command line can name them without importing the detector (every `edge-agent` command builds
the whole parser at start: importing `recording` there cost each of them 11 MB)."""

from __future__ import annotations

from typing import Final

DEFAULT_CHECK_S: Final = 8.0
MIN_CHECK_S: Final = 2  # what `split_checks` cuts at the least (measurements go below SHORTEST_CHECK_S)
# `calibrate leak` / `score leak --check-s` take no shorter check. A check's quiet level is the 10th
# percentile of its one-second levels, for a few levels about their minimum, which scatters more
# the fewer they are: measured by models/train/leak_check_length.py on simulated no-leak
# recordings (docs/leak-check-length.json, docs/leak-detection.md).
SHORTEST_CHECK_S: Final = 4


def check_length(check_s: float) -> int:
    """The whole seconds a check of `check_s` holds (its levels are one second each)."""
    return max(MIN_CHECK_S, round(check_s))
