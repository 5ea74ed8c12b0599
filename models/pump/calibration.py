"""A new calibration version for one pump from its own feature history, on request: the
`pump_calibration` signed command (through `PumpFactory.calibrate`) and the time arguments it
shares with `edge-agent models calibrate pump`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from water_edge.core.instants import stretch
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.pump.config import PumpModelConfig

if TYPE_CHECKING:
    from water_edge.models.pump.detector import Calibration


def calibrate_from_history(cfg: PumpModelConfig, state_dir: Path, args: Mapping[str, Any]) -> dict[str, Any]:
    """Calibrate `cfg`'s pump from its history between args `from` / `to` (ISO 8601 or epoch
    seconds; default: all of it) and store the next version; a running `PumpProcessor` picks it
    up by itself. Blocking (SQLite, numpy, TFLite): run it in a thread.
    `CalibrationFailedError` says why when it cannot."""
    cal = calibrate_pump(cfg, state_dir, *stretch(args))
    return {
        "pump": cfg.name,
        "version": cal.version,
        "rows": cal.n_samples,
        "threshold": round(cal.threshold, 6),
    }


def calibrate_pump(
    cfg: PumpModelConfig,
    state_dir: Path,
    from_ns: int | None,
    to_ns: int | None,
    model_path: Path | None = None,
) -> Calibration:
    """The next calibration version of `cfg`'s pump from its stored history between `from_ns`
    and `to_ns` (None: that end of the history), with the model at `model_path` (default: the
    pump's); `CalibrationFailedError` says why when it cannot."""
    from water_edge.models.manifest import ModelError
    from water_edge.models.pump.processor import DEFAULT_MANIFEST, recalibrate
    from water_edge.models.pump.store import CalibrationStore, FeatureHistory
    from water_edge.models.runtime import load_model

    try:
        model = load_model(model_path or cfg.model or DEFAULT_MANIFEST)
        with FeatureHistory.existing(state_dir, cfg.name, list(cfg.signals), cfg.history_days) as history:
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
