"""`PumpProcessor.health()`: the state of each pump (learning, armed, alarm), its calibration and counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

PumpState = Literal["learning", "armed", "alarm"]

# Functional form: "from" is a keyword, and it is the key the status document has always used.
CalibrationInfo = TypedDict(
    "CalibrationInfo",
    {
        "version": int,
        "calibrated_at": str,
        "rows": int,
        "threshold": float,
        "from": str | None,
        "to": str | None,
        "model_version": str,
    },
)


@dataclass(frozen=True)
class PumpStatus:
    """One pump; `learning_progress` (0..1) only while it learns, `calibration` once it has one."""

    state: PumpState
    calibration: CalibrationInfo | None
    learning_progress: float | None
    calibrating: bool
    samples: int
    stopped_samples: int
    scored: int
    events: int
    last_score: float | None
    last_error: str | None
    clock_steps_back: int = 0  # readings found stamped earlier than before: sampling went on from them
    calibrations_failed: int = 0  # automatic calibrations that failed since the start: learning again

    def summary(self) -> str:
        """The state, with how far it has learnt or the calibration in service and its day: what a
        technician checks after an update or a recalibration (`status --json` has the rest)."""
        if self.calibration is not None:
            cal = self.calibration
            return f"{self.state} (calibration v{cal['version']} of {cal['calibrated_at'][:10]})"
        if self.state == "learning" and self.learning_progress is not None:
            return f"{self.state} {100 * self.learning_progress:.0f} %"
        return self.state


@dataclass(frozen=True)
class PumpHealth:
    model_version: str | None
    pumps: dict[str, PumpStatus]

    def status_lines(self) -> list[str]:
        lines = [", ".join(f"{name} {pump.summary()}" for name, pump in self.pumps.items())]
        for name, pump in self.pumps.items():
            if pump.calibrations_failed and pump.state == "learning":
                lines.append(
                    f"{name}: {pump.calibrations_failed} automatic calibration(s) failed, learning again"
                )
            if pump.clock_steps_back:
                back = pump.clock_steps_back
                lines.append(
                    f"{name}: clock stepped back {back} time(s): sampling went on from the readings' time"
                )
        return lines + [f"{name}: {pump.last_error}" for name, pump in self.pumps.items() if pump.last_error]
