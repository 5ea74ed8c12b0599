"""A new calibration version for one pump from its own feature history, on request: the
`pump_calibration` signed command (through `PumpFactory.calibrate`) and the time arguments it
shares with `edge-agent models calibrate pump`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from water_edge.core.instants import stretch
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.pump.config import PumpModelConfig

if TYPE_CHECKING:
    from water_edge.models.pump.detector import Calibration

MIN_CALIBRATION_HOURS = 24.0  # a daily demand cycle (docs/pump-anomaly.md)


def calibrate_from_history(cfg: PumpModelConfig, state_dir: Path, args: Mapping[str, Any]) -> dict[str, Any]:
    """Calibrate `cfg`'s pump from its history between args `from` / `to` (ISO 8601 or epoch
    seconds) and store the next version; a running `PumpProcessor` picks it up by itself.
    Blocking (SQLite, numpy, TFLite): run it in a thread. `CalibrationFailedError` says why when
    it cannot.

    Without `from`: the last `calibration.auto_hours` (default 24 h) of history, up to `to` or
    the newest row: as long a stretch as the pump's first calibration, of its latest operation.
    It was all of the history (`history_days`, 14 days: 1.2 million rows at 1 s), which also took
    in what the pump did before the maintenance a recalibration usually follows; a longer stretch
    is for the command to name. A range of more than `MAX_CALIBRATION_ROWS` rows is thinned
    (`recalibrate`).
    """
    from_ns, to_ns = stretch(args)
    hours = cfg.calibration.auto_hours if from_ns is None else None
    cal = calibrate_pump(cfg, state_dir, from_ns, to_ns, last_hours=hours)
    return {
        "pump": cfg.name,
        "version": cal.version,
        "rows": cal.n_samples,
        "threshold": round(cal.threshold, 6),
        "from": cal.from_ts,
        "to": cal.to_ts,
    }


def calibrate_pump(
    cfg: PumpModelConfig,
    state_dir: Path,
    from_ns: int | None,
    to_ns: int | None,
    model_path: Path | None = None,
    *,
    last_hours: float | None = None,
) -> Calibration:
    """The next calibration version of `cfg`'s pump from its stored history between `from_ns`
    and `to_ns` (None: that end of the history; with `last_hours`, a missing `from_ns` is that
    many hours before `to_ns` or the newest row), with the model at `model_path` (default: the
    pump's); `CalibrationFailedError` says why when it cannot."""
    from water_edge.models.manifest import ModelError
    from water_edge.models.pump.processor import DEFAULT_MANIFEST, recalibrate
    from water_edge.models.pump.store import NS, CalibrationStore, FeatureHistory
    from water_edge.models.runtime import load_model

    try:
        model = load_model(model_path or cfg.model or DEFAULT_MANIFEST)
        with FeatureHistory.existing(state_dir, cfg.name, list(cfg.signals), cfg.history_days) as history:
            if from_ns is None and last_hours is not None:
                span = history.span()
                end = to_ns if to_ns is not None else None if span is None else span[1]
                from_ns = None if end is None else end - int(last_hours * 3600 * NS)
            return recalibrate(
                cfg,
                history,
                CalibrationStore(state_dir, cfg.name),
                model,
                window=int(model.manifest.extra.get("window", 32)),
                model_version=model.version,
                from_ns=from_ns,
                to_ns=to_ns,
            )
    except (ValueError, ModelError) as exc:
        raise CalibrationFailedError(str(exc)) from None


def short_span(cal: Calibration, sample_interval_s: float) -> str | None:
    """The warning `edge-agent models calibrate pump` gives when the rows `cal` used (not the range
    asked for: history may hold less) span less than `MIN_CALIBRATION_HOURS`, else None. The span
    counts the last row's own interval (`sample_interval_s`): a day of 1 s rows stamped 00:00:01 to
    00:00:00 is a day; it was 1 s short and warned "covers 24.0 h ... needs a day". The span is said
    in whole minutes rounded down, so a short one never reads as a day."""
    span_s = 0.0
    if cal.from_ts and cal.to_ts:
        rows = datetime.fromisoformat(cal.to_ts) - datetime.fromisoformat(cal.from_ts)
        span_s = rows.total_seconds() + sample_interval_s
    if span_s >= MIN_CALIBRATION_HOURS * 3600:
        return None
    return (
        f"the calibration covers {_duration(span_s)}: a pump that follows daily demand needs a day of "
        "normal duty, or later operating points will read as anomalies (docs/pump-anomaly.md)"
    )


def _duration(seconds: float) -> str:
    """'23 h 59 min', '24 min', '40 s': rounded down."""
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{int(seconds)} s"
