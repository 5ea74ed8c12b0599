"""Config for pump anomaly detection: one `[[models.pump]]` section per pump in the agent's TOML file.

Example:

    [[models.pump]]
    name = "P1"
    window_s = 32
    [models.pump.signals]            # signal role -> tag ("tag" or "device/tag")
    motor_current = "plc1/p1_current"
    flow = "plc1/p1_flow"
    vibration_x = "plc1/p1_vib_x"
    [models.pump.calibration]
    auto_hours = 24
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from water_edge.core.export_numbers import LARGEST_READING
from water_edge.core.names import NAME_PATTERN

# No pump signal reaches this; a logger's or a server's "largest double" for no value (1.8e308)
# does, and would overflow every square taken of it (and the float32 history): read as missing.
# The bound of the export readers (`core.export_numbers`), on the gateway too.
LARGEST_SIGNAL = LARGEST_READING

Role = Literal[
    "motor_current",
    "voltage",
    "suction_pressure",
    "discharge_pressure",
    "flow",
    "vibration_x",
    "vibration_y",
    "winding_temp",
    "bearing_temp",
    "speed",
]
ROLES: tuple[str, ...] = get_args(Role)
# How an operator names each role in an explanation.
ROLE_WORDS: dict[str, str] = {
    "motor_current": "motor current",
    "voltage": "supply voltage",
    "suction_pressure": "suction pressure",
    "discharge_pressure": "discharge pressure",
    "flow": "flow",
    "vibration_x": "vibration axis 1",
    "vibration_y": "vibration axis 2",
    "winding_temp": "winding temperature",
    "bearing_temp": "bearing temperature",
    "speed": "speed",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PumpCalibrationConfig(_Section):
    """When and from how much normal operation a pump is calibrated."""

    auto_hours: float = Field(default=24.0, gt=0, le=24 * 30)  # first N hours after install (or reset)
    min_samples: int = Field(default=600, ge=64)  # refuse to calibrate on less
    quantile: float = Field(default=0.995, gt=0.5, lt=1.0)  # of calibration scores
    # threshold = quantile * margin * (1 + size_factor / sqrt(rows / window)): see detector.py
    margin: float = Field(default=1.2, ge=1.0, le=10.0)
    size_factor: float = Field(default=3.5, ge=0.0, le=20.0)


class PumpModelConfig(_Section):
    """One pump: which tags carry which signal, how samples are formed, and how alarms behave."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    signals: dict[Role, str] = Field(min_length=1)
    # A sample is taken every `sample_interval_s` from the latest value of each signal.
    # Seconds become integer nanoseconds: bounded so that neither rounds to 0 nor overflows.
    sample_interval_s: float = Field(default=1.0, ge=0.01, le=3600)
    window_s: float = Field(default=32.0, gt=0, le=86_400)  # must match the model's window at 1 sample/s
    stale_after_s: float = Field(default=10.0, gt=0, le=86_400)  # a value older than this counts as missing
    running_role: Role | None = "speed"  # below `running_min`, the pump is stopped: not scored
    running_min: float = 1.0
    persistence: int = Field(default=5, ge=1)  # samples above threshold before an event
    clear_after: int = Field(default=30, ge=1)  # samples below hysteresis*threshold before clearing
    hysteresis: float = Field(default=0.8, gt=0, le=1.0)
    calibration: PumpCalibrationConfig = PumpCalibrationConfig()
    history_days: float = Field(default=14.0, gt=0, le=365)  # rolling feature store kept in state_dir
    model: Path | None = None  # manifest path; default: the shipped models/pump/pump_scorer.json

    @model_validator(mode="after")
    def _running_role_mapped(self) -> PumpModelConfig:
        if self.running_role is not None and self.running_role not in self.signals:
            # No speed tag: fall back to motor current as the "is it running" signal if mapped.
            fallback = "motor_current" if "motor_current" in self.signals else None
            object.__setattr__(self, "running_role", fallback)
        return self


def load_pump_section(path: Path) -> tuple[Path, list[PumpModelConfig]]:
    """`gateway.state_dir` and the `[[models.pump]]` list of an agent config file (see
    `models.config_file`); raises `ValueError` with one line on any problem."""
    from water_edge.models.config_file import processor_sections

    return processor_sections(path, "pump", PumpModelConfig)
