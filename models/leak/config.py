"""Config for acoustic leak detection: one `[[models.leak]]` section per `audio` device listened to.

Each channel of the device is one hydrophone (a *sensor*, named `<device>.<channel>`) with its own
baseline. Example:

    [[models.leak]]
    device = "hydrophones"          # a kind = "audio" device
    timezone = "Europe/Amsterdam"   # nights are local; default: the system's zone
    night_start = "02:00"
    night_end = "04:00"
    baseline_nights = 7             # learned automatically after install
    material = "ductile_iron"       # judges the material's leak bands; with spacing_m, locates
    diameter_mm = 200
    spacing_m = 120                 # channel 0 to channel 1, along the pipe
    site = "dma-north"              # fuses with [[models.flow_leak]] of the same site
    [models.leak.detection]
    min_rise_db = 3.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.local_zone import check_zone
from water_edge.core.names import NAME_PATTERN
from water_edge.core.night_length import check_night_length, minutes, night_keys
from water_edge.models.leak import pipes


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Deprecated keys -> what replaced them (the detector judges checks against each sensor's baseline
# and confirms over nights; the classifier is one piece of evidence and raises nothing on its own).
DEPRECATED: Final = {
    "alpha": "ignored since the per-sensor baseline detector (the classifier is no longer smoothed "
    "into alarms); remove it",
    "on_windows": "ignored; confirmation now takes two positive checks (same or next night): see "
    "[models.leak.detection] confirm_next_night",
    "off_windows": "ignored; a leak now clears after quiet nights: see [models.leak.detection] clear_nights",
}


class DetectionSection(_Section):
    """How a check is judged against the baseline (`models.leak.judge.JudgeParams`)."""

    min_rise_db: float = Field(default=3.0, ge=0.5, le=40)
    min_shape_rise_db: float = Field(default=1.5, ge=0, le=40)
    k_sigma: float = Field(default=3.0, ge=1, le=10)
    min_bands: int = Field(default=2, ge=1, le=20)
    spread_tol_db: float = Field(default=3.0, ge=0, le=40)
    # A check with more bands wandering than this (rain, works in the street) is not judged at all.
    max_unsteady_bands: int = Field(default=4, ge=0, le=20)
    tonal_tol_db: float = Field(default=3.0, ge=0, le=40)
    clf_logit_rise: float = Field(default=1.5, ge=0, le=24)
    # A rise along a learned nuisance pattern (more night demand than the baseline nights held)
    # is explained even beyond the baseline's range; false: judged against that range only.
    extend_patterns: bool = True
    # Plastic pipes: a band's shape rose when it stands out of the spectrum's common-mode rise (the
    # median rise over the bands) by its own variability of that over the baseline nights, not
    # against the spectrum's median band (which jumps when a pump stops). false: the fifth pass's
    # rule (`docs/leak-detection.md`, sixth pass).
    plastic_common_mode: bool = True
    # Metal pipes: how far a nuisance pattern (more night flow) went beyond the baseline's range is
    # read from the bands outside the leak band, where flow noise shows and a leak does not; false:
    # from every band, as before the seventh pass (a loud leak then passed for more flow noise).
    metal_witness: bool = True
    # With a material: rain's signature is the bands above the leak band risen and wandering by this
    # much more than a steady noise; a check with it is judged as rained on (only bands this steady
    # count, no joint test, nothing accumulated: docs/leak-detection.md, eighth pass). 0: off.
    rain_spread_db: float = Field(default=1.5, ge=0, le=20)
    # A disturbed check (more than `max_unsteady_bands` wandering: rain, works) is not judged, but
    # at least `min_bands` leak bands steady within `rain_spread_db` whose level rose over the
    # baseline's by its threshold confirm an open warning (never open one; docs/leak-detection.md,
    # ninth pass). Needs `material` and `rain_spread_db` > 0.
    disturbed_confirms: bool = True
    # Plastic pipes: a check positive only because its leak band rose together (a night of more
    # demand than the baseline nights heard: `models/leak/demand.py`) may open a warning but not
    # confirm it on the same night; false: it confirms as any positive check (the ninth pass's
    # rule; docs/leak-detection.md, tenth pass).
    plastic_demand: bool = True
    # Plastic pipes: a disturbed check (rain) whose steady leak bands below 45 Hz rose 2 x their
    # level threshold may open a warning, confirmed by a dry check or a disturbed one that clears
    # the same bar (`models/leak/rained_out.py`); false: a disturbed check only confirms (the tenth
    # pass's rule; docs/leak-detection.md, eleventh pass). Needs `disturbed_confirms`.
    plastic_rain_opens: bool = True
    # Plastic pipes, rain (docs/leak-detection.md, twelfth pass): three leak bands below 45 Hz at
    # 1.5 x their level threshold also open a warning from a disturbed check
    # (`models/leak/rained_out.py`; needs `plastic_rain_opens`); false: two at 2 x only.
    plastic_rain_second_bar: bool = True
    # Plastic pipes: a disturbed check confirms a warning only with a band the warning showed (or
    # its neighbour), with three steady bands, or after a demand-like warning — not with the rain's
    # skirt (`models/leak/rain_confirms.py`); false: any two steady bands confirm, as before.
    plastic_rain_same_bands: bool = True
    # Metal pipes: the leak band's unexplained rise summed over its bands (`models/leak/joint.py`)
    # makes a check positive at this many standard deviations (or `joint_k` x its spread on the
    # baseline's own checks, whichever is higher); 0 turns the joint test off.
    joint_z: float = Field(default=2.0, ge=0, le=20)
    joint_k: float = Field(default=3.0, ge=0, le=20)
    # Metal pipes: the leak band's residual also weighted by what a leak would add to each band over
    # the sensor's quiet (most at the quiet top of the band), thresholded as the joint test
    # (`models/leak/matched.py`, docs/leak-detection.md, tenth pass); false: the joint test alone.
    metal_matched: bool = True
    # Metal pipes: a band's shape is judged against the spectrum's common-mode rise, as a plastic
    # pipe's (`plastic_common_mode`): a booster pump stopping moves the spectrum's median band, not
    # the bands' common rise (docs/leak-detection.md, tenth pass); false: against the median band.
    metal_common_mode: bool = True
    # Metal pipes: a rained-on check's leak bands below where the rain reaches (read from the check:
    # the bands wandering or standing out from the top of the spectrum down, and the rain's skirt
    # below them) are judged as one, the nuisance patterns refitted on the bands the rain left
    # clean (`models/leak/under_rain.py`); positive, it may open or confirm a warning. false: a
    # rained-on metal check has no joint test (the eleventh pass's rule; docs/leak-detection.md,
    # twelfth pass).
    metal_below_rain: bool = True
    # Metal pipes: a one-sided sum (CUSUM) of the joint statistic over judged checks
    # (`models/leak/accumulate.py`), in spreads of the sensor's own quiet: each check adds what it
    # exceeds `accumulate_k` by; reaching `accumulate_h` makes a check positive; the sum looks back
    # at most `accumulate_nights` nights (a slow drift is not a leak). accumulate_h = 0 turns it off.
    accumulate_k: float = Field(default=1.0, ge=0, le=10)
    accumulate_h: float = Field(default=2.0, ge=0, le=50)
    accumulate_nights: int = Field(default=2, ge=1, le=14)
    clear_nights: int = Field(default=2, ge=1, le=30)
    # A second positive confirms a warning later the same night or the next night; true: only on a
    # later night (fewer false alarms from one loud night, a little slower; docs/leak-detection.md).
    confirm_next_night: bool = False


class LeakModelSection(_Section):
    """`[[models.leak]]`: per-hydrophone baselines over nights on an `audio` device's channels."""

    device: str = Field(pattern=NAME_PATTERN, max_length=64)  # the name of a kind = "audio" device
    model: Path | None = None  # classifier manifest; default: the shipped models/leak/leak_detector.json
    channels: list[str] | None = None  # channel names to listen to; default: all of the device's
    timezone: str | None = None  # IANA name; None: the system's local zone
    night_start: str = "02:00"
    night_end: str = "04:00"
    check_minutes: float = Field(default=30.0, ge=1, le=240)  # a check = a piece of the night
    baseline_nights: int = Field(default=7, ge=1, le=100)
    keep_nights: int = Field(default=120, ge=7, le=3650)  # checks kept for on-demand calibration
    classifier_every_s: float = Field(default=5.0, ge=1, le=600)
    material: str | None = None
    diameter_mm: float = Field(default=150.0, ge=10, le=3000)
    spacing_m: float | None = Field(default=None, gt=0, le=5000)
    correlate_s: float = Field(default=30.0, ge=2, le=120)  # audio kept per channel to locate
    site: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)
    detection: DetectionSection = DetectionSection()
    # Deprecated (the classifier-only detector's smoothing and hysteresis, before the baseline per
    # sensor): still accepted and range-checked so a config that ran before still starts, but
    # ignored; `check-config` and the agent's log say what replaced them (`DEPRECATED`).
    alpha: float | None = Field(default=None, gt=0, le=1)
    on_windows: int | None = Field(default=None, ge=1)
    off_windows: int | None = Field(default=None, ge=1)

    def deprecated_keys(self) -> list[str]:
        """The deprecated keys this table sets (in `DEPRECATED`'s order)."""
        return [k for k in DEPRECATED if k in self.model_fields_set]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return check_zone(value)

    @field_validator("night_start", "night_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        minutes(value)
        return value

    @field_validator("channels")
    @classmethod
    def _some_channels(cls, value: list[str] | None) -> list[str] | None:
        if value == []:
            raise ValueError("name at least one channel, or leave 'channels' out to listen to all of them")
        return value

    @field_validator("material")
    @classmethod
    def _material(cls, value: str | None) -> str | None:
        return None if value is None else pipes.material(value).name

    @model_validator(mode="after")
    def _check(self) -> LeakModelSection:
        if minutes(self.night_start) == minutes(self.night_end):
            raise ValueError("night_start and night_end must differ")
        night = check_night_length(self.night_start, self.night_end, night_keys)
        if self.check_minutes > night:
            raise ValueError(f"check_minutes ({self.check_minutes:g}) is longer than the night ({night} min)")
        if self.spacing_m is not None and self.material is None:
            raise ValueError("spacing_m needs material (the wave speed comes from it)")
        return self
