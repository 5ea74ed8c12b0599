"""Per-machine state on the gateway: the versioned calibration (JSON) and its clip features (SQLite).

    <state_dir>/machine_sound/<machine>/calibration.json       the calibration in service
    <state_dir>/machine_sound/<machine>/calibration.v<N>.json  every version written
    <state_dir>/machine_sound/<machine>/history.sqlite         136 float32 features per clip
    <state_dir>/machine_sound/<machine>/signal.json            since when its microphone is not heard

The history is the pump's `FeatureHistory` (one row per clip, ~560 bytes: 14 days of 10 s clips
is ~70 MB), so a calibration can be redone from the machine's own sound after maintenance.

`signal.json` (`SignalRecord`) pairs `microphone_signal_lost` with its `microphone_signal_restored`
across restarts: `{"silent_since_ns": N}` while the microphone is not heard, `{}` once it is again.
A machine whose table was taken out of the config while its microphone was not heard has that
cleared at the next start (`silent_unconfigured`), so that configured again it starts as heard.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from water_edge.models.json_record import JsonRecord
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


class SignalRecord(JsonRecord):
    """Since when the machine's microphone is not heard, as the last run left it: a restart with it
    still silent says `microphone_signal_lost` no second time, and one after the repair says
    `microphone_signal_restored`. Best effort, written atomically (again at `retry` when the card
    would not take it); a missing or unreadable record reads as heard (as before the record
    existed)."""

    def __init__(self, state_dir: Path, machine: str) -> None:
        super().__init__(machine_dir(state_dir, machine) / "signal.json", "machine_sound.signal")

    def silent_since(self) -> int | None:
        """When the silence the last run left unrestored began (ns), or None."""
        data = self.load()
        since = data.get("silent_since_ns") if isinstance(data, dict) else None
        return since if isinstance(since, int) and not isinstance(since, bool) else None

    def silent(self, silent_since_ns: int | None) -> str | None:
        """Record the silence since `silent_since_ns`, or the microphone heard (None); why it could
        not be written, else None. Blocking."""
        return self.save({} if silent_since_ns is None else {"silent_since_ns": silent_since_ns})


def silent_unconfigured(state_dir: Path, configured: Collection[str]) -> list[tuple[str, int, Path]]:
    """The machines with state in `state_dir` that no table in `configured` names and whose
    microphone was not heard at the last stop: (machine, silent since ns, its directory), each
    record cleared (written as heard) before it is returned. Blocking."""
    root = Path(state_dir) / "machine_sound"
    try:
        kept = sorted(p.parent.name for p in root.glob("*/signal.json"))
    except OSError:  # no machine state yet, or a directory this user may not list
        return []
    found: list[tuple[str, int, Path]] = []
    for machine in kept:
        record = SignalRecord(state_dir, machine)
        if machine in configured or (since := record.silent_since()) is None:
            continue
        record.silent(None)
        found.append((machine, since, machine_dir(state_dir, machine)))
    return found
