"""Per-machine state on the gateway: the versioned calibration (JSON) and its clip features (SQLite).

    <state_dir>/machine_sound/<machine>/calibration.json       the calibration in service
    <state_dir>/machine_sound/<machine>/calibration.v<N>.json  every version written
    <state_dir>/machine_sound/<machine>/history.sqlite         136 float32 features per clip

The history is the pump's `FeatureHistory` (one row per clip, ~560 bytes: 14 days of 10 s clips
is ~70 MB), so a calibration can be redone from the machine's own sound after maintenance.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from water_edge.models.machine_sound.detector import SoundCalibration
from water_edge.models.machine_sound.features import FEATURE_NAMES
from water_edge.models.manifest import ModelError
from water_edge.models.pump.store import FeatureHistory


def machine_dir(state_dir: Path, machine: str) -> Path:
    return Path(state_dir) / "machine_sound" / machine


def open_history(
    state_dir: Path, machine: str, history_days: float, *, create: bool = True
) -> FeatureHistory:
    path = machine_dir(state_dir, machine) / "history.sqlite"
    if not create and not path.exists():
        raise ModelError(f"no clip history for machine {machine} at {path}")
    return FeatureHistory(path, list(FEATURE_NAMES), history_days, reset_on_change=create)


class SoundCalibrationStore:
    """One machine's calibration; each write takes the next version and is put in service atomically."""

    def __init__(self, state_dir: Path, machine: str) -> None:
        self.dir = machine_dir(state_dir, machine)
        self.path = self.dir / "calibration.json"

    def load(self) -> SoundCalibration | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ModelError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        try:
            return SoundCalibration.from_dict(json.loads(text))
        except (ValueError, ModelError) as exc:
            raise ModelError(f"{self.path}: {exc}") from exc

    def versions(self) -> list[int]:
        found = []
        for p in self.dir.glob("calibration.v*.json"):
            with contextlib.suppress(ValueError):
                found.append(int(p.stem.removeprefix("calibration.v")))
        return sorted(found)

    def save(self, cal: SoundCalibration) -> SoundCalibration:
        self.dir.mkdir(parents=True, exist_ok=True)
        current = None
        with contextlib.suppress(ModelError):
            current = self.load()
        cal.version = max([0, *self.versions(), current.version if current else 0]) + 1
        text = json.dumps(cal.to_dict()) + "\n"
        for target in (self.dir / f"calibration.v{cal.version}.json", self.path):
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        return cal
