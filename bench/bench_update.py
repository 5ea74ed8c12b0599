"""How long a signed self-update takes on this machine, and what a failed one costs: the real
scenario of tests/test_update_selfupdate.py (tests/support/selfupdate.py), timed.

Figures, never pass/fail (docs/benchmarks.md, bench_update).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.figures import figure, run_alone
from tests.support.broker import Mosquitto
from tests.support.selfupdate import BROKEN_WINDOW_S, GOOD_WINDOW_S, update_then_roll_back


def run(tmpdir: Path) -> list[dict[str, Any]]:
    with Mosquitto() as broker:
        result = update_then_roll_back(tmpdir, broker)
    lost = len(set(range(1, result.last_seq + 1)) - result.delivered - result.queued)
    return [
        figure("update.apply_to_publishing", result.to_publishing_s, "s", "<= 60"),
        figure(
            "update.apply_to_committed",
            result.to_committed_s,
            "s",
            f"reference (health window {GOOD_WINDOW_S} s)",
        ),
        figure(
            "update.broken_to_rolled_back",
            result.to_rolled_back_s,
            "s",
            f"reference (rolled back after 3 restarts; window {BROKEN_WINDOW_S} s)",
        ),
        figure("update.readings_lost", lost, "rows", f"0 (of {result.last_seq})"),
        figure("update.thin_bundle", result.good_bundle_bytes / 2**10, "KiB", "reference"),
    ]


if __name__ == "__main__":
    run_alone(run)
