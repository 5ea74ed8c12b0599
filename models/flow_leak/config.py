"""Config for night-flow leak detection: one `[[models.flow_leak]]` table per district inlet.

[[models.flow_leak]]
name = "dma-north"                       # event source, state directory, fusion site
inflow = ["plc1/inlet_a_flow", "plc1/inlet_b_flow"]   # tags ("tag" or "device/tag"), m3/h
outflow = ["plc1/transfer_flow"]         # subtracted
volume = []                              # those of the tags above that are totalisers (m3)
pressure = "plc1/inlet_pressure"         # optional: night flow is pressure-corrected
timezone = "Europe/Rome"                 # nights are local; default: the system's zone
night_start = "02:00"
night_end = "04:00"
baseline_nights = 14

[models.flow_leak.burst]                 # bursts within hours (off unless enabled)
enabled = true
holidays_country = "IT"                  # public holidays judged as Sundays
holidays = [2026-06-29]                  # and local ones (a patron saint's day)
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.local_zone import check_zone
from water_edge.core.names import NAME_PATTERN
from water_edge.core.night_length import check_night_length, minutes, night_keys


class BurstSection(BaseModel):
    """`[models.flow_leak.burst]`: bursts found within hours (`burst.py`); off unless enabled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    slot_minutes: int = Field(default=15, ge=5, le=240)
    learn_days: int = Field(default=14, ge=7, le=90)
    profile_days: int = Field(default=28, ge=14, le=120)
    min_added_pct: float = Field(default=10.0, gt=0, le=500)
    min_added_m3h: float = Field(default=0.0, ge=0)
    z: float = Field(default=5.0, ge=1, le=50)
    clear_minutes: float = Field(default=60.0, ge=15, le=1440)
    accept_hours: float = Field(default=72.0, ge=6, le=2160)
    holidays: list[date] = Field(default_factory=list)  # judged as Sundays, besides the country's
    # Public holidays from a calendar that does not run out (`holiday_dates.py`): ISO 3166-1, -2.
    holidays_country: str | None = Field(default=None, pattern=r"^[A-Z]{2,3}$")
    holidays_subdivision: str | None = Field(default=None, min_length=1, max_length=16)

    @field_validator("slot_minutes")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if 1440 % value:
            raise ValueError("must divide a day (15, 20, 30, 60 ...)")
        return value

    @model_validator(mode="after")
    def _subdivision_of_a_country(self) -> BurstSection:
        if self.holidays_subdivision is not None and self.holidays_country is None:
            raise ValueError("holidays_subdivision needs holidays_country (the country it is part of)")
        return self


class FlowLeakSection(BaseModel):
    """`[[models.flow_leak]]`: minimum night flow of one district and its steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    inflow: list[str] = Field(min_length=1)
    outflow: list[str] = Field(default_factory=list)
    # Inflow/outflow tags that are a meter's total-volume register (m3), not a flow: read through
    # `volume.VolumeRate` (the flow between two readings).
    volume: list[str] = Field(default_factory=list)
    pressure: str | None = None
    timezone: str | None = None
    night_start: str = "02:00"
    night_end: str = "04:00"
    sample_s: float = Field(default=60.0, ge=1, le=3600)  # net flow sampled this often (reading time)
    stale_after_s: float = Field(default=300.0, gt=0)  # an older value counts as missing
    average_minutes: float = Field(default=15.0, ge=1, le=240)
    baseline_nights: int = Field(default=14, ge=3, le=100)
    min_added_pct: float = Field(default=4.0, gt=0, le=100)
    min_added_m3h: float = Field(default=0.0, ge=0)
    min_added_sigma: float = Field(default=1.5, ge=0.5, le=10)
    h: float = Field(default=6.0, ge=1, le=50)
    track_nights: int = Field(default=28, ge=3, le=365)
    sigma_nights: int = Field(default=56, ge=0, le=365)  # noise re-measured over these; 0: keep the learned
    pressure_exponent: float = Field(default=1.0, ge=0.2, le=2.5)  # FAVAD N1
    reference_rise_pct: float = Field(default=20.0, gt=0, le=500)  # the fixed-threshold rule's margin
    site: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)  # default: name
    burst: BurstSection = Field(default_factory=BurstSection)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return check_zone(value)

    @field_validator("night_start", "night_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        minutes(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> FlowLeakSection:
        if minutes(self.night_start) == minutes(self.night_end):
            raise ValueError("night_start and night_end must differ")
        check_night_length(self.night_start, self.night_end, night_keys)
        for key, tags in (("inflow", self.inflow), ("outflow", self.outflow)):
            twice = sorted({t for t in tags if tags.count(t) > 1})
            if twice:
                raise ValueError(f"{key} names {twice[0]!r} twice: its flow would count twice")
        both = set(self.inflow) & set(self.outflow)
        if both:
            raise ValueError(f"tag(s) both inflow and outflow: {', '.join(sorted(both))}")
        stray = set(self.volume) - set(self.inflow) - set(self.outflow)
        if stray:
            raise ValueError(f"volume tag(s) not in inflow or outflow: {', '.join(sorted(stray))}")
        return self

    @property
    def fusion_site(self) -> str:
        return self.site or self.name
