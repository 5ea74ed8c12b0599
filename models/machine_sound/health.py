"""`MachineSoundProcessor.health()`: one machine's state (learning, armed, alarm), calibration, counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

SoundState = Literal["learning", "armed", "alarm"]

SoundCalibrationInfo = TypedDict(
    "SoundCalibrationInfo",
    {"version": int, "calibrated_at": str, "clips": int, "from": str | None, "to": str | None},
)


@dataclass(frozen=True)
class MachineSoundHealth:
    """`learning_progress` (0..1) only while learning; scores are in units of the alarm level."""

    machine: str
    device: str
    state: SoundState
    calibration: SoundCalibrationInfo | None
    learning_progress: float | None
    calibrating: bool
    clips: int  # complete clips taken from the device
    clips_dropped: int  # clips lost because scoring fell behind
    clips_stopped: int  # the machine was off: quieter than running_min_dbfs, or its run signal said so
    clips_silent: int  # digital silence: the microphone was not heard
    clips_broken: int  # clips abandoned because audio was lost inside them
    scored: int
    events: int
    last_score: float | None
    recent_scores: list[float]  # the last few clips' scores, oldest first
    last_error: str | None
    clips_faulty: int = 0  # windows left out and clips abandoned for a sensor fault the driver saw
    clips_saturated: int = 0  # clips saturated at full scale: scored once armed, never learnt from
    clips_no_run_signal: int = 0  # `running_tag` set, but no fresh reading of it: not judged
    calibrations_failed: int = 0  # automatic calibrations that failed since the start: learning again

    def status_lines(self) -> list[str]:
        if self.state == "learning":
            progress = f"{100 * (self.learning_progress or 0.0):.0f} %"
            head = f"{self.machine}: learning its normal sound ({progress}, {self.clips} clips)"
        else:
            cal = self.calibration
            version = f"calibration v{cal['version']}, {cal['clips']} clips" if cal else "no calibration"
            score = "-" if self.last_score is None else f"{self.last_score:.2f}"
            head = f"{self.machine}: {self.state}, last score {score} ({version})"
        lines = [head]
        if self.clips_dropped or self.clips_broken:
            lines.append(
                f"{self.clips_dropped} clips dropped (scoring behind), "
                f"{self.clips_broken} broken by lost audio"
            )
        if self.clips_faulty:
            lines.append(
                f"{self.clips_faulty} windows or clips left out for a sensor fault "
                "(hum, a dead or copied channel, dropouts): neither learnt nor scored"
            )
        if self.clips_saturated:
            lines.append(
                f"{self.clips_saturated} clips saturated at full scale: not learnt from (lower the gain)"
            )
        if self.clips_stopped:
            lines.append(f"{self.clips_stopped} clips while the machine was off: neither learnt nor scored")
        if self.clips_no_run_signal:
            lines.append(
                f"{self.clips_no_run_signal} clips not judged: no fresh reading of the run signal "
                "(running_tag)"
            )
        if self.calibrations_failed and self.state == "learning":
            lines.append(f"{self.calibrations_failed} automatic calibration(s) failed, learning again")
        if self.last_error:
            lines.append(f"last error: {self.last_error}")
        return lines
