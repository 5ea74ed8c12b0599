"""Bursts: a district's inflow above what it draws at that time of that kind of day, within hours.

The night-flow detector (`detector.py`) finds every leak, but only once nights have shown it; a
main that bursts at 10:00 loses water all day. A burst adds a roughly constant flow at every hour,
so the district's net inflow leaves what it normally draws at that time of day.

- **Slots**: the net flow is averaged over `slot_minutes` (15) of local time; a slot with no
  sample is missing, not zero.
- **Profile** (per day): for each slot, the median over the last `profile_days` (28) days of the
  same kind (weekdays, or Saturdays, Sundays and the listed `holidays`). Slots of a burst are left
  out of it. It is scaled by how the flow followed it over the last day (`_scale`: the slope of
  flow on profile): a warm spell scales the peaks and leaves the night, a burst adds the same m3/h
  everywhere and leaves the slope alone.
- **Excess**: the flow over the scaled profile, averaged over the last `window_minutes` (60).
- **How far an excess is unusual**, per slot of the day: the spread of that hour-long excess over
  the past days (1.4826 x MAD around its median). A district's demand wanders by a share of itself
  for hours at a time (a warm afternoon, a holiday), so the spread is large at the morning peak
  and small at 03:00; measured on the excess averaged as it is judged, it includes that wander.
- **Decision**: a burst is declared when the excess is above both the smallest burst worth an
  alarm, `B = max(min_added_pct % of the district's mean flow, min_added_m3h)`, and `z` (5) times
  that slot's spread, in `confirm_slots` (2) slots in a row. `z` holds for a spread measured over
  `profile_days`; one measured over fewer days (the first weeks armed) is itself uncertain, and the
  level is raised as a Student t quantile is over the normal's (`_z_for_days`). A burst adds the
  same m3/h at every hour, so it stands out most where flow is lowest: a large one is found within
  the hour at any time, a smaller one by the night after it began - long before the night-flow
  detector has had the nights it needs.
- **Onset and size**: the first slot of the run whose excess reached half of what the last slots
  show. The size, as raised and while it runs, is the median of its slots' excess from the onset
  on, each weighted by one over its own slot's spread squared (`running_size`): the quiet night
  tells it to a few m3/h, the evening and the morning peak only to tens.
- **Clearing**: a burst ends (repaired, or the section shut off) when its hour-long excess has
  fallen under half its size, by more than `z` of that slot's spreads, in `clear_minutes` of slots;
  a slot where it clearly still runs starts the count again, one whose spread cannot tell (the
  morning peak, for a burst smaller than its wander) leaves the count as it is. `cleared` carries
  its duration and the water lost (its size x its hours: the night's size, when pressure and so
  leakage are highest, makes this an upper bound). One still running after `accept_hours` is
  **accepted**: the profile is raised by its size over its last day (the district is judged
  against its new normal, and the next burst is found on top of it) and the night-flow detector
  carries it on as a leak; a later drop of about that size, told from the slot's spread in the
  same way (the repair), lowers the profile again, and a day later what that day showed sets it.
  Two slots at least tell an end or a repair; a burst whose size has fallen under `B/2` has ended
  too (a spike); its end is put where the slots after it are likeliest at zero (`_ended_at`).

`FixedExcess` is the plain rule to beat: an alarm when the flow exceeds the profile by
`rise_pct` % in two slots in a row.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from water_edge.models.flow_leak.glitch import GLITCH_FACTOR, GLITCH_SAMPLES
from water_edge.models.flow_leak.mnf import LARGEST_FLOW
from water_edge.models.flow_leak.student_t import upper_quantile

F64 = npt.NDArray[np.float64]
BurstEvent = Literal["", "burst", "cleared", "accepted"]


@dataclass(frozen=True)
class BurstParams:
    slot_minutes: int = 15
    learn_days: int = 14  # days of slots before the detector is armed
    profile_days: int = 28
    window_minutes: int = 60  # the excess is averaged over this long
    min_added_pct: float = 10.0  # the smallest burst worth an alarm, % of the district's mean flow
    min_added_m3h: float = 0.0  # ... and in m3/h (whichever is larger)
    z: float = 5.0  # ... and in spreads of that slot's hour-long excess over the past days
    confirm_slots: int = 2
    clear_minutes: float = 60.0
    accept_hours: float = 72.0
    min_spread_pct: float = 1.0  # the spread is at least this share of the slot's profile
    holidays: frozenset[date] = frozenset()  # judged as Sundays (and learnt as such)
    follow_demand: bool = True  # scale the profile by the last day's slope of flow on profile

    @property
    def slots_per_day(self) -> int:
        return 1440 // self.slot_minutes

    def slot_of(self, local: datetime) -> int:
        """The slot of the day a wall-clock time falls in."""
        return (local.hour * 60 + local.minute) // self.slot_minutes

    def day_kind(self, day: date) -> str:
        """Which profile judges `day`: `weekday`, or `weekend` for Saturdays, Sundays and holidays
        (`holiday` when it is one on a weekday)."""
        if day.weekday() < 5:
            return "holiday" if day in self.holidays else "weekday"
        return "weekend"

    @property
    def window_slots(self) -> int:
        return max(1, round(self.window_minutes / self.slot_minutes))


@dataclass
class SlotRow:
    """One slot and what the detector made of it (a row of the CLI's CSV)."""

    start: datetime  # local wall-clock time the slot began
    flow: float | None
    expected: float | None = None
    added: float | None = None
    event: BurstEvent = ""
    onset: datetime | None = None
    size: float | None = None  # on `burst` / `accepted`: the burst's m3/h; on `cleared`: too
    volume_m3: float | None = None  # on `cleared` / `accepted`: the water lost while it ran
    duration_h: float | None = None
    pressure_drop: float | None = None  # on `burst`: the expected pressure minus the slot's

    def csv(self) -> str:
        def f(v: float | None) -> str:
            return "" if v is None else f"{v:.3f}"

        return ",".join(
            (
                self.start.isoformat(sep=" ", timespec="minutes"),
                f(self.flow),
                f(self.expected),
                f(self.added),
                self.event,
            )
        )


def _weekend(day: date, holidays: frozenset[date] = frozenset()) -> bool:
    return day.weekday() >= 5 or day in holidays


@dataclass
class _Accumulator:
    key: tuple[date, int] | None = None
    start: datetime | None = None
    flow_sum: float = 0.0
    n: int = 0
    p_sum: float = 0.0
    p_n: int = 0


@dataclass
class BurstDetector:
    """See the module docstring. Feed samples in time order (`add`); closed slots come back."""

    params: BurstParams = field(default_factory=BurstParams)
    days: dict[date, F64] = field(default_factory=dict)  # profile history: flow - offset, per slot
    pressure_days: dict[date, F64] = field(default_factory=dict)
    offset: float = 0.0  # m3/h of accepted bursts added to the profile
    recent: list[float] = field(default_factory=list)  # the last slots' excess (window_slots)
    day_flows: list[tuple[float, float]] = field(default_factory=list)  # (flow - offset, profile), a day
    over: int = 0  # slots in a row above the alarm level
    run: list[tuple[datetime, float]] = field(default_factory=list)  # (slot, excess) since >= B/2
    repair_slots: int = 0  # with an accepted burst: slots that tell its repair (`_follow_repair`) ...
    repair_drop: float = math.inf  # ... and the smallest drop they showed
    # After a repair: the day's (hour-long excess, spread) so far, and the offset before it
    # (`_settle_repair`).
    settling: tuple[list[tuple[float, float]], float] | None = None
    alarm_since: datetime | None = None  # the onset of the burst in progress
    alarm_excess: list[float] = field(default_factory=list)  # excess per slot since the onset
    alarm_spread: list[float] = field(default_factory=list)  # ... and the spread of its slot
    ended_slots: int = 0  # in a burst: slots that tell it has ended (`_in_alarm`)
    bursts: int = 0
    slots_closed: int = 0  # slots judged by this instance (not stored)
    glitches: int = 0  # samples `add` skipped as glitches (not stored)
    # Slots of the first half-day, learnt before there was a reference to judge them by, and left
    # out once there was (`_unlearn_glitches`): (slot start, its flow). Not stored.
    unlearnt: list[tuple[datetime, float]] = field(default_factory=list)
    _beyond: int = 0  # samples in a row beyond GLITCH_FACTOR x the mean flow
    _acc: _Accumulator = field(default_factory=_Accumulator)
    _profile_day: date | None = None
    _profile: F64 | None = None
    _p_profile: F64 | None = None
    _center: F64 | None = None  # per slot: the usual hour-long excess (m3/h) ...
    _spread: F64 | None = None  # ... and its spread over the past days
    _z: float | None = None  # ... and the alarm level in spreads, for the days it was measured over
    _mean_flow: float | None = None
    _learnt_flow: float | None = None  # while learning: the median slot flow learnt so far

    # -- state ---------------------------------------------------------------------------------

    @property
    def armed(self) -> bool:
        return self._ready(max(self.days, default=date.min) + timedelta(days=1))

    @property
    def state(self) -> str:
        if self.alarm_since is not None:
            return "burst"
        return "armed" if self.armed else "learning"

    @property
    def learned_days(self) -> int:
        return sum(1 for v in self.days.values() if np.isfinite(v).any())

    @property
    def min_burst(self) -> float | None:
        """The smallest burst this district reports (m3/h), once armed."""
        if self._mean_flow is None:
            return None
        return max(self.params.min_added_pct / 100 * self._mean_flow, self.params.min_added_m3h)

    def glitch(self, flow: float) -> bool:
        """Whether a sample is a glitch rather than demand: beyond `GLITCH_FACTOR` x the district's
        mean flow once armed, x the median slot flow learnt so far while learning. One such sample
        used to set the profile's day scale to its floor and raise a false burst for days; while
        learning, it went into the district's mean flow and raised the smallest burst reported for
        weeks. A flow that stays that far out is real (a large main burst) and counts from its
        third sample."""
        reference = self._mean_flow if self._mean_flow is not None else self._learnt_flow
        if reference is None or reference <= 0 or abs(flow) <= GLITCH_FACTOR * reference:
            self._beyond = 0
            return False
        self._beyond += 1
        return self._beyond <= GLITCH_SAMPLES

    def _ready(self, day: date) -> bool:
        past = [d for d, v in self.days.items() if d < day and np.isfinite(v).any()]
        weekend = sum(_weekend(d, self.params.holidays) for d in past)
        return len(past) >= self.params.learn_days and weekend >= 2 and len(past) - weekend >= 2

    # -- samples -> slots ---------------------------------------------------------------------

    def add(self, local: datetime, flow: float, pressure: float = math.nan) -> list[SlotRow]:
        """One net-flow sample (m3/h) at local wall-clock time `local` (naive); one of `LARGEST_FLOW`
        or more is a logger's "no value", missing."""
        p = self.params
        if not abs(flow) < LARGEST_FLOW:
            flow = math.nan
        key = (local.date(), p.slot_of(local))
        rows: list[SlotRow] = []
        if self._acc.key is not None and key != self._acc.key:
            rows.append(self._close())
        if self._acc.key is None:
            start = datetime.combine(key[0], datetime.min.time()) + timedelta(minutes=key[1] * p.slot_minutes)
            self._acc = _Accumulator(key=key, start=start)
        if not math.isfinite(flow):
            pass
        elif self.glitch(flow):
            self.glitches += 1
        else:
            self._acc.flow_sum += flow
            self._acc.n += 1
        if math.isfinite(pressure):
            self._acc.p_sum += pressure
            self._acc.p_n += 1
        return rows

    def flush(self) -> list[SlotRow]:
        """Close the slot in progress (the end of a file)."""
        return [self._close()] if self._acc.key is not None else []

    def _close(self) -> SlotRow:
        acc, self._acc = self._acc, _Accumulator()
        self.slots_closed += 1
        assert acc.key is not None
        assert acc.start is not None
        flow = acc.flow_sum / acc.n if acc.n else None
        pressure = acc.p_sum / acc.p_n if acc.p_n else None
        row = self.judge(acc.key[0], acc.key[1], acc.start, flow, pressure)
        if self._mean_flow is None:
            first = self._learnt_flow is None
            self._learnt_flow = self._learnt_median()
            if first and self._learnt_flow is not None:
                self._unlearn_glitches(self._learnt_flow)
        return row

    def _unlearn_glitches(self, reference: float) -> None:
        """Take out of the slots learnt so far those that `glitch` would have skipped had there been
        a reference: beyond `GLITCH_FACTOR` x it, at most `GLITCH_SAMPLES` slots in a row. Nothing
        judged the first half-day: one reading of 1e6 m3/h at 02:30 stayed in the profile and the
        district's mean flow, raised the smallest burst reported a hundredfold, and no burst was
        found in the file."""
        p = self.params
        slots = [(d, i) for d in sorted(self.days) for i in range(p.slots_per_day)]
        run: list[tuple[date, int]] = []
        for d, i in [*slots, (date.max, 0)]:  # a sentinel ends the last run
            value = self.days[d][i] if d in self.days else math.nan
            if math.isfinite(value) and abs(value + self.offset) > GLITCH_FACTOR * reference:
                run.append((d, i))
                continue
            if run and len(run) <= GLITCH_SAMPLES:
                for rd, ri in run:
                    start = datetime.combine(rd, datetime.min.time()) + timedelta(minutes=ri * p.slot_minutes)
                    self.unlearnt.append((start, float(self.days[rd][ri]) + self.offset))
                    self.days[rd][ri] = math.nan
            run = []
        if self.unlearnt:
            self._learnt_flow = self._learnt_median()

    def _learnt_median(self) -> float | None:
        """The median of the slot flows learnt so far, once half a day of them is: a day's slots
        take in its peaks, where a window of the last samples would hold only a low night, and the
        step to the morning's flow can be ten times that (the simulated district's 05:30)."""
        if not self.days:
            return None
        flows = np.concatenate(list(self.days.values()))
        flows = flows[np.isfinite(flows)]
        if flows.size < self.params.slots_per_day // 2:
            return None
        return float(np.median(flows)) + self.offset

    # -- the judgement ---------------------------------------------------------------------------

    def judge(
        self, day: date, slot: int, start: datetime, flow: float | None, pressure: float | None
    ) -> SlotRow:
        row = SlotRow(start, flow)
        if day != self._profile_day:
            self._new_day(day)
        keep = flow if flow is not None and flow > 0 else math.nan
        if self._profile is None or self._mean_flow is None:
            self._store(day, slot, keep, pressure)
            return row
        base = float(self._profile[slot])
        if not math.isfinite(base) or flow is None or flow <= 0:
            self._store(day, slot, keep if self.alarm_since is None else math.nan, pressure)
            return row
        expected = base * self.day_scale() + self.offset
        excess = flow - expected
        row.expected, row.added = expected, excess
        b = self.min_burst
        assert b is not None
        assert self._center is not None
        assert self._spread is not None
        assert self._z is not None
        self.recent = [*self.recent, excess][-self.params.window_slots :]
        windowed = sum(self.recent) / len(self.recent) - float(self._center[slot])
        spread = float(self._spread[slot])
        if self.alarm_since is not None:
            self._in_alarm(row, excess, windowed, spread)
            self._store(day, slot, math.nan, pressure)
            return row
        self.run = [*self.run, (start, excess)] if excess >= b / 2 else []
        level = max(0.6 * b, self._z * spread)
        self.over = self.over + 1 if windowed >= level and self.run else 0
        self._follow_repair(windowed, spread, b)
        self._settle_repair(windowed, spread)
        if self.over >= self.params.confirm_slots:
            self.settling = None
            tail = float(np.median([e for _, e in self.run[-3:]]))
            first = next(i for i, (_, e) in enumerate(self.run) if e >= 0.5 * tail or i == len(self.run) - 1)
            self.alarm_since, self.alarm_excess = self.run[first][0], [e for _, e in self.run[first:]]
            self.alarm_spread = [self._slot_spread(t) for t, _ in self.run[first:]]
            row.event, row.onset, row.size = "burst", self.alarm_since, self.running_size()
            self.ended_slots, self.bursts, self.over, self.run = 0, self.bursts + 1, 0, []
            if pressure is not None and self._p_profile is not None:
                p_expected = float(self._p_profile[slot])
                if math.isfinite(p_expected):
                    row.pressure_drop = p_expected - pressure
            self._store(day, slot, math.nan, pressure)
            return row
        self._store(day, slot, keep - self.offset, pressure)
        self.day_flows = [*self.day_flows, (flow - self.offset, base)][-self.params.slots_per_day :]
        return row

    def day_scale(self) -> float:
        """The factor the profile is scaled by: how the flow followed it over the last day."""
        return _scale(self.day_flows, self.params.slots_per_day) if self.params.follow_demand else 1.0

    def _follow_repair(self, windowed: float, spread: float, b: float) -> None:
        """With an accepted burst in the profile, its repair is a drop of about its size, told
        slot by slot as `_in_alarm` tells the end of a burst: the profile then comes down by it."""
        if self.offset <= 0:
            return
        slots = _count(self.repair_slots, min(b, self.offset), -windowed, self._z_spread(spread))
        if slots == 0:
            self.repair_drop = math.inf
        elif slots > self.repair_slots:
            self.repair_drop = min(self.repair_drop, -windowed)
        self.repair_slots = slots
        if self.repair_slots >= self._slots_to_tell():
            # By what every slot that told it showed; a day later `_settle_repair` sets it right.
            self.settling = ([], self.offset)
            self.offset = max(0.0, self.offset - max(self.repair_drop, 0.0))
            self.repair_slots, self.repair_drop = 0, math.inf

    def _settle_repair(self, windowed: float, spread: float) -> None:
        """A day after a repair has lowered the profile, set it right by what that day showed: the
        median of its slots' hour-long excess weighted as a burst's size is (`running_size`), so
        the quiet night decides. The drop the repair was told by comes from a few slots, often at
        the morning rise: one Sunday's late rise read 18 m3/h where the repaired night showed 12
        (BWDF DMA 1), and the 6 m3/h too many were raised as a burst two days later. The profile
        never goes above where it stood before the repair; a burst raised meanwhile ends this."""
        if self.settling is None:
            return
        slots, before = self.settling
        slots.append((windowed, spread))
        if len(slots) < self.params.slots_per_day:
            return
        excess = np.array([w for w, _ in slots])
        weights = _weights(np.array([sp for _, sp in slots]))
        self.offset = min(max(0.0, self.offset + _weighted_median(excess, weights)), before)
        self.settling = None

    def _slots_to_tell(self) -> int:
        """The slots that must tell an end or a repair: `clear_minutes` of them, and two at least
        (with hourly slots one hour's dip, a Sunday's late rise, read as the repair)."""
        return max(2, math.ceil(self.params.clear_minutes / self.params.slot_minutes))

    def _slot_spread(self, start: datetime) -> float:
        """The spread of the slot of the day that begins at `start`. A burst is often raised in the
        night after a run of slots through the evening, whose wander is several times the night's:
        each slot of the run is weighed by its own time of day's spread, not the raising slot's."""
        assert self._spread is not None
        return float(self._spread[self.params.slot_of(start)])

    def _z_spread(self, spread: float) -> float:
        """The smallest change in the hour-long excess a slot of this spread tells from its wander:
        the alarm level in spreads (`z`, as raised for a short history) times it."""
        assert self._z is not None
        return self._z * spread

    def running_size(self, first: int = 0, end: int | None = None) -> float:
        """The burst's m3/h over its slots `first` to `end`: the median of their excess, each
        weighted by one over its slot's spread squared. A burst adds the same m3/h at every hour,
        and the quiet night slots tell it to a few m3/h where the morning peak wanders by tens:
        the plain median of a day's excess took half its slots from the day and accepted a leak
        showing 70 m3/h at night as 93-116 (seed 34), and the sum of its slots' excess, 48 h of
        it, as 58 % of the water it lost."""
        excess = np.asarray(self.alarm_excess[first:end], dtype=np.float64)
        if excess.size == 0:
            return 0.0
        return max(0.0, _weighted_median(excess, _weights(np.asarray(self.alarm_spread[first:end]))))

    def _in_alarm(self, row: SlotRow, excess: float, windowed: float, spread: float) -> None:
        """A burst ends when its hour-long excess has dropped from its size by more than half of
        it and by more than the slot's wander tells (`_count`) in `clear_minutes` of slots. The
        quiet night tells within the hour; the morning peak, which wanders by tens of m3/h, seldom
        does either way. Counting slots under `B/2` in a row, that wander "cleared" a leak of
        80 m3/h at 07:15 and the night raised it again: one leak left running, 7 bursts in 15 days
        (seed 34)."""
        assert self.alarm_since is not None
        p = self.params
        self.alarm_excess.append(excess)
        self.alarm_spread.append(spread)
        size = self.running_size()
        self.ended_slots = _count(self.ended_slots, size, size - windowed, self._z_spread(spread))
        hours = len(self.alarm_excess) * p.slot_minutes / 60
        half_smallest = (self.min_burst or 0.0) / 2
        now = self.running_size(first=-p.slots_per_day) if hours >= p.accept_hours else size
        if self.ended_slots >= self._slots_to_tell() or now < half_smallest:
            end = self._ended_at(size)
            row.event, row.onset = "cleared", self.alarm_since
            row.size = self.running_size(end=end)
            row.duration_h = end * p.slot_minutes / 60
            row.volume_m3 = row.size * row.duration_h
            self._end_alarm()
        elif hours >= p.accept_hours:
            row.event, row.onset, row.size = "accepted", self.alarm_since, now  # its last day's size
            row.volume_m3 = self.running_size() * hours
            row.duration_h = hours
            self.offset += now
            self._end_alarm()

    def _ended_at(self, size: float) -> int:
        """The slot (an index into alarm_excess, 1 or more) the burst ended at: where the slots
        after it are likeliest at zero and those before at `size`, each weighed by its spread
        as `running_size` weighs it. A repair by day is told only the night after; walking back
        from there over the slots under half its size stopped at the first evening slot whose
        wander reached it, and a burst repaired at 10:00 was reported to have run 45 h, not 35."""
        excess = np.asarray(self.alarm_excess, dtype=np.float64)
        weights = _weights(np.asarray(self.alarm_spread))
        gone = np.cumsum((weights * (size / 2 - excess))[::-1])[::-1]  # evidence of zero from k on
        if len(gone) < 2:
            return len(gone)
        best = int(np.argmax(gone[1:])) + 1
        return best if gone[best] > 0 else len(gone)

    def _end_alarm(self) -> None:
        self.alarm_since, self.alarm_excess, self.alarm_spread = None, [], []
        self.ended_slots = 0
        self.over, self.run, self.recent, self.repair_slots, self.repair_drop = 0, [], [], 0, math.inf

    def _store(self, day: date, slot: int, flow: float, pressure: float | None) -> None:
        n = self.params.slots_per_day
        values = self.days.get(day)
        if values is None:
            values = self.days[day] = np.full(n, np.nan)
        values[slot] = flow
        if pressure is not None:
            p_values = self.pressure_days.get(day)
            if p_values is None:
                p_values = self.pressure_days[day] = np.full(n, np.nan)
            p_values[slot] = pressure

    def _new_day(self, day: date) -> None:
        """The day's profile, the usual excess and its spread, and the district's mean flow, from
        the days before it."""
        p = self.params
        oldest = day - timedelta(days=p.profile_days)
        for store in (self.days, self.pressure_days):
            for d in [d for d in store if d < oldest]:
                del store[d]
        self._profile_day = day
        self._profile = self._p_profile = self._center = self._spread = self._z = self._mean_flow = None
        if not self._ready(day):
            return
        past = {d: v for d, v in self.days.items() if d < day}
        profiles = {kind: _profile(past, kind, self.params.holidays) for kind in (False, True)}
        self._profile = profiles[_weekend(day, self.params.holidays)]
        self._center, self._spread, self._z = self._excess_spread(past, profiles)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self._mean_flow = float(np.nanmean(np.stack(list(past.values())))) + self.offset
        p_past = {d: v for d, v in self.pressure_days.items() if d < day}
        if p_past:
            self._p_profile = _profile(p_past, _weekend(day, self.params.holidays), self.params.holidays)

    def _excess_spread(self, past: dict[date, F64], profiles: dict[bool, F64]) -> tuple[F64, F64, float]:
        """Per slot: the median and spread of the hour-long excess over the past days, each day
        against its kind's profile, averaged as `judge` averages it (across midnight too); and the
        alarm level in spreads for the days (with data) that spread was measured over."""
        p = self.params
        n = p.slots_per_day
        ordered = sorted(past)
        rows = []
        for i, d in enumerate(ordered):
            profile = profiles[_weekend(d, p.holidays)]
            scale = 1.0
            if (
                p.follow_demand and i > 0 and ordered[i - 1] == d - timedelta(days=1)
            ):  # the day before, as `day_scale`
                before = past[ordered[i - 1]]
                kept = [
                    (float(q), float(e))
                    for q, e in zip(before, profiles[_weekend(ordered[i - 1], p.holidays)], strict=True)
                    if math.isfinite(q) and math.isfinite(e)
                ]
                scale = _scale(kept, n)
            rows.append(past[d] - profile * scale)
        excess = np.stack(rows)
        flat = excess.reshape(-1)
        w = p.window_slots
        ok = np.isfinite(flat)
        sums = np.convolve(np.where(ok, flat, 0.0), np.ones(w), mode="full")[: flat.size]
        counts = np.convolve(ok.astype(float), np.ones(w), mode="full")[: flat.size]
        with np.errstate(all="ignore"):
            windowed = np.where(ok & (counts > 0), sums / counts, np.nan).reshape(len(ordered), n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            center = np.nanmedian(windowed, axis=0)
            spread = 1.4826 * np.nanmedian(np.abs(windowed - center), axis=0)
            floor = p.min_spread_pct / 100 * np.nanmedian(np.stack(list(profiles.values())), axis=0)
        center = np.where(np.isfinite(center), center, 0.0)
        spread = np.fmax(
            np.where(np.isfinite(spread), spread, np.inf), np.where(np.isfinite(floor), floor, 0.0)
        )
        measured = int(np.isfinite(windowed).any(axis=1).sum())
        return center, spread, _z_for_days(p.z, measured, p.profile_days)

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def values(v: F64) -> list[float | None]:
            # Rounded by numpy: stored every hour, 28+ days of slots through round() took a
            # district ~6 ms of the event loop each time on a 2-core machine.
            rounded = np.round(np.asarray(v, dtype=np.float64), 4)
            if np.isfinite(rounded).all():
                return list(rounded.tolist())
            return [x if math.isfinite(x) else None for x in rounded.tolist()]

        return {
            "format": "burst/1",
            "slot_minutes": self.params.slot_minutes,
            "days": {d.isoformat(): values(v) for d, v in self.days.items()},
            "pressure_days": {d.isoformat(): values(v) for d, v in self.pressure_days.items()},
            "offset": self.offset,
            "recent": self.recent,
            "day_flows": [[round(q, 4), round(e, 4)] for q, e in self.day_flows],
            "over": self.over,
            "run": [[t.isoformat(), e] for t, e in self.run],
            "repair_slots": self.repair_slots,
            "repair_drop": self.repair_drop if math.isfinite(self.repair_drop) else None,
            "settling": None
            if self.settling is None
            else {"slots": [[w, sp] for w, sp in self.settling[0]], "before": self.settling[1]},
            "alarm_since": None if self.alarm_since is None else self.alarm_since.isoformat(),
            "alarm_excess": self.alarm_excess,
            "alarm_spread": self.alarm_spread,
            "ended_slots": self.ended_slots,
            "bursts": self.bursts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], params: BurstParams) -> BurstDetector:
        """A stored state; one written with another slot length keeps only its count."""
        out = cls(params=params, bursts=int(data.get("bursts", 0)))
        if data.get("format") != "burst/1" or data.get("slot_minutes") != params.slot_minutes:
            return out

        def array(values: list[float | None]) -> F64:
            return np.array([math.nan if x is None else float(x) for x in values], dtype=np.float64)

        n = params.slots_per_day
        out.days = {date.fromisoformat(d): array(v) for d, v in data.get("days", {}).items() if len(v) == n}
        out.pressure_days = {
            date.fromisoformat(d): array(v) for d, v in data.get("pressure_days", {}).items() if len(v) == n
        }
        out.offset = float(data.get("offset", 0.0))
        out.recent = [float(e) for e in data.get("recent", [])]
        out.day_flows = [(float(q), float(e)) for q, e in data.get("day_flows", [])]
        # A state from before the slots' wander was weighed ("under" and "below": slots under B/2)
        # counts afresh: a repair or an end is then told a few slots later.
        out.over, out.repair_slots = int(data.get("over", 0)), int(data.get("repair_slots", 0))
        drop = data.get("repair_drop")
        out.repair_drop = math.inf if drop is None else float(drop)
        settling = data.get("settling")
        if isinstance(settling, dict):
            slots = [(float(w), float(sp)) for w, sp in settling.get("slots", [])]
            out.settling = (slots, float(settling.get("before", out.offset)))
        out.run = [(datetime.fromisoformat(t), float(e)) for t, e in data.get("run", [])]
        since = data.get("alarm_since")
        out.alarm_since = None if since is None else datetime.fromisoformat(since)
        out.alarm_excess = [float(e) for e in data.get("alarm_excess", [])]
        spread = [float(s) for s in data.get("alarm_spread", [])]
        # A state written before the spreads were kept weighs its slots alike (the plain median).
        out.alarm_spread = spread if len(spread) == len(out.alarm_excess) else [1.0] * len(out.alarm_excess)
        out.ended_slots = int(data.get("ended_slots", 0))
        out._learnt_flow = out._learnt_median()
        return out


@functools.lru_cache(maxsize=512)
def _z_for_days(z: float, days: int, full: int) -> float:
    """The alarm level in spreads for a spread measured over `days` days: `z` over `full`
    (`profile_days`, the history `z` was chosen with) or more; over fewer, raised by the Student t
    quantile at the normal tail beyond `z` with `days - 1` degrees of freedom over that with
    `full - 1`. A spread from few days is itself uncertain (1.4826 x MAD of 14 values: about 30 %,
    one standard error), so an excess of `z` of them is less rare than it reads: in their first 14
    days armed, simulated districts raised 2-3 times the false bursts of later weeks, three in four
    at the weekday morning rise. 14 days: x1.39, 18: x1.19, 21: x1.11, 25: x1.04."""
    if days >= full:
        return z
    tail = min(max(0.5 * math.erfc(z / math.sqrt(2)), 1e-300), 0.5)  # z of 37 and more: still finite
    return z * upper_quantile(max(days - 1, 1), tail) / upper_quantile(max(full - 1, 1), tail)


def _scale(flows: list[tuple[float, float]], slots_per_day: int) -> float:
    """How the flow moved with the profile over these slots: the slope of flow on profile (least
    squares), within 0.7-1.5; 1 before a quarter of a day. A burst adds the same m3/h to every
    slot and leaves the slope alone; more demand (a warm day) scales the peaks more than the night.
    """
    if len(flows) < slots_per_day // 4:
        return 1.0
    q = np.array([f for f, _ in flows])
    e = np.array([b for _, b in flows])
    with np.errstate(all="ignore"):
        var = float(((e - e.mean()) ** 2).sum())
        slope = float(((e - e.mean()) * (q - q.mean())).sum()) / var if var > 0 else 1.0
    return min(max(slope, 0.7), 1.5) if math.isfinite(slope) else 1.0


def _count(slots: int, size: float, drop: float, told: float) -> int:
    """The slots that tell a level of `size` has gone, after one more whose hour-long excess has
    dropped by `drop` from it, where the slot's wander tells changes of `told` and more: one more
    when it has dropped by over half the size and by `told`; none when it clearly stands (has
    dropped by under half and stands `told` above zero); as many where the slot cannot tell."""
    if drop >= size / 2 and drop >= told:
        return slots + 1
    if drop < size / 2 and size - drop >= told:
        return 0
    return slots


def _weights(spreads: npt.NDArray[np.float64]) -> F64:
    """How much a slot's excess counts toward a burst's size or end: one over its spread squared
    (an hour at 03:00 tells a burst to a few m3/h, one at the morning peak only to tens)."""
    out: F64 = 1.0 / np.fmax(np.asarray(spreads, dtype=np.float64), 1e-9) ** 2
    return out


def _weighted_median(values: F64, weights: F64) -> float:
    """The value at which half the weight lies on either side (the lower one on a tie)."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _profile(past: dict[date, F64], weekend: bool, holidays: frozenset[date]) -> F64:
    """Per slot: the median over the past days of one kind (at least 3 values)."""
    n = len(next(iter(past.values())))
    rows = [v for d, v in past.items() if _weekend(d, holidays) == weekend]
    if not rows:
        return np.full(n, np.nan)
    days = np.stack(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(days, axis=0)
    out: F64 = np.where(np.isfinite(days).sum(axis=0) >= 3, med, np.nan)
    return out


@dataclass
class FixedExcess:
    """The reference rule: an alarm when the flow exceeds the profile by `rise_pct` % in two slots
    in a row, dated from the first of them (`onset`); a new onset each time it starts, and the alarm
    ends (`cleared`) at the first slot back under the margin."""

    rise_pct: float = 20.0
    above: int = 0
    alarm: bool = False
    first_above: datetime | None = None
    onset: datetime | None = None  # the alarm's (kept on the slot that clears it)
    cleared: bool = False  # the last slot ended the alarm

    def update(self, row: SlotRow) -> bool:
        """True on the slot an alarm starts."""
        self.cleared = False
        if row.flow is None or row.expected is None:
            return False
        if row.flow > row.expected * (1 + self.rise_pct / 100):
            self.first_above = row.start if self.above == 0 else self.first_above
            self.above += 1
        else:
            self.cleared = self.alarm
            self.above, self.alarm = 0, False
        if self.above >= 2 and not self.alarm:
            self.alarm, self.onset = True, self.first_above
            return True
        return False
