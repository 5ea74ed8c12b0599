"""Per-hydrophone state on the gateway: the night checks it heard and its versioned baselines.

    <state_dir>/leak/<sensor>/checks.jsonl        one line per check (`CheckStats.to_dict`), oldest first
    <state_dir>/leak/<sensor>/baseline.json       the baseline in service (highest version)
    <state_dir>/leak/<sensor>/baseline.v<N>.json  every version ever written (audit, roll back)
    <state_dir>/leak/<sensor>/confirmation.json   its warning or leak in progress (`Confirmation`),
                                                  and since when it is not heard

A check line is ~1 KB and a night has a few: a year of nights is ~1.5 MB per sensor; the file is
cut to the last `keep_nights` nights when it grows past twice that. Baselines are written like
pump calibrations: next version, temp file + fsync + rename, so a reader sees old or new. The
confirmation record is replaced the same way after each change, so a restart goes on with the
episode the sensor was in (`CONFIRMATION_FORMAT`, the sensor's name and its baseline version in it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from water_edge.core.files import atomic_write
from water_edge.models.json_record import JsonRecord
from water_edge.models.leak.baseline import Baseline, BaselineError, CheckStats
from water_edge.models.versioned_store import VersionedJsonStore

CONFIRMATION_FORMAT = "leak-confirmation/1"


def sensor_dir(state_dir: Path, sensor: str) -> Path:
    return Path(state_dir) / "leak" / sensor


def kept_sensors(state_dir: Path) -> list[str]:
    """The sensors with a confirmation record in `state_dir`, configured or not, by name."""
    root = Path(state_dir) / "leak"
    try:
        return sorted(p.parent.name for p in root.glob("*/confirmation.json"))
    except OSError:  # no leak state yet, or a directory this user may not list
        return []


class SensorStore:
    """One hydrophone's checks and baselines; blocking file I/O (call from a worker thread)."""

    def __init__(self, state_dir: Path, sensor: str, keep_nights: int = 120) -> None:
        self.sensor = sensor
        self.dir = sensor_dir(state_dir, sensor)
        self.checks_path = self.dir / "checks.jsonl"
        self._baselines = VersionedJsonStore(self.dir, "baseline", Baseline.from_dict, BaselineError)
        self.baseline_path = self._baselines.path
        self.confirmation_path = self.dir / "confirmation.json"
        self._confirmation = JsonRecord(self.confirmation_path, "leak.confirmation")
        self.keep_nights = keep_nights
        self.bad_lines = 0

    # -- checks ---------------------------------------------------------------------------------

    def append(self, check: CheckStats) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.checks_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(check.to_dict(), separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._prune()

    def checks(self, from_ns: int | None = None, to_ns: int | None = None) -> list[CheckStats]:
        """Stored checks with `from_ns <= start_ns <= to_ns`, oldest first; unreadable lines are
        counted in `bad_lines` and skipped (a torn last line after a power cut)."""
        out: list[CheckStats] = []
        try:
            # Undecodable bytes (a corrupted card) become a line that fails to parse, not an error.
            lines = self.checks_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return out
        self.bad_lines = 0
        for line in lines:
            try:
                check = CheckStats.from_dict(json.loads(line))
            except (ValueError, BaselineError):
                self.bad_lines += 1
                continue
            if (from_ns is None or check.start_ns >= from_ns) and (to_ns is None or check.start_ns <= to_ns):
                out.append(check)
        return out

    def nights(self) -> list[str]:
        return list(dict.fromkeys(c.night for c in self.checks()))

    def _prune(self) -> None:
        checks = self.checks()
        nights = list(dict.fromkeys(c.night for c in checks))
        if len(nights) <= 2 * self.keep_nights:
            return
        keep = set(nights[-self.keep_nights :])
        text = "".join(
            json.dumps(c.to_dict(), separators=(",", ":")) + "\n" for c in checks if c.night in keep
        )
        atomic_write(self.checks_path, text.encode("utf-8"))

    # -- the confirmation in progress -----------------------------------------------------------

    def load_confirmation(self) -> Any:
        """The stored confirmation record as JSON; None when there is none or it cannot be read
        (logged as `leak.confirmation.unreadable`). The caller checks its format."""
        return self._confirmation.load()

    def save_confirmation(self, record: dict[str, Any]) -> str | None:
        """Replace the record (temp file + rename); why it could not be written, else None (a card
        that takes no writes: logged once, until a record is written again)."""
        return self._confirmation.save(record)

    # -- baselines ------------------------------------------------------------------------------

    def load(self) -> Baseline | None:
        return self._baselines.load()

    def in_service(self) -> Baseline:
        """The baseline in service, or `CalibrationFailedError` saying why there is none."""
        return self._baselines.in_service(self.sensor)

    def versions(self) -> list[int]:
        return self._baselines.versions()

    def save(self, baseline: Baseline) -> Baseline:
        """Give `baseline` the next version, keep it as `baseline.v<N>.json` and put it in service."""
        return self._baselines.save(baseline)


def last_nights(checks: Iterable[CheckStats], nights: int) -> list[CheckStats]:
    """The checks of the last `nights` nights."""
    checks = list(checks)
    keep = set(list(dict.fromkeys(c.night for c in checks))[-nights:])
    return [c for c in checks if c.night in keep]
