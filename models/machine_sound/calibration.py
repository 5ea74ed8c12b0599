"""A new calibration version for one machine from its own clip history: automatic after install (the
processor), on the `machine_sound_calibration` signed command (the factory) and from
`edge-agent models calibrate machine-sound` (the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from water_edge.core.instants import iso, range_ns
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.machine_sound.config import MachineSoundSection
from water_edge.models.machine_sound.detector import CalibrationError, SoundCalibration, calibrate
from water_edge.models.machine_sound.prior import prior_label, prior_target
from water_edge.models.machine_sound.store import SoundCalibrationStore, open_history
from water_edge.models.manifest import ModelError
from water_edge.models.pump.store import FeatureHistory

NS = 1_000_000_000


def recalibrate(
    section: MachineSoundSection,
    history: FeatureHistory,
    store: SoundCalibrationStore,
    from_ns: int | None = None,
    to_ns: int | None = None,
) -> SoundCalibration:
    """Calibrate from the history's clips in [from_ns, to_ns] (thinned evenly to `max_clips`) and
    store the next version. Blocking: from the event loop run it in a thread."""
    c = section.calibration
    ts, x = history.read(from_ns, to_ns)
    if len(ts) < c.min_clips:
        raise CalibrationError(
            f"machine {section.name}: {len(ts)} clips in the range, need at least {c.min_clips}"
        )
    if len(ts) > c.max_clips:
        keep = np.unique(np.linspace(0, len(ts) - 1, c.max_clips).round().astype(np.int64))
        ts, x = ts[keep], x[keep]
    cal = calibrate(
        x,
        shrinkage=c.shrinkage,
        prior_clips=c.prior_clips,
        quantile=c.quantile,
        margin=c.margin,
        eigen_power=c.eigen_power,
        shape_weight=c.shape_weight,
        prior=prior_target(c.prior),
        prior_name=prior_label(c.prior),
        from_ts=iso(int(ts[0])),
        to_ts=iso(int(ts[-1])),
    )
    return store.save(cal)


def calibrate_from_history(
    section: MachineSoundSection, state_dir: Path, args: Mapping[str, Any]
) -> dict[str, Any]:
    """Args `from` / `to` (ISO 8601 or epoch seconds; default all the history). A running processor
    picks the new version up by itself. `CalibrationFailedError` says why when it cannot."""
    try:
        bounds = range_ns(args)
        with open_history(state_dir, section.name, section.history_days, create=False) as history:
            cal = recalibrate(section, history, SoundCalibrationStore(state_dir, section.name), *bounds)
    except (ValueError, ModelError) as exc:
        raise CalibrationFailedError(str(exc)) from None
    return {
        "machine": section.name,
        "version": cal.version,
        "clips": cal.clips,
        "from": cal.from_ts,
        "to": cal.to_ts,
    }
