"""Hydrophone nights: one site heard night after night, its background changing as a street's does.

A field detector learns a sensor's quiet over nights and must not call every louder night a leak.
`NightPlan(site)` draws each night's conditions from the site's seed (so night 40 is the same
whatever else was rendered), and `render_night` gives that night's audio as `checks` pieces of
`seconds` each (a stand-in for the two hours a logger listens: the eval listens to a few minutes
per night to keep months of nights affordable).

What varies from night to night (log-normal around the site's own mix, `fwsim.hydrophone`):
- traffic rumble: +-1.5 dB (sigma) per night, weekends (Fri/Sat nights) +2 dB, and passing
  vehicles (0.2-3 a minute, bursts 4-15 dB over a few seconds): they drop out of the quiet level;
- a booster pump near a third of the sites: it runs on some nights (its tones then stand steady
  in a few bands, the classic false alarm of a level-only logger) and not on others;
- night demand (flow noise) +-2 dB, sensor floor +-1 dB;
- rain on about one night in eight, from barely audible to louder than the background, gusting
  (5 dB sigma, over a twelfth of a check).
A leak (`LeakSpec`) starts on a given night and keeps its level (SNR against the site's nominal
background), or grows by `growth_db_per_night` (an incipient leak).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

RAIN_NIGHTS: Final = 0.125
PUMP_SITES: Final = 1 / 3
PUMP_NIGHTS: Final = 0.4


@dataclass(frozen=True)
class Site:
    """One monitored main with its sensors: material, size, spacing and the seed of its character."""

    material: str
    diameter_mm: float
    seed: int
    spacing_m: float = 100.0
    channels: int = 1
    sample_rate: int = 8000
    first_night: date = date(2025, 1, 6)  # a Monday


@dataclass(frozen=True)
class LeakSpec:
    """A leak from night `start_night` on, `position_m` from sensor A, at `snr_db` (grows if asked)."""

    start_night: int
    snr_db: float
    position_m: float = 40.0
    size: float = 1.0
    growth_db_per_night: float = 0.0
    max_snr_db: float = 20.0

    def snr_on(self, night: int) -> float | None:
        if night < self.start_night:
            return None
        return min(self.max_snr_db, self.snr_db + self.growth_db_per_night * (night - self.start_night))


@dataclass(frozen=True)
class Night:
    """The conditions of one night at one site."""

    index: int
    date: date
    traffic_db: float
    vehicles_per_min: float
    pump_on: bool
    flow_db: float
    floor_db: float
    rain_db: float | None

    def gains(self) -> tuple[tuple[str, float], ...]:
        return (
            ("traffic", self.traffic_db),
            ("pump", 0.0 if self.pump_on else -80.0),
            ("flow", self.flow_db),
        )


class NightPlan:
    """The nights of one site; `night(i)` is deterministic for the site's seed and `i`."""

    def __init__(self, site: Site) -> None:
        self.site = site
        rng = np.random.default_rng(np.random.SeedSequence([site.seed, 7]))
        self.has_pump = bool(rng.random() < PUMP_SITES)
        self.traffic_level_db = float(rng.normal(0.0, 1.0))

    def night(self, i: int) -> Night:
        rng = np.random.default_rng(np.random.SeedSequence([self.site.seed, 11, i]))
        day = self.site.first_night + timedelta(days=i)
        weekend = day.weekday() in (4, 5)  # Friday and Saturday nights
        rain = rng.random() < RAIN_NIGHTS
        return Night(
            index=i,
            date=day,
            traffic_db=self.traffic_level_db + float(rng.normal(0.0, 1.5)) + (2.0 if weekend else 0.0),
            vehicles_per_min=float(math.exp(rng.uniform(math.log(0.2), math.log(3.0)))),
            pump_on=self.has_pump and bool(rng.random() < PUMP_NIGHTS),
            flow_db=float(rng.normal(0.0, 2.0)),
            floor_db=float(rng.normal(0.0, 1.0)),
            rain_db=float(rng.uniform(-15.0, 3.0)) if rain else None,
        )

    def scene(
        self, night: Night, check: int, leak: LeakSpec | None = None, *, seconds: float = 60.0
    ) -> PipeScene:
        snr = leak.snr_on(night.index) if leak is not None else None
        site = self.site
        return PipeScene(
            material=site.material,
            diameter_mm=site.diameter_mm,
            spacing_m=site.spacing_m,
            leak_position_m=None if snr is None or leak is None else leak.position_m,
            leak_size=1.0 if leak is None else leak.size,
            snr_db=0.0 if snr is None else snr,
            backgrounds=BACKGROUNDS,
            sample_rate=site.sample_rate,
            channels=site.channels,
            seed=int(np.random.SeedSequence([site.seed, 13, night.index, check]).generate_state(1)[0]),
            site_seed=site.seed,
            gains_db=night.gains(),
            rain_db=night.rain_db,
            # Rain wanders over minutes in a 30-min check; a shortened check keeps that proportion.
            rain_gust_s=max(1.0, seconds / 12),
            vehicles_per_min=night.vehicles_per_min,
        )

    def render_night(
        self, i: int, *, checks: int = 2, seconds: float = 60.0, leak: LeakSpec | None = None
    ) -> list[npt.NDArray[np.float32]]:
        """The night's audio, one (samples, channels) float32 array per check."""
        night = self.night(i)
        return [
            HydrophoneSynth(self.scene(night, c, leak, seconds=seconds)).render_seconds(seconds)
            for c in range(checks)
        ]


__all__ = ["BACKGROUNDS", "LeakSpec", "Night", "NightPlan", "Site"]
