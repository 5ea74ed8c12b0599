"""`[[models.meter]]`: one table per group of meters that share thresholds (a building, a district,
the homes in a watch-over programme). Validated without I/O.

    [[models.meter]]
    name = "block-a"
    device = "wmeters"                 # the wmbus / mbus device the meters belong to
    meters = ["flat1", "flat2"]        # or "all"
    continuous_hours = 24              # use in every one of 24 consecutive hours: a leak
    night = "02:00-04:00"
    night_l = 20
    no_use_hours = 12                  # watch-over: no use for 12 expected hours
    expected = "06:00-23:00"
    timezone = "Europe/Berlin"
"""

from __future__ import annotations

from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.names import NAME_PATTERN
from water_edge.core.night_length import check_night_length
from water_edge.core.patterns import explained

WINDOW_PATTERN = explained(
    r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$", "a time window HH:MM-HH:MM such as 02:00-04:00"
)


def window_minutes(text: str) -> tuple[int, int]:
    """ "22:30-05:00" -> (1350, 300): start and end in minutes of the day (the window may wrap)."""
    start, end = text.split("-")
    return int(start[:2]) * 60 + int(start[3:]), int(end[:2]) * 60 + int(end[3:])


def in_window(minute: int, window: tuple[int, int]) -> bool:
    """Whether `minute` of the day is inside; a window that starts where it ends is the whole day."""
    start, end = window
    return start <= minute < end if start < end else (minute >= start or minute < end)


class MeterGroupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    device: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)
    meters: Literal["all"] | list[str] = "all"
    volume_tag: str = Field(default="volume", pattern=NAME_PATTERN)  # the total volume, m3
    backflow_tag: str = Field(default="volume_backward", pattern=NAME_PATTERN)  # backward register, m3
    timezone: str = "UTC"
    # A leak behind the meter: at least `continuous_min_l` litres in each of `continuous_hours` hours.
    continuous_hours: int = Field(default=24, ge=2, le=168)
    continuous_min_l: float = Field(default=1.0, gt=0)
    # Backflow: the backward register grew by `backflow_l` litres within `backflow_hours`.
    backflow_l: float = Field(default=5.0, gt=0)
    backflow_hours: float = Field(default=24.0, gt=0, le=168)
    # Night use: more than `night_l` litres within the nightly window (local time).
    night: str = Field(default="02:00-04:00", pattern=WINDOW_PATTERN)
    night_l: float = Field(default=20.0, gt=0)
    # Watch-over: no hour with `no_use_l` litres for `no_use_hours` hours of the expected window.
    no_use_hours: float | None = Field(default=None, gt=0, le=168)
    no_use_l: float = Field(default=1.0, gt=0)
    expected: str = Field(default="06:00-23:00", pattern=WINDOW_PATTERN)
    # Hours without a reading are unknown: longer gaps are not split into hourly use.
    max_gap_h: float = Field(default=3.0, gt=0, le=48)
    alarms: bool = True  # meter_alarm events from the meters' own flags (`<meter>.alarm.*`)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        # OSError: a name too long for a file name (ZoneInfo looks it up as one).
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'Europe/Berlin')") from exc
        return value

    @field_validator("night", "expected")
    @classmethod
    def _whole_hours(cls, value: str) -> str:
        # Use is known per clock hour (`consumption.py`), and an hour counts when it starts inside
        # the window: a window of part hours would be judged as other hours than it says, or none.
        start, end = window_minutes(value)
        if start % 60 or end % 60:
            whole = f"{start // 60:02d}:00-{-(-end // 60) % 24:02d}:00"
            raise ValueError(f"use is counted per clock hour: give the window in whole hours, e.g. {whole!r}")
        return value

    @field_validator("night")
    @classmethod
    def _night_ends(cls, value: str) -> str:
        start, end = window_minutes(value)
        if start == end:
            # A night that never ends is never judged (`expected` may be the whole day, not this).
            raise ValueError("the night window starts where it ends, so it would never be judged")
        night_start, night_end = value.split("-")
        check_night_length(night_start, night_end)
        return value

    @model_validator(mode="after")
    def _meters(self) -> Self:
        if isinstance(self.meters, list):
            if not self.meters:
                raise ValueError("'meters' is 'all' or a list of meter names")
            twice = sorted({m for m in self.meters if self.meters.count(m) > 1})
            if twice:
                raise ValueError(f"meter {twice[0]!r} is listed twice")
        return self
