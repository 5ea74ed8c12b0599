"""Config for machine sound monitoring: one `[[models.machine_sound]]` table per machine listened to.

Example:

    [[models.machine_sound]]
    name = "P1-sound"          # the machine: its state directory and its events' source
    device = "mic-p1"          # a kind = "audio" device (a microphone next to the pump or motor)
    channels = ["mic"]         # which of the device's channels to average (default: all)
    running_tag = "plc/pump1.running"   # optional: listen only while the PLC says it runs
    [models.machine_sound.calibration]
    auto_hours = 24            # learn the machine's normal sound over its first day
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from water_edge.core.names import NAME_PATTERN


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SoundCalibrationConfig(_Section):
    """When and from how many clips a machine's normal sound is learnt."""

    auto_hours: float = Field(default=24.0, gt=0, le=24 * 30)  # clips of the first N hours after install
    min_clips: int = Field(default=100, ge=10)  # never calibrate on fewer
    max_clips: int = Field(default=2000, ge=10)  # more are thinned evenly over the range
    # What the covariance is shrunk towards: "none", the identity; "pump", how pumps' features
    # co-vary in normal running (models/machine_sound/pump_prior.npy). The prior helps a short
    # calibration (<= 100 clips) that spans the machine's normal, and costs a little on longer or
    # consecutive ones (docs/machine-sound.md): off by default.
    prior: Literal["pump", "none"] = "none"
    # Of the feature covariance towards the prior; default: with "pump" prior_clips / (clips +
    # prior_clips), the prior counting as that many clips (0.3 with 100 clips); with "none" 0.01.
    shrinkage: float | None = Field(default=None, gt=0, lt=1)
    prior_clips: float = Field(default=43.0, gt=0, le=10_000)
    # The detector's statistic (docs/machine-sound.md, "How it works"); 1 and 0: plain Mahalanobis.
    eigen_power: float = Field(default=2.0, ge=1.0, le=4.0)  # weight 1 / variance^p per direction
    shape_weight: float = Field(default=1.0, ge=0.0, le=10.0)  # of the spectral-shape shift term
    quantile: float = Field(default=0.99, gt=0.5, lt=1.0)  # of out-of-fold calibration distances
    margin: float = Field(default=1.1, ge=1.0, le=10.0)  # alarm level = quantile x margin

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.max_clips < self.min_clips:
            raise ValueError(f"max_clips ({self.max_clips}) must not be below min_clips ({self.min_clips})")
        return self


class MachineSoundSection(_Section):
    """`[[models.machine_sound]]`: learn one machine's normal sound from an audio device, then
    raise `machine_sound_anomaly` when it changes."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    device: str = Field(pattern=NAME_PATTERN, max_length=64)  # a kind = "audio" device
    channels: list[str] | None = Field(default=None, min_length=1)  # averaged to mono; default all
    # The features are defined on 10 s clips (docs/machine-sound.md); other lengths shift them.
    clip_s: float = Field(default=10.0, ge=1.0, le=60.0)
    # Clips quieter than this (RMS, dBFS) are taken as the machine stopped: not learnt, not scored.
    running_min_dbfs: float | None = Field(default=None, ge=-160.0, le=0.0)
    # The machine's run signal from its PLC ("tag" or "device/tag": a run bit, a motor current):
    # a clip is learnt and scored only when the signal read at least `running_min` from before the
    # clip to its end; a clip with no reading of it within `running_stale_s` before is not judged.
    running_tag: str | None = Field(default=None, min_length=1, max_length=200)
    running_min: float = 0.5
    running_stale_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    on_clips: int = Field(default=3, ge=1)  # clips above the alarm level among the last `of_clips`...
    of_clips: int = Field(default=4, ge=1, le=1000)  # ...to raise an event (kept in memory)
    off_clips: int = Field(default=6, ge=1)  # consecutive clips below hysteresis to clear it
    hysteresis: float = Field(default=0.8, gt=0, le=1.0)
    trend_clips: int = Field(default=30, ge=2, le=1000)  # recent scores kept for events and status
    history_days: float = Field(default=14.0, gt=0, le=365)  # clip features kept for recalibration
    calibration: SoundCalibrationConfig = SoundCalibrationConfig()

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.on_clips > self.of_clips:
            raise ValueError(f"on_clips ({self.on_clips}) must not exceed of_clips ({self.of_clips})")
        return self


def load_machine_sound_sections(path: Path) -> tuple[Path, list[MachineSoundSection]]:
    """`gateway.state_dir` and the `[[models.machine_sound]]` list of an agent config file, read with
    tomllib so the CLI works without the whole agent config; `ValueError` with one line on a problem."""
    from water_edge.models.config_file import processor_sections

    return processor_sections(path, "machine_sound", MachineSoundSection)
