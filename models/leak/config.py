"""Config for acoustic leak detection: one `[[models.leak]]` section per `audio` device listened to.

Example:

    [[models.leak]]
    device = "hydrophones"   # a kind = "audio" device
    on_windows = 3
    off_windows = 5
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from water_edge.core.names import NAME_PATTERN


class LeakModelSection(BaseModel):
    """`[[models.leak]]`: run the acoustic leak detector on an `audio` device's windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(pattern=NAME_PATTERN, max_length=64)  # the name of a kind = "audio" device
    model: Path | None = None  # a model manifest; default: the shipped models/leak/leak_detector.json
    alpha: float = Field(default=0.4, gt=0, le=1)  # smoothing of the probability (EWMA weight)
    on_windows: int = Field(default=3, ge=1)  # windows above threshold before a leak event
    off_windows: int = Field(default=5, ge=1)  # windows below before leak_cleared
