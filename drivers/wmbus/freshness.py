"""Telling an old telegram from a new one. A meter's telegram recorded and sent again later (a
replay, or a store-and-forward repeater flushing its memory) must not become a fresh reading: its
register is older than the last one stored, and the centre would see the meter's total go down and
up again. The duplicate filter catches copies heard within its window; this catches the rest.

Compared with the last telegram accepted from the same meter, in order:

1. mode 7's message counter (the AFL's, 32 bits, never goes back): smaller is old;
2. the meter's own date-time record: newer is new, whatever the access number says (a meter that
   was reset); older, with an access number behind, is old;
3. the access number (one byte: after 255 comes 0): 1 to 127 behind the last accepted is old, as
   long as that one was accepted less than `HORIZON_INTERVALS` of the meter's send intervals ago
   (its mean interval, from the telegrams accepted so far). After longer the meter may have sent
   128 or more telegrams meanwhile, and its number says nothing. Only for a meter seen counting:
   most of its accepted telegrams one number after the one before (a meter that numbers its
   telegrams otherwise is not judged by its numbers).

A meter that starts counting again from a lower number (a battery change, a reset) without a
clock or counter to say so is judged old by rule 3 only until `RESTART_RUN` telegrams in a row
have come one number after the other at its own pace (each at least half its interval after the
one before): a meter counting again, which is taken from then on. Old telegrams sent again come
in a burst (a repeater flushing its memory) or one at a time (a replay): neither is such a run.

The same access number as the last accepted is a copy (the duplicate filter's business), and a
meter's first telegrams are never judged old by their number: there is nothing, or no interval,
to compare with yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from water_edge.drivers.mbus.records import Record
from water_edge.drivers.wmbus.reception import MAX_GAP

HORIZON_INTERVALS: Final = 64
RESTART_RUN: Final = 3  # telegrams in a row, one number apart at the meter's pace: counting again
MIN_ONES: Final = 2  # steps of one seen before access numbers are trusted to count telegrams
# The date_time record's value ("2026-12-04T10:15", or with seconds) and whether it is summer time.
MeterTime = tuple[str, bool]


def meter_time(records: list[Record]) -> MeterTime | None:
    """The meter's current date and time, when its telegram carries them."""
    for r in records:
        if (
            r.quantity == "date_time"
            and (r.storage, r.tariff, r.subunit) == (0, 0, 0)
            and r.error is None
            and isinstance(r.value, str)
        ):
            return r.value, "summer time" in r.modifiers
    return None


def _standard(when: MeterTime | None) -> dt.datetime | None:
    if when is None:
        return None
    text, summer = when
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed - dt.timedelta(hours=1) if summer else parsed


@dataclass
class Freshness:
    """The last telegram accepted from one meter, and how often it sends."""

    access: int | None = None
    meter_time: MeterTime | None = None
    counter: int | None = None  # mode 7's message counter
    at_s: float | None = None  # monotonic time the last access number was accepted
    _spent_s: float = 0.0  # time between accepted telegrams ...
    _steps: int = 0  # ... and the access-number steps it took
    _pairs: int = 0  # accepted telegrams with a step of 1 to 127 from the one before ...
    _ones: int = 0  # ... of which one step: the meter counts its telegrams
    # telegrams judged old by their number alone, in a row, one number apart at the meter's pace:
    # (the last one's access number, its time, how many)
    _run: tuple[int, float, int] | None = None

    @property
    def counts(self) -> bool:
        """Whether the meter's access numbers count its telegrams: most steps are 1 (a meter that
        sends other numbers is never judged by them)."""
        return self._ones >= MIN_ONES and 2 * self._ones >= self._pairs

    @property
    def interval_s(self) -> float | None:
        """The meter's mean send interval, from the telegrams accepted so far."""
        return self._spent_s / self._steps if self._steps else None

    def judge(
        self, access: int | None, when: MeterTime | None, counter: int | None, now_s: float
    ) -> str | None:
        """None for a telegram newer than the last accepted (or one that cannot be told); why it is
        old otherwise."""
        if counter is not None and self.counter is not None and counter < self.counter:
            return f"message counter {counter}, below the last accepted ({self.counter})"
        if access is None or self.access is None:
            return None
        behind = (self.access - access) % 256
        if behind == 0 or behind >= MAX_GAP:
            return None
        clock = self._clock_says(access, when)
        if clock is not None:  # the meter's own clock decides
            return clock or None
        return self._number_says(access, behind, now_s)

    def _number_says(self, access: int, behind: int, now_s: float) -> str | None:
        """Why a number `behind` the last accepted one is old; None when it cannot be told: a meter
        not seen counting, or not heard for `HORIZON_INTERVALS` of its intervals."""
        interval = self.interval_s
        if interval is None or self.at_s is None or not self.counts:
            return None
        if now_s - self.at_s >= HORIZON_INTERVALS * interval:
            return None
        if self._counting_again(access, now_s, interval):
            return None
        return f"access number {access}, {behind} behind the last accepted ({self.access})"

    def _counting_again(self, access: int, now_s: float, interval: float) -> bool:
        """Whether `access`, judged old by its number, makes `RESTART_RUN` in a row one number apart
        at the meter's pace: the meter counts again from a lower number."""
        run = self._run
        if run is not None and access == (run[0] + 1) % 256 and now_s - run[1] >= interval / 2:
            self._run = (access, now_s, run[2] + 1)
        else:
            self._run = (access, now_s, 1)
        return self._run[2] >= RESTART_RUN

    def _clock_says(self, access: int, when: MeterTime | None) -> str | None:
        """Why the meter's time stamp is older than the last accepted one; "" when it is newer; None
        when there are not two to compare, or they are the same minute."""
        then, now = _standard(self.meter_time), _standard(when)
        if then is None or now is None or when is None or self.meter_time is None or now == then:
            return None
        if now > then:
            return ""
        return (
            f"access number {access} and time stamp {when[0]}, older than the last accepted "
            f"({self.access}, {self.meter_time[0]})"
        )

    def accept(self, access: int | None, when: MeterTime | None, counter: int | None, now_s: float) -> None:
        self._run = None
        if access is not None:
            if self.access is not None and self.at_s is not None:
                step = (access - self.access) % 256
                if 0 < step < MAX_GAP:
                    self._spent_s += now_s - self.at_s
                    self._steps += step
                    self._pairs += 1
                    self._ones += step == 1
            self.access, self.at_s = access, now_s
        if when is not None:
            self.meter_time = when
        if counter is not None:
            self.counter = counter
