"""A pump's kept samples scored again: `edge-agent models score pump --pump P [--from T] [--to T]`,
the CSV of `score pump --csv` (`timestamp,score,anomaly`) plus `event` — what an engineer reads
before trusting a `pump_anomaly` event, or before recalibrating after maintenance.

The samples are the rows the gateway kept while the pump ran (`<state_dir>/pump/<name>/`), scored
as the processor scores them: each against the window of the `window` rows up to it, the window
emptied where the history has a gap (the pump stopped, the agent was down), through the pump's
persistence and hysteresis (`detector.Alarm`). The calibration is the one in service now (a sample
scored live under an older version may read otherwise here); rows before the window fills are not
scored (`score` empty), as live. The frozen test's runs of identical readings are counted over the
kept rows from the first one replayed, through gaps, as the processor counts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from water_edge.core.instants import stretch
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.manifest import ModelError
from water_edge.models.pump.config import PumpModelConfig
from water_edge.models.pump.detector import Alarm, Calibration, Scorer, repeat_runs, score_latest
from water_edge.models.pump.store import NS, CalibrationStore, FeatureHistory, pump_dir

GAP_SAMPLES = 1.5  # a step longer than this many sample intervals: the pump stopped in between


def replay_pump(
    cfg: PumpModelConfig, state_dir: Path, model: Scorer, window: int, args: Mapping[str, Any]
) -> tuple[Calibration, Iterator[str]]:
    """The calibration in service and the replay's CSV lines (header first) for the kept rows between
    args `from` / `to` (ISO 8601 or epoch s; default all). `CalibrationFailedError` says why not."""
    where = pump_dir(state_dir, cfg.name)
    cal = CalibrationStore(state_dir, cfg.name).in_service(f"pump {cfg.name}")
    bounds = stretch(args)
    roles = [str(r) for r in cfg.signals]
    try:
        with FeatureHistory.existing(state_dir, cfg.name, roles, cfg.history_days) as history:
            ts, rows = history.read(*bounds)
    except ModelError as exc:
        raise CalibrationFailedError(str(exc)) from None
    if len(ts) == 0:
        raise CalibrationFailedError(f"no kept samples of pump {cfg.name} in that range (at {where})")
    x = rows[:, [roles.index(c) for c in cal.channels]]
    runs, _ = repeat_runs(x)
    gap_ns = int(GAP_SAMPLES * cfg.sample_interval_s * NS)

    def lines() -> Iterator[str]:
        alarm = Alarm(cfg.persistence, cfg.clear_after, cfg.hysteresis)
        start = 0  # first row of the current run (no gap since)
        yield "timestamp,score,anomaly,event"
        for i, t in enumerate(ts):
            if i and t - ts[i - 1] > gap_ns:
                start = i
            stamp = datetime.fromtimestamp(int(t) / NS, UTC).isoformat()
            if i - start + 1 < window:
                yield f"{stamp},,{int(alarm.active)},"
                continue
            total = float(
                score_latest(x[i - window + 1 : i + 1], cal, model, runs[i - window + 1 : i + 1]).score[-1]
            )
            change = alarm.update(total, cal.threshold)
            event = "" if change is None else ("raised" if change else "cleared")
            yield f"{stamp},{total:.6g},{int(alarm.active)},{event}"

    return cal, lines()
