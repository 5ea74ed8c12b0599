"""How long a signed self-update takes on this machine, and what a failed one costs: the real
scenario of tests/test_update_selfupdate.py (tests/support/selfupdate.py), timed.

Figures, never pass/fail (docs/benchmarks.md, bench_update).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.support.broker import Mosquitto
from tests.support.selfupdate import update_then_roll_back


def run(tmpdir: Path) -> list[dict[str, Any]]:
    with Mosquitto() as broker:
        result = update_then_roll_back(tmpdir, broker)
    lost = len(set(range(1, result.last_seq + 1)) - result.delivered - result.queued)
    return [
        _figure("update.apply_to_publishing", result.to_publishing_s, "s", "<= 60"),
        _figure("update.apply_to_committed", result.to_committed_s, "s", "reference (health window 20 s)"),
        _figure(
            "update.broken_to_rolled_back", result.to_rolled_back_s, "s", "reference (health window 20 s)"
        ),
        _figure("update.readings_lost", lost, "rows", f"0 (of {result.last_seq})"),
        _figure("update.thin_bundle", result.good_bundle_bytes / 2**10, "KiB", "reference"),
    ]


def _figure(name: str, value: float, unit: str, target: str) -> dict[str, Any]:
    return {"name": name, "value": round(value, 2), "unit": unit, "target": target}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for figure in run(Path(tmp)):
            name, value, unit = figure["name"], figure["value"], figure["unit"]
            print(f"{name:<34} {value:>14,} {unit:<11} (target {figure['target']})")
