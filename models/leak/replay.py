"""A hydrophone's stored nights judged again: `edge-agent models score leak --sensor S [--from T]
[--to T]`, one JSON object per night — what a technician reads before trusting an alarm: which
nights rose, by how much and in which bands, and on which night the warning and the leak came.

The checks the gateway stored (`<state_dir>/leak/<sensor>/checks.jsonl`) go through the gateway's
own judgement and confirmation (`configured.py`: the sensor's `[models.leak.detection]` settings),
check by check in order, against the baseline in service now: a night judged live under an older
baseline version may read otherwise here. Two-sensor location and night-flow fusion are not
replayed; the confirmation starts from quiet at the first night given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from water_edge.core.instants import stretch
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.calibration import section_for
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.configured import judge_params, new_confirmation
from water_edge.models.leak.judge import Confirmation, Judgement, JudgeParams, judge
from water_edge.models.leak.store import SensorStore


def replay_nights(
    checks: Sequence[CheckStats], baseline: Baseline, params: JudgeParams, confirmation: Confirmation
) -> list[dict[str, Any]]:
    """One summary per night of `checks` (in order): its checks judged and confirmed as the
    processor does, the strongest check's evidence, the state after it and the transitions in it."""
    nights: list[dict[str, Any]] = []
    tonight: list[Judgement] = []

    def close() -> None:
        if not tonight:
            return
        best = max(tonight, key=lambda j: j.score)
        nights[-1].update(
            judged_checks=sum(j.judged for j in tonight),
            positive_checks=sum(j.positive for j in tonight),
            signal_lost_checks=sum(j.signal_lost for j in tonight),
            score=round(best.score, 3),
            quiet_level_db=round(float(np.median([j.quiet_db for j in tonight])), 1),
            bands_risen=[{"band_hz": b["band_hz"], "rise_db": b["rise_db"]} for b in best.risen],
            state=confirmation.state,
        )
        tonight.clear()

    for check in checks:
        if not nights or nights[-1]["night"] != check.night:
            close()
            nights.append({"night": check.night, "checks": 0, "events": []})
        j = judge(check, baseline, params)
        changes = confirmation.transitions(check.night, j)
        tonight.append(confirmation.last or j)  # as confirmation counted it (accumulated evidence)
        nights[-1]["checks"] += 1
        nights[-1]["events"] += changes
    close()
    return nights


def replay_sensor(
    sections: Sequence[LeakModelSection], state_dir: Path, sensor: str, args: Mapping[str, Any]
) -> tuple[Baseline, list[dict[str, Any]]]:
    """`sensor`'s stored nights between args `from` / `to` (ISO 8601 or epoch s; default all),
    replayed against its baseline in service. `CalibrationFailedError` says why when it cannot."""
    section = section_for(sections, sensor)
    store = SensorStore(state_dir, sensor, section.keep_nights)
    baseline = store.in_service()
    checks = store.checks(*stretch(args))
    if not checks:
        raise CalibrationFailedError(f"no night checks of {sensor} in that range (at {store.dir})")
    return baseline, replay_nights(checks, baseline, judge_params(section), new_confirmation(section))
