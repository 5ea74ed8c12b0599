"""A district metered area (DMA): inflow, outflow and pressure over months, with leaks to find.

What a district's inlet meters see (m3/h, at `interval_min`):
- **demand**: a diurnal pattern (morning and evening peaks, a deep night trough), weekends later
  and lower in the morning, Friday/Saturday nights busier, seasons (summer +25 % by day and
  +10 % at night from irrigation), a random day-to-day level (+-4 %) and within-day noise;
- **legitimate night use**: a few % of the mean demand, random per night; on ~2 % of nights an odd
  user (a pool filled, a main flushed) adds 20-60 % for 1-3 h;
- **background leakage**: pressure-dependent (FAVAD, N1 = 1.0), a fraction of the night flow;
- **pressure** at the inlet: set point minus head loss (~Q^2), with a pressure-reducing valve whose
  set point is changed once in a while (+-5 %): night flow then moves through the leakage alone;
- **leaks** (`DistrictLeak`): each starts at a given time, abrupt or growing linearly over days
  (incipient), and stays, or is repaired at `end` (a burst); several may overlap. Their flow is
  pressure-dependent too.
- **daytime life** (`daytime_events = True`, for burst detection; off by default, and drawn from a
  random stream of its own, so the nights of a seed are the same either way): heat spells (a few
  days of +10-30 % daytime demand, mostly in summer), public holidays (a weekday run as a Sunday;
  random, or a country's calendar given as `holidays`),
  hydrant use and mains flushing (+5-25 % of the mean demand for 0.5-3 h, by day: what a burst
  looks like for a while), and demand that wanders for hours (weather) rather than slot by slot.
The district is fed by two inlets (60/40 split) and passes some water on through one outlet, so the
net flow is `in_a + in_b - out`. Deterministic for the seed. Timestamps are naive local times
(as SCADA exports give them), so nights never skip or repeat an hour here.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DistrictLeak:
    """A leak adding `m3h` (at the reference pressure) from `start`, reached over `grow_days`."""

    start: datetime
    m3h: float
    grow_days: float = 0.0
    end: datetime | None = None  # repaired (a burst); None: it stays

    def flow(self, t: list[datetime] | npt.NDArray[np.object_]) -> F64:
        days = np.array([(ti - self.start).total_seconds() / 86400.0 for ti in t])
        if self.grow_days <= 0:
            out: F64 = np.where(days >= 0, self.m3h, 0.0)
        else:
            out = self.m3h * np.clip(days / self.grow_days, 0.0, 1.0)
        if self.end is not None:
            end = self.end
            out = np.where(np.array([ti < end for ti in t]), out, 0.0)
        return out


@dataclass
class District:
    seed: int
    mean_demand_m3h: float = 400.0
    night_use_pct: float = 6.0  # legitimate night use, % of mean demand
    background_leak_pct: float = 8.0  # background leakage, % of mean demand
    pressure_bar: float = 4.0
    leaks: list[DistrictLeak] = field(default_factory=list)
    prv_changes_per_year: float = 1.0
    start: datetime = datetime(2024, 1, 1)
    daytime_events: bool = False
    # With daytime life: public holidays on these days (a country's calendar) instead of ~10
    # random weekdays a year; the random stream is drawn the same either way.
    holidays: Container[date] | None = None

    def simulate(self, days: int, interval_min: int = 15) -> dict[str, F64 | list[datetime]]:
        """Columns `time` (naive local), `inflow_a`, `inflow_b`, `outflow`, `pressure`, and the
        truth: `leak` (m3/h of the leaks listed) and `net`."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 21]))
        n = days * 24 * 60 // interval_min
        t = [self.start + timedelta(minutes=interval_min * i) for i in range(n)]
        hour = np.array([ti.hour + ti.minute / 60 for ti in t])
        weekday = np.array([ti.weekday() for ti in t])
        doy = np.array([ti.timetuple().tm_yday for ti in t])
        day_idx = np.array([(ti - self.start).days for ti in t])
        weekend = weekday >= 5
        # Diurnal shape: night trough, morning peak (later at weekends), evening peak.
        morning = np.where(weekend, 9.5, 7.5)
        shape = (
            0.35
            + 0.9 * np.exp(-0.5 * ((hour - morning) / 1.6) ** 2)
            + 0.7 * np.exp(-0.5 * ((hour - 19.5) / 2.2) ** 2)
            + 0.25 * np.exp(-0.5 * ((hour - 13.0) / 2.5) ** 2)
        )
        night = (hour >= 0.5) & (hour < 5.5)
        shape = np.where(night, 0.0, shape)
        summer = 0.5 * (1 - np.cos(2 * math.pi * (doy - 15) / 365.25))  # 0 in mid-January, 1 in July
        day_level = 1 + rng.normal(0, 0.04, days + 1)[day_idx]
        demand = self.mean_demand_m3h * shape * (1 + 0.25 * summer) * day_level / 0.62
        demand *= 1 + rng.normal(0, 0.05, n)
        draws, holiday = np.zeros(n), np.zeros(n, dtype=bool)
        if self.daytime_events:
            demand, draws, holiday = self._daytime_life(
                demand, t=t, hour=hour, day_idx=day_idx, days=days, interval_min=interval_min
            )
        # Legitimate night use: per night a level, Fri/Sat nights +8 %, summer irrigation +10 %.
        night_level = 1 + rng.normal(0, 0.035, days + 2)
        fri_sat = np.array([(ti - timedelta(hours=12)).weekday() in (4, 5) for ti in t])
        base_night = (
            self.mean_demand_m3h
            * self.night_use_pct
            / 100
            * night_level[day_idx]
            * np.where(fri_sat, 1.08, 1.0)
            * (1 + 0.10 * summer)
        )
        night_use = base_night * (1 + rng.normal(0, 0.04, n))
        odd = np.zeros(n)
        for d in range(days):
            if rng.random() < 0.02:
                start_h = rng.uniform(0.5, 4.0)
                length_h = rng.uniform(1.0, 3.0)
                sel = (day_idx == d) & (hour >= start_h) & (hour < start_h + length_h)
                odd[sel] = base_night[sel] * rng.uniform(0.2, 0.6)
        # Pressure-reducing valve set point, changed now and then.
        setpoint = np.full(n, self.pressure_bar)
        changes = rng.poisson(self.prv_changes_per_year * days / 365.0)
        for _ in range(changes):
            when = int(rng.integers(0, n))
            setpoint[when:] *= 1 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.06)
        leak_ref = np.zeros(n)
        for leak in self.leaks:
            leak_ref += leak.flow(t)
        background = self.mean_demand_m3h * self.background_leak_pct / 100
        # Head loss grows with the square of the flow; leakage follows pressure (N1 = 1).
        q_guess = demand + night_use + odd + draws + background + leak_ref
        pressure = setpoint - 0.8 * (q_guess / (2.2 * self.mean_demand_m3h)) ** 2
        leak_ratio = pressure / self.pressure_bar
        net = demand + night_use + odd + draws + (background + leak_ref) * leak_ratio
        net *= 1 + rng.normal(0, 0.005, n)  # meter noise
        outflow = 0.15 * self.mean_demand_m3h * (1 + 0.1 * np.sin(2 * math.pi * hour / 24)) + rng.normal(
            0, 1, n
        )
        total_in = net + outflow
        share = 0.6 + rng.normal(0, 0.01, n)
        return {
            "time": t,
            "inflow_a": total_in * share,
            "inflow_b": total_in * (1 - share),
            "outflow": outflow,
            "pressure": pressure + rng.normal(0, 0.02, n),
            "leak": leak_ref * leak_ratio,
            "net": net,
            "draws": draws,
            "holiday": holiday,
        }

    def _daytime_life(
        self,
        demand: F64,
        *,
        t: list[datetime],
        hour: F64,
        day_idx: npt.NDArray[np.int64],
        days: int,
        interval_min: int,
    ) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
        """Demand with heat spells, holidays and hours-long wander; the hydrant draws (m3/h); which
        samples fall on a public holiday."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 22]))
        n = len(t)
        # Weather: the day's demand wanders for hours (an AR(1) of ~4 h), not only slot by slot.
        phi = math.exp(-interval_min / 240.0)
        wander = np.zeros(n)
        shocks = rng.normal(0, 0.03 * math.sqrt(1 - phi * phi), n)
        for i in range(1, n):
            wander[i] = phi * wander[i - 1] + shocks[i]
        factor = 1 + wander
        # Heat spells: ~3 a year, 3-7 days, +10-30 % by day; more likely in summer.
        day_factor = np.ones(days + 1)
        d = 0
        while d < days:
            doy = (self.start + timedelta(days=d)).timetuple().tm_yday
            # a spell starts on ~1.4 % of midsummer days, 0.2 % of winter ones
            chance = 0.002 + 0.012 * 0.5 * (1 - math.cos(2 * math.pi * (doy - 15) / 365.25))
            if rng.random() < chance:
                length = int(rng.integers(3, 8))
                peak = rng.uniform(0.10, 0.30)
                ramp = np.sin(np.linspace(0.3, math.pi - 0.3, length))
                day_factor[d : d + length] *= 1 + peak * ramp[: len(day_factor[d : d + length])]
                d += length
            d += 1
        factor *= day_factor[day_idx]
        # Public holidays: ~10 a year, a weekday with a Sunday's later, lower morning.
        holiday = np.zeros(days + 1, dtype=bool)
        for d in range(days):
            day = (self.start + timedelta(days=d)).date()
            if day.weekday() < 5:
                drawn = rng.random() < 10 / 261
                holiday[d] = drawn if self.holidays is None else day in self.holidays
        on_holiday = holiday[day_idx]
        if on_holiday.any():
            weekday_morning = 0.9 * np.exp(-0.5 * ((hour - 7.5) / 1.6) ** 2)
            sunday_morning = 0.9 * np.exp(-0.5 * ((hour - 9.5) / 1.6) ** 2)
            base = 0.35 + 0.7 * np.exp(-0.5 * ((hour - 19.5) / 2.2) ** 2)
            base = base + 0.25 * np.exp(-0.5 * ((hour - 13.0) / 2.5) ** 2)
            ratio = np.where(demand > 0, (base + sunday_morning) / (base + weekday_morning), 1.0)
            factor = np.where(on_holiday, factor * ratio * 0.92, factor)
        out: F64 = demand * factor
        # Hydrant use and mains flushing: ~8 a year, by day, +5-25 % of the mean demand, 0.5-3 h.
        draws = np.zeros(n)
        for d in range(days):
            if rng.random() < 8 / 365:
                start_h = rng.uniform(7.0, 17.0)
                length_h = rng.uniform(0.5, 3.0)
                size = self.mean_demand_m3h * rng.uniform(0.05, 0.25)
                draws[(day_idx == d) & (hour >= start_h) & (hour < start_h + length_h)] += size
        return out, draws, on_holiday


def write_csv(
    columns: dict[str, F64 | list[datetime]],
    path: str,
    *,
    sep: str = ",",
    decimal: str = ".",
    time_format: str = "%Y-%m-%d %H:%M",
) -> None:
    """A SCADA-like export: timestamp first (`time_format`), then inflow_a, inflow_b, outflow,
    pressure."""
    names = ["inflow_a", "inflow_b", "outflow", "pressure"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(sep.join(["timestamp", *names]) + "\n")
        times = columns["time"]
        assert isinstance(times, list)
        for i, ti in enumerate(times):
            cells = [f"{float(np.asarray(columns[c])[i]):.3f}".replace(".", decimal) for c in names]
            fh.write(sep.join([ti.strftime(time_format), *cells]) + "\n")
