"""Per-machine state on the gateway: the versioned calibration (JSON) and its clip features (SQLite).

    <state_dir>/machine_sound/<machine>/calibration.json       the calibration in service
    <state_dir>/machine_sound/<machine>/calibration.v<N>.json  every version written
    <state_dir>/machine_sound/<machine>/history.sqlite         136 float32 features per clip

The history is the pump's `FeatureHistory` (one row per clip, ~560 bytes: 14 days of 10 s clips
is ~70 MB), so a calibration can be redone from the machine's own sound after maintenance.
"""

from __future__ import annotations

from pathlib import Path

from water_edge.models.machine_sound.detector import SoundCalibration
from water_edge.models.machine_sound.features import FEATURE_NAMES
from water_edge.models.manifest import ModelError
from water_edge.models.pump.store import FeatureHistory
from water_edge.models.versioned_store import VersionedJsonStore


def machine_dir(state_dir: Path, machine: str) -> Path:
    return Path(state_dir) / "machine_sound" / machine


def open_history(
    state_dir: Path, machine: str, history_days: float, *, create: bool = True
) -> FeatureHistory:
    path = machine_dir(state_dir, machine) / "history.sqlite"
    if not create and not path.exists():
        raise ModelError(f"no clip history for machine {machine} at {path}")
    return FeatureHistory(path, list(FEATURE_NAMES), history_days, reset_on_change=create)


class SoundCalibrationStore(VersionedJsonStore[SoundCalibration]):
    """One machine's calibration; each write takes the next version and is put in service atomically."""

    def __init__(self, state_dir: Path, machine: str) -> None:
        super().__init__(machine_dir(state_dir, machine), "calibration", SoundCalibration.from_dict)
