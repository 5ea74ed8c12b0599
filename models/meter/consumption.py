"""One meter's water use, hour by hour, from its total-volume register, and the conditions judged on
it. Pure: reading time drives everything, so a replayed history gives the events a live one would.

Each register reading is used one reading late (`register.py`): a reading the next one contradicts
is dropped as misread. Use between two readings is spread over the hours they span in proportion to
time (meters send every few minutes, so an hour is well covered); a gap longer than `max_gap_h`, or
a register that went backwards and stayed there (a meter exchanged), leaves the hours unknown. An
unknown hour never counts as use nor as no use: a silent meter neither raises a leak nor a
watch-over alarm. An hour is judged once a used reading shows it is over.

Conditions, each with a start and a clear:
- continuous flow: use >= `continuous_min_l` in every one of the last `continuous_hours` hours;
  clears with the first hour below it;
- night use: more than `night_l` litres inside the night window, judged when the window ends;
  clears after a night below. A night is the local date its window began on, with every hour
  that starts inside it: on the spring-forward night a 02:00-04:00 window holds one hour, on the
  fall-back night three (the repeated 02:00 hour is two hours of use, both counted);
- no use: `no_use_hours` hours of the expected window without an hour of `no_use_l` litres;
  clears with the next hour of use;
- backflow: the backward register grew by `backflow_l` litres within `backflow_hours`; clears
  when it has not grown for that long.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from water_edge.models.meter.config import MeterGroupConfig, in_window, window_minutes
from water_edge.models.meter.register import Register

HOUR_NS: Final = 3600 * 1_000_000_000
KEEP_HOURS: Final = 170


@dataclass(frozen=True, slots=True)
class Change:
    """A condition starting (`active`) or clearing, at the end of the hour (or window) that decided it."""

    condition: str
    active: bool
    ts_ns: int
    detail: dict[str, float | str]


@dataclass
class MeterUse:
    cfg: MeterGroupConfig
    hours: dict[int, float] = field(default_factory=dict)  # hour index (UTC) -> litres; absent: unknown
    total: Register = field(default_factory=Register)  # the total-volume register, m3
    reverse: Register = field(default_factory=Register)  # the backward register, m3
    done_hour: int | None = None  # the last hour whose conditions were judged
    active: dict[str, bool] = field(default_factory=dict)
    expected_dry_hours: int = 0
    night_litres: float = 0.0
    night_known: bool = True
    night_of: date | None = None  # the night (local date its window began) `night_litres` counts
    backflow: deque[tuple[int, float]] = field(default_factory=deque)  # (ts_ns, m3)

    def __post_init__(self) -> None:
        self._zone = ZoneInfo(self.cfg.timezone)
        self._night_window = window_minutes(self.cfg.night)
        self._expected = window_minutes(self.cfg.expected)

    # -- readings -------------------------------------------------------------------------------

    def volume(self, ts_ns: int, m3: float) -> list[Change]:
        """A total-volume reading; the changes of every hour the reading it confirms completed."""
        step = self.total.read(ts_ns, m3)
        if step is None:
            return []
        if step.before is not None and step.after[0] > step.before[0]:
            self._spread(step.before, step.after)
        return self._judge_until(step.after[0] // HOUR_NS)

    def backward(self, ts_ns: int, m3: float) -> list[Change]:
        """A backflow-register reading; the change the reading it confirms makes."""
        step = self.reverse.read(ts_ns, m3)
        return [] if step is None else self._backflow(*step.after)

    def _backflow(self, ts_ns: int, m3: float) -> list[Change]:
        window = int(self.cfg.backflow_hours * HOUR_NS)
        q = self.backflow
        if q and m3 < q[-1][1]:
            q.clear()  # register reset: start again
        q.append((ts_ns, m3))
        while len(q) > 1 and q[1][0] <= ts_ns - window:
            q.popleft()
        grew_l = (q[-1][1] - q[0][1]) * 1000.0
        start = grew_l >= self.cfg.backflow_l
        if start and not self.active.get("backflow"):
            return [self._set("backflow", True, ts_ns, {"litres": round(grew_l, 1)})]
        if self.active.get("backflow") and q[0][0] <= ts_ns - window and grew_l <= 0:
            return [self._set("backflow", False, ts_ns, {"litres": 0.0})]
        return []

    def _spread(self, a: tuple[int, float], b: tuple[int, float]) -> None:
        (t0, v0), (t1, v1) = a, b
        litres = (v1 - v0) * 1000.0
        if litres < 0 or t1 - t0 > self.cfg.max_gap_h * HOUR_NS:
            return  # exchanged meter or a gap: the hours stay unknown
        hour = t0 // HOUR_NS
        while hour * HOUR_NS < t1:
            lo, hi = max(t0, hour * HOUR_NS), min(t1, (hour + 1) * HOUR_NS)
            self.hours[hour] = self.hours.get(hour, 0.0) + litres * (hi - lo) / (t1 - t0)
            hour += 1
        for old in [h for h in self.hours if h < hour - KEEP_HOURS]:
            del self.hours[old]

    # -- judging --------------------------------------------------------------------------------

    def _judge_until(self, current_hour: int) -> list[Change]:
        out: list[Change] = []
        if self.done_hour is None:
            self.done_hour = current_hour - 1
            return out
        while self.done_hour < current_hour - 1:
            self.done_hour += 1
            out += self._judge_hour(self.done_hour)
        return out

    def _judge_hour(self, hour: int) -> list[Change]:
        end_ns = (hour + 1) * HOUR_NS
        used = self.hours.get(hour)
        out: list[Change] = []
        out += self._continuous(hour, end_ns)
        local = self._local(hour)
        minute = local.hour * 60 + local.minute
        out += self._night_use(hour, local, used, end_ns)
        out += self._no_use(minute, used, end_ns)
        return out

    def _local(self, hour: int) -> datetime:
        """The local wall-clock time an hour (UTC index) starts at."""
        return datetime.fromtimestamp(hour * 3600, UTC).astimezone(self._zone)

    def _night(self, local: datetime) -> date | None:
        """The night an hour starting at `local` counts in (the local date its window began on), or
        None outside the window."""
        minute = local.hour * 60 + local.minute
        if not in_window(minute, self._night_window):
            return None
        into = (minute - self._night_window[0]) % 1440
        return (local - timedelta(minutes=into)).date()

    def _continuous(self, hour: int, end_ns: int) -> list[Change]:
        n, floor = self.cfg.continuous_hours, self.cfg.continuous_min_l
        last = [self.hours.get(h) for h in range(hour - n + 1, hour + 1)]
        flowing = all(v is not None and v >= floor for v in last)
        now_used = self.hours.get(hour)
        if flowing and not self.active.get("continuous_flow"):
            lowest = min(v for v in last if v is not None)
            return [
                self._set(
                    "continuous_flow", True, end_ns, {"hours": n, "min_litres_per_hour": round(lowest, 2)}
                )
            ]
        if self.active.get("continuous_flow") and now_used is not None and now_used < floor:
            return [self._set("continuous_flow", False, end_ns, {"litres_last_hour": round(now_used, 2)})]
        return []

    def _night_use(self, hour: int, local: datetime, used: float | None, end_ns: int) -> list[Change]:
        night = self._night(local)
        if night is None:
            return []
        # A new night by its date, not by its first clock hour: the spring-forward night has no
        # 02:00 (its litres used to be added to the night before's), the fall-back night two (its
        # first hour's litres were dropped at the second).
        if night != self.night_of:
            self.night_litres, self.night_known, self.night_of = 0.0, True, night
        if used is None:
            self.night_known = False
        else:
            self.night_litres += used
        # Judged at the last hour of the night: the next hour (its real local time, which a clock
        # change moves) is outside the window or in another night.
        if self._night(self._local(hour + 1)) == night or not self.night_known:
            return []
        litres = round(self.night_litres, 1)
        over = self.night_litres > self.cfg.night_l
        if over == bool(self.active.get("night_use")):
            return []
        return [self._set("night_use", over, end_ns, {"litres": litres, "window": self.cfg.night})]

    def _no_use(self, minute: int, used: float | None, end_ns: int) -> list[Change]:
        limit = self.cfg.no_use_hours
        if limit is None or used is None:
            return []
        if used >= self.cfg.no_use_l:
            self.expected_dry_hours = 0
            if self.active.get("no_use"):
                return [self._set("no_use", False, end_ns, {"litres_last_hour": round(used, 2)})]
            return []
        if in_window(minute, self._expected):
            self.expected_dry_hours += 1
            if self.expected_dry_hours >= limit and not self.active.get("no_use"):
                return [self._set("no_use", True, end_ns, {"hours_without_use": self.expected_dry_hours})]
        return []

    def _set(self, condition: str, active: bool, ts_ns: int, detail: dict[str, float | str]) -> Change:
        self.active[condition] = active
        return Change(condition, active, ts_ns, detail)
