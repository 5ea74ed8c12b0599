"""Bursts within hours: the profile detector on simulated districts with daytime life (warm spells,
holidays, hydrant draws), the CSV command, and the processor on meter readings across a restart."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from tests.support.cli import CliRun, edge_agent
from tests.support.configs import config_file
from water_edge.agent.config.load import load_config
from water_edge.core.errors import ConfigError
from water_edge.core.reading import Event, Reading
from water_edge.models.flow_leak.burst import BurstDetector, BurstParams, FixedExcess, SlotRow
from water_edge.models.flow_leak.config import BurstSection, FlowLeakSection
from water_edge.models.flow_leak.holiday_dates import HolidayCalendarError, public_holidays
from water_edge.models.flow_leak.processor import FlowLeakProcessor
from water_edge.sim.district import District, DistrictLeak, write_csv

pytestmark = pytest.mark.slow

MEAN = 400.0  # m3/h, the simulated district's mean demand
Columns = dict[str, npt.NDArray[np.float64] | list[datetime]]  # what `District.simulate` returns


def _until(cols: dict[str, Any], end: datetime, *, start: datetime | None = None) -> dict[str, Any]:
    """The simulated columns from `start` (the first row when None) up to `end` (excluded).

    The detectors are causal: the rows before `end` are judged exactly as in the whole simulation,
    so a test cut after the last moment it asserts on proves what it did, without judging days no
    assertion reads. Where a `start` is given, the call says why the days before it are not needed."""
    times = cols["time"]
    rows = slice(0 if start is None else bisect.bisect_left(times, start), bisect.bisect_left(times, end))
    return {name: column[rows] for name, column in cols.items()}


def _slots(cols: Columns, params: BurstParams) -> list[SlotRow]:
    holidays = frozenset(t.date() for t, h in zip(cols["time"], cols["holiday"], strict=True) if h)
    det = BurstDetector(BurstParams(**{**params.__dict__, "holidays": holidays}))
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    rows = [
        r
        for t, q, p in zip(cols["time"], net, cols["pressure"], strict=True)
        for r in det.add(t, float(q), float(p))
    ]
    return rows + det.flush()


def test_a_burst_by_day_is_found_sized_and_cleared_when_repaired_with_the_water_it_lost() -> None:
    start = datetime(2024, 2, 20, 10, 0)
    burst = DistrictLeak(start, 0.4 * MEAN, end=start + timedelta(days=2))
    cols = District(31, daytime_events=True, leaks=[burst]).simulate(60)
    cols = _until(cols, start + timedelta(days=2, hours=3, minutes=15))  # past the last slot asserted
    events = [r for r in _slots(cols, BurstParams()) if r.event]
    found = [r for r in events if r.event == "burst" and r.start >= start - timedelta(hours=1)]
    assert found, [(r.start, r.event) for r in events]
    first = found[0]
    assert first.start - start <= timedelta(hours=3)  # a burst of 40 % of the mean flow, by day
    assert first.onset is not None
    assert abs(first.onset - start) <= timedelta(hours=2)
    assert first.size == pytest.approx(0.4 * MEAN, rel=0.35)
    cleared = [r for r in events if r.event == "cleared" and r.onset == first.onset]
    assert len(cleared) == 1
    assert start + timedelta(days=2) <= cleared[0].start <= start + timedelta(days=2, hours=3)
    assert cleared[0].volume_m3 == pytest.approx(0.4 * MEAN * 48, rel=0.3)
    assert cleared[0].duration_h == pytest.approx(48.0, abs=3.0)  # from its onset to its repair


@pytest.mark.parametrize(
    ("seed", "repaired_at", "within_h"),
    [(31, 10, 0.5), (31, 15, 0.5), (35, 10, 0.5), (35, 15, 0.5), (34, 10, 5.0)],
)
def test_a_burst_repaired_by_day_is_cleared_the_night_after_with_the_hours_it_ran(
    seed: int, repaired_at: int, within_h: float
) -> None:
    """By day the hour-long excess wanders too far to tell an 80 m3/h leak has gone; the quiet
    night after tells it, and its end is put where the slots after are likeliest at zero. Walking
    back over the slots under half its size instead stopped at the first evening slot whose wander
    reached it: 45 h reported for 35 and 37. Seed 34's day profile is scaled by a slope learnt
    with the leak's first evening in it, so its morning slots look repaired early (31.75 h for 35)."""
    onset = datetime(2024, 2, 5, 23, 0)
    repaired = datetime(2024, 2, 7, repaired_at, 0)
    cols = District(
        seed, daytime_events=True, leaks=[DistrictLeak(onset, 0.2 * MEAN, end=repaired)]
    ).simulate(40)
    events = [r for r in _slots(_until(cols, datetime(2024, 2, 8, 3, 0)), BurstParams()) if r.event]
    assert [r.event for r in events if r.start >= onset] == ["burst", "cleared"]
    cleared = events[-1]
    assert repaired + timedelta(hours=9) <= cleared.start <= datetime(2024, 2, 8, 2, 0)  # that night
    assert cleared.onset == onset
    assert cleared.duration_h == pytest.approx((repaired - onset).total_seconds() / 3600, abs=within_h)


@pytest.mark.parametrize("seed", [31, 34, 35])
def test_a_half_hour_surge_at_night_is_raised_and_cleared_within_the_hour_not_held_for_days(
    seed: int,
) -> None:
    """Twice the mean flow for half an hour at 03:00 (a main flushed, a valve opened): its size,
    the weighted median of its slots, falls to nothing once enough of them are quiet, and the slot
    count alone would never tell it, as its size is then zero: without the end for a size under
    half the smallest burst it stayed raised until accepted 72 h later. The end is told from the
    hour-long excess, so within the hour after the surge stops."""
    start = datetime(2024, 2, 20, 3, 0)
    stop = start + timedelta(minutes=30)
    surge = DistrictLeak(start, 2 * MEAN, end=stop)
    cols = District(seed, daytime_events=True, leaks=[surge]).simulate(52)
    events = [r for r in _slots(_until(cols, datetime(2024, 2, 20, 12, 0)), BurstParams()) if r.event]
    assert [r.event for r in events if r.start >= start] == ["burst", "cleared"]
    raised, cleared = events[-2:]
    assert raised.start <= start + timedelta(minutes=15)
    assert cleared.start <= stop + timedelta(hours=1)
    assert cleared.duration_h is not None
    assert cleared.duration_h <= 1.0


def test_a_burst_of_many_times_the_mean_flow_is_found_not_skipped_as_a_glitch() -> None:
    """A single sample beyond 10x the mean flow is a glitch; an inlet sized for fire flow can pass
    that much for hours when a large main bursts, and that must be raised within the hour."""
    start = datetime(2024, 2, 20, 10, 0)
    cols = District(31, daytime_events=True).simulate(60)
    during = np.array([start <= t < start + timedelta(hours=6) for t in cols["time"]])
    cols["inflow_a"] = np.asarray(cols["inflow_a"]) + np.where(
        during, 12 * MEAN, 0.0
    )  # what the inlet meter sees
    cols = _until(cols, start + timedelta(hours=1, minutes=15))  # past the last slot asserted
    found = [r for r in _slots(cols, BurstParams()) if r.event == "burst" and r.start >= start]
    assert found
    assert found[0].start - start <= timedelta(hours=1)
    assert found[0].size == pytest.approx(12 * MEAN, rel=0.2)


def test_a_burst_too_small_to_see_by_day_is_found_in_the_night_after_it() -> None:
    start = datetime(2024, 2, 21, 11, 0)
    burst = DistrictLeak(start, 0.12 * MEAN, end=start + timedelta(days=5))
    cols = _until(District(32, daytime_events=True, leaks=[burst]).simulate(60), datetime(2024, 2, 22, 6, 15))
    found = [r for r in _slots(cols, BurstParams()) if r.event == "burst" and r.start >= start]
    assert found
    assert found[0].start <= datetime(2024, 2, 22, 6, 0)  # by the end of the next night


def test_months_of_daytime_life_raise_few_alarms_where_the_fixed_rule_raises_many() -> None:
    """Warm spells, holidays, hours-long wander and hydrant draws over 200 days of one district:
    the rule of thumb (20 % over the profile for half an hour) against the profile detector."""
    cols = District(33, daytime_events=True).simulate(200)
    rows = _slots(cols, BurstParams())
    alarms = sum(r.event == "burst" for r in rows)
    fixed = FixedExcess(20.0)
    reference = sum(fixed.update(r) for r in rows)
    assert alarms <= 3, [(r.start, r.size) for r in rows if r.event == "burst"]
    assert reference >= 3 * max(alarms, 1)


@pytest.mark.parametrize(
    ("seed", "daytime"), [(5036, False), (5018, True), (42, False)], ids=["5036", "5018-daytime", "42"]
)
def test_the_first_weeks_armed_raise_no_burst_at_the_morning_rise(seed: int, daytime: bool) -> None:
    """A spread measured over 14 days is itself uncertain, and five such spreads were crossed at the
    weekday morning rise: District 5036 raised a burst of 120 m3/h on 16 Jan 06:30, its second day
    armed (seeds 31-60 and 5000-5049: 2-3 times the false bursts of later weeks). The level is now
    raised while fewer than `profile_days` days are learnt; a burst is still found."""
    cols = _until(District(seed, daytime_events=daytime).simulate(60), datetime(2024, 1, 29))  # 14 days armed
    rows = _slots(cols, BurstParams())
    armed = next(r.start for r in rows if r.expected is not None)
    assert armed == datetime(2024, 1, 15)
    early = [(r.start, r.size) for r in rows if r.event == "burst" and r.start < armed + timedelta(days=14)]
    assert not early


def test_a_burst_in_the_first_days_armed_is_found_by_the_night_after_it() -> None:
    start = datetime(2024, 1, 17, 11, 0)  # the third day armed
    burst = DistrictLeak(start, 0.1 * MEAN, end=start + timedelta(days=3))
    cols = _until(District(5036, leaks=[burst]).simulate(60), datetime(2024, 1, 18, 6, 15))
    found = [r for r in _slots(cols, BurstParams()) if r.event == "burst" and r.start >= start]
    assert found
    assert found[0].start <= datetime(2024, 1, 18, 6, 0)
    # On the third day armed the spreads are learnt from few days, and this seed's quietest slot
    # reads 63 m3/h; how well sizes hold over seeds is `test_a_burst_raised_after_..._night_size`.
    assert 0.5 * 0.1 * MEAN <= (found[0].size or 0.0) <= 2 * 0.1 * MEAN


def test_a_burst_raised_after_a_run_through_the_evening_is_raised_at_its_night_size() -> None:
    """A burst of 30 % of the mean flow from 18:00 is raised in the night, after a run of slots
    through the evening, whose hour-long excess wanders by 20-70 m3/h. Each slot of that run is
    weighed by its own time of day's spread: weighed alike, by the raising slot's, the plain median
    of the run made the alarm say 72-87 m3/h for a leak of 119 (seeds 33, 38, 39)."""
    start = datetime(2024, 2, 20, 18, 0)
    errors = []
    for seed in range(31, 41):
        leak = DistrictLeak(start, 0.3 * MEAN)
        cols = _until(
            District(seed, daytime_events=True, leaks=[leak]).simulate(52), datetime(2024, 2, 21, 12, 0)
        )
        found = [r for r in _slots(cols, BurstParams()) if r.event == "burst" and r.start >= start]
        assert found, seed
        _, night = _lost(cols, leak, [leak], start, datetime(2024, 2, 21, 6, 0))
        errors.append(abs((found[0].size or 0.0) / night - 1))
    assert float(np.median(errors)) <= 0.15, np.round(errors, 2)


def test_each_slot_of_the_run_that_raised_a_burst_keeps_its_own_spread() -> None:
    """The rule behind the sizes above, slot by slot: at 18:00-00:30 the spreads differ by a factor
    of four, and the run's slots are weighed by their own time of day's, not the raising slot's."""
    start = datetime(2024, 2, 20, 18, 0)
    cols = District(33, daytime_events=True, leaks=[DistrictLeak(start, 0.3 * MEAN)]).simulate(52)
    cols = _until(cols, datetime(2024, 2, 21, 6, 0))
    holidays = frozenset(t.date() for t, h in zip(cols["time"], cols["holiday"], strict=True) if h)
    params = BurstParams(holidays=holidays)
    det = BurstDetector(params)
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    for t, q, p in zip(cols["time"], net, cols["pressure"], strict=True):
        if any(r.event == "burst" for r in det.add(t, float(q), float(p))):
            break
    assert det.alarm_since is not None
    assert det.alarm_since >= start
    spreads = det._spread  # the per-slot spreads the run's weights must come from
    assert spreads is not None
    slots = [det.alarm_since + timedelta(minutes=15 * i) for i in range(len(det.alarm_spread))]
    own = [float(spreads[(t.hour * 60 + t.minute) // 15]) for t in slots]
    assert det.alarm_spread == own
    assert max(own) > 2 * min(own)  # the run crosses the evening into the night


def _lost(
    cols: dict[str, Any], leak: DistrictLeak, leaks: list[DistrictLeak], start: datetime, end: datetime
) -> tuple[float, float]:
    """What `leak`, one of the simulated `leaks`, lost from `start` to `end`: m3, and m3/h at its
    largest (the night, when pressure is highest) as the 90th percentile. The simulator's `leak`
    column is all of them, each at its reference flow scaled by the pressure of the moment."""
    rows = slice(bisect.bisect_left(cols["time"], start), bisect.bisect_left(cols["time"], end))
    times = cols["time"][rows]
    reference = sum(other.flow(times) for other in leaks)
    own = np.asarray(cols["leak"])[rows] * np.divide(
        leak.flow(times), reference, out=np.zeros(len(times)), where=reference > 0
    )
    return float(own.sum()) * 0.25, float(np.percentile(own, 90))


def test_a_burst_left_running_is_raised_once_accepted_at_its_size_and_the_next_is_found_on_top() -> None:
    """One leak never repaired used to be raised again and again (7 bursts in 15 days, seed 34):
    the morning peak's wander "cleared" it, and it was accepted at the median excess of a day,
    mostly day slots, 93-116 m3/h for the 70 m3/h it showed at night; the next nights then looked
    like a repair and a new burst. The second burst was found by day only because the first one,
    wrongly cleared, was still counted in its excess."""
    first = DistrictLeak(datetime(2024, 2, 5, 14, 0), 0.2 * MEAN)  # never repaired
    second = DistrictLeak(datetime(2024, 2, 20, 9, 0), 0.4 * MEAN, end=datetime(2024, 2, 22))
    cols = District(34, daytime_events=True, leaks=[first, second]).simulate(55)
    cols = _until(cols, datetime(2024, 2, 22, 3, 15))  # past the last slot asserted
    events = [r for r in _slots(cols, BurstParams(accept_hours=48)) if r.event]
    before_second = [r for r in events if first.start <= r.start < second.start]
    assert [r.event for r in before_second] == ["burst", "accepted"], [(r.start, r.event) for r in events]
    raised, accepted = before_second
    assert raised.start - first.start <= timedelta(hours=12)  # 80 m3/h by day: found the night after
    assert raised.onset is not None
    assert accepted.onset == raised.onset
    assert accepted.duration_h == pytest.approx(48.0)
    volume, night = _lost(cols, first, [first, second], raised.onset, raised.onset + timedelta(hours=48))
    assert accepted.volume_m3 == pytest.approx(volume, rel=0.1)
    assert accepted.size == pytest.approx(night, rel=0.1)  # the profile is raised by what it adds
    later = [r for r in events if r.start >= second.start]
    assert [r.event for r in later] == ["burst", "cleared"], [(r.start, r.event) for r in later]
    found, cleared = later
    # 40 % of the mean flow by day is under that hour's wander (z x 45-78 m3/h): the night after.
    assert found.start - second.start <= timedelta(hours=18)
    assert found.onset is not None
    assert abs(found.onset - second.start) <= timedelta(hours=1)
    own_volume, _ = _lost(cols, second, [first, second], second.start, datetime(2024, 2, 22))
    assert found.size == pytest.approx(own_volume / 39, rel=0.2)  # its own m3/h, not both leaks'
    # Its size is what the night shows, when pressure and so leakage are highest: size x hours
    # reads high by up to the night-to-day pressure ratio (here 16 %).
    assert cleared.volume_m3 is not None
    assert own_volume <= cleared.volume_m3 <= 1.2 * own_volume
    assert second.end is not None
    assert second.end <= cleared.start <= second.end + timedelta(hours=3)
    assert cleared.duration_h == pytest.approx(39.0, abs=0.5)  # repaired at midnight: the night tells


def test_the_repair_of_an_accepted_burst_lowers_the_profile_by_its_size_and_raises_nothing() -> None:
    repaired = datetime(2024, 2, 12, 10, 0)
    leak = DistrictLeak(datetime(2024, 2, 5, 14, 0), 0.2 * MEAN, end=repaired)
    later = DistrictLeak(datetime(2024, 2, 16, 1, 0), 0.3 * MEAN, end=datetime(2024, 2, 17))
    cols = _until(
        District(34, daytime_events=True, leaks=[leak, later]).simulate(50), datetime(2024, 2, 16, 4, 0)
    )
    holidays = frozenset(t.date() for t, h in zip(cols["time"], cols["holiday"], strict=True) if h)
    det = BurstDetector(BurstParams(accept_hours=48, holidays=holidays))
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    events: list[SlotRow] = []
    offsets: list[tuple[datetime, float]] = []
    restarted = False
    for t, q in zip(cols["time"], net, strict=True):
        if not restarted and t >= datetime(2024, 2, 13, 12, 0):  # the profile settling, restarted
            assert det.settling is not None
            det = BurstDetector.from_dict(json.loads(json.dumps(det.to_dict())), det.params)
            restarted = True
        for r in det.add(t, float(q)):
            events += [r] if r.event else []
            offsets.append((r.start, det.offset))
    accepted = [r for r in events if r.event == "accepted"]
    assert len(accepted) == 1
    assert accepted[0].size is not None
    before_repair = [o for t, o in offsets if t < repaired]
    assert before_repair[-1] == pytest.approx(accepted[0].size)
    # The night after the repair tells it: the profile comes down by about the leak's size ...
    after_night = next(o for t, o in offsets if t >= datetime(2024, 2, 13, 6, 0))
    assert after_night <= 0.15 * accepted[0].size
    # A day on, it is set by what that day's quiet hours showed: the leak is gone entirely.
    settled = next(o for t, o in offsets if t >= datetime(2024, 2, 14, 6, 0))
    assert settled < min(after_night, 0.5)
    # ... and not by more, or the district would look like a new burst the nights after.
    between = [r for r in events if repaired <= r.start < later.start]
    assert between == []
    found = [r for r in events if r.event == "burst" and r.start >= later.start]
    assert found
    assert found[0].start - later.start <= timedelta(hours=2)  # at night, on the lowered profile
    assert found[0].size == pytest.approx(0.3 * MEAN, rel=0.25)


def test_the_state_round_trips_and_judges_the_next_slot_alike() -> None:
    cols = District(35, daytime_events=True).simulate(20)
    det = BurstDetector()
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    times = cols["time"]
    assert isinstance(times, list)
    for t, q in zip(times[:-200], net[:-200], strict=True):
        det.add(t, float(q))
    det.flush()  # the slot in progress is not stored: a restart loses at most that one
    copy = BurstDetector.from_dict(json.loads(json.dumps(det.to_dict())), BurstParams())
    a = [r for t, q in zip(times[-200:], net[-200:], strict=True) for r in det.add(t, float(q))]
    b = [r for t, q in zip(times[-200:], net[-200:], strict=True) for r in copy.add(t, float(q))]
    assert [r.event for r in a] == [r.event for r in b]
    assert [r.expected for r in a] == pytest.approx([r.expected for r in b], rel=1e-3)
    assert det.state == "armed"
    other = BurstDetector.from_dict(det.to_dict(), BurstParams(slot_minutes=60))
    assert other.state == "learning"  # another slot length learns again


def test_a_restart_in_a_burst_ends_it_alike_and_reads_a_state_from_before_the_spreads() -> None:
    leak = DistrictLeak(datetime(2024, 2, 5, 14, 0), 0.2 * MEAN)  # never repaired
    cols = _until(District(34, daytime_events=True, leaks=[leak]).simulate(40), datetime(2024, 2, 8, 6, 0))
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    times = cols["time"]
    cut = bisect.bisect_left(times, datetime(2024, 2, 6, 12, 0))  # in the burst, after a night of it
    det = BurstDetector(BurstParams(accept_hours=48))
    for t, q in zip(times[:cut], net[:cut], strict=True):
        det.add(t, float(q))
    det.flush()
    assert det.state == "burst"
    stored = json.loads(json.dumps(det.to_dict()))
    # The state as the detector wrote it before: slots under B/2 counted in "under" and "below",
    # no spreads, no counts of telling slots, no settling.
    new_keys = ("alarm_spread", "ended_slots", "repair_slots", "repair_drop", "settling")
    older = {k: v for k, v in stored.items() if k not in new_keys} | {"under": 0, "below": 2}

    def rest(d: BurstDetector) -> list[SlotRow]:
        return [r for t, q in zip(times[cut:], net[cut:], strict=True) for r in d.add(t, float(q)) if r.event]

    now = rest(det)
    assert [r.event for r in now] == ["accepted"]
    again = rest(BurstDetector.from_dict(stored, BurstParams(accept_hours=48)))
    assert [(r.start, r.event) for r in again] == [(r.start, r.event) for r in now]
    assert again[0].size == pytest.approx(now[0].size, rel=1e-4)  # the profile is stored rounded
    # A state written before the slots' spreads were kept weighs its slots alike for the day it
    # holds, and is still accepted, once, when its time is up.
    before = rest(BurstDetector.from_dict(older, BurstParams(accept_hours=48)))
    assert [(r.start, r.event) for r in before] == [(r.start, r.event) for r in now]
    assert before[0].size is not None
    assert before[0].size > 0


def test_score_burst_reads_a_european_export_and_lists_the_burst(tmp_path: Path) -> None:
    start = datetime(2024, 2, 20, 9, 30)
    burst = DistrictLeak(start, 0.5 * MEAN, end=start + timedelta(days=1))
    # From 28 days before the burst (a full profile, `profile_days`) to the day after its repair:
    # 30 days of the 55 simulated, each read twice below.
    days = (datetime(2024, 1, 23), datetime(2024, 2, 22))
    cols = _until(District(36, daytime_events=True, leaks=[burst]).simulate(55), days[1], start=days[0])
    csv = tmp_path / "dma.csv"
    write_csv(cols, str(csv), sep=";", decimal=",", time_format="%d.%m.%Y %H:%M")
    holidays = sorted({t.date().isoformat() for t, h in zip(cols["time"], cols["holiday"], strict=True) if h})
    args = ["--csv", str(csv), "--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow"]
    args += ["--pressure", "pressure", "--timezone", "UTC", "--events"]
    for h in holidays:
        args += ["--holiday", h]
    run = edge_agent("models", "score", "burst", *args)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "time,flow,expected,added,event,onset,size_m3h,volume_m3"
    rows = [line.split(",") for line in lines[1:]]
    bursts = [r for r in rows if r[4] == "burst" and r[0] >= "2024-02-20"]
    assert bursts
    assert bursts[0][0] <= "2024-02-21 06:00"
    assert bursts[0][5] <= "2024-02-20 11:30"  # its onset
    assert float(bursts[0][6]) == pytest.approx(0.5 * MEAN, rel=0.35)
    assert any(r[4] == "cleared" and r[5] == bursts[0][5] for r in rows)
    assert "slots of 15 min" in run.stderr
    full = edge_agent("models", "score", "burst", *[a for a in args if a != "--events"])
    assert len(full.stdout.splitlines()) > (days[1] - days[0]).days * 96 - 10  # every slot without --events


def test_score_burst_fixed_rule_dates_its_alarm_from_its_first_slot_and_clears_it(tmp_path: Path) -> None:
    # The reference rule's alarm used to be dated from the second slot over the margin (the one it
    # is raised in) and never cleared: a comparison with the profile detector's events saw a burst
    # with no end.
    start = datetime(2024, 2, 20, 2, 0)
    burst = DistrictLeak(start, MEAN, end=start + timedelta(hours=3))
    csv = tmp_path / "dma.csv"
    write_csv(District(42, leaks=[burst]).simulate(52), str(csv))
    args = ["--csv", str(csv), "--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow"]
    run = edge_agent("models", "score", "burst", *args, "--timezone", "UTC", "--events", "--method", "fixed")
    assert run.returncode == 0, run.stderr
    rows = [line.split(",") for line in run.stdout.splitlines()[1:]]
    during = [r for r in rows if "2024-02-20 01:00" <= r[0] <= "2024-02-20 06:00"]
    assert [(r[0], r[4], r[5]) for r in during] == [
        ("2024-02-20 02:15", "burst", "2024-02-20 02:00"),
        ("2024-02-20 05:00", "cleared", "2024-02-20 02:00"),
    ]
    assert float(during[0][6]) > 0.5 * MEAN  # its size: the slot's excess over the profile
    counted = run.stderr.rsplit("slots of 15 min; ", 1)[1]
    assert counted.startswith(f"{sum(r[4] == 'burst' for r in rows)} burst(s), ")
    assert f" {sum(r[4] == 'cleared' for r in rows)} cleared," in counted


def test_score_burst_skips_a_glitched_row_while_learning_and_says_so(tmp_path: Path) -> None:
    cols = District(36, daytime_events=True).simulate(12)
    clean, glitched = tmp_path / "clean.csv", tmp_path / "glitched.csv"
    write_csv(cols, str(clean))
    inflow = list(cols["inflow_a"])
    row = 3 * 96 + 40  # 10:00 on the fourth day, while the profile learns
    inflow[row] = 1000 * inflow[row]
    write_csv({**cols, "inflow_a": inflow}, str(glitched))
    args = ["--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--timezone", "UTC"]
    want = edge_agent("models", "score", "burst", "--csv", str(clean), *args)
    got = edge_agent("models", "score", "burst", "--csv", str(glitched), *args)
    assert got.returncode == 0, got.stderr
    assert "1 sample(s) beyond 10x the district's mean flow" in got.stderr
    assert "glitch" not in want.stderr
    differ = [
        i
        for i, (a, b) in enumerate(zip(want.stdout.splitlines(), got.stdout.splitlines(), strict=True))
        if a != b
    ]
    assert differ == [
        row + 1
    ]  # its slot only (one sample per slot, after the header): nothing learnt from it


def test_score_burst_refuses_slots_shorter_than_the_files_interval(tmp_path: Path) -> None:
    # An hourly export judged in 15-minute slots left three slots in four without a reading: a
    # burst's water lost came out at a quarter of itself (705 m3 for 2,809), without a word.
    hourly = tmp_path / "hourly.csv"
    write_csv(District(37).simulate(20, interval_min=60), str(hourly))
    args = ("--csv", str(hourly), "--flow", "inflow_a", "--timezone", "UTC")
    refused = edge_agent("models", "score", "burst", *args, "--slot-minutes", "15")
    assert refused.returncode == 2
    assert "--slot-minutes 15 is shorter than" in refused.stderr
    assert "interval of 60 min" in refused.stderr
    assert refused.stdout == ""
    for given in ("60", "120"):
        run = edge_agent("models", "score", "burst", *args, "--slot-minutes", given)
        assert run.returncode == 0, run.stderr
        assert f"slots of {given} min" in run.stderr


def test_score_burst_names_a_bad_holiday() -> None:
    run = edge_agent("models", "score", "burst", "--csv", "x.csv", "--flow", "a", "--holiday", "25/12/2024")
    assert run.returncode == 2
    assert "--holiday" in run.stderr


def _readings(cols: dict[str, object]) -> list[Reading]:
    out = []
    times = cols["time"]
    assert isinstance(times, list)
    for i, when in enumerate(times):
        ts = int(when.replace(tzinfo=None).timestamp() * 1e9)
        for tag in ("inflow_a", "inflow_b", "outflow", "pressure"):
            out.append(Reading("plc", tag, ts, float(np.asarray(cols[tag])[i])))
    return out


async def _feed(readings: list[Reading]) -> AsyncIterator[tuple[str, list[Reading]]]:
    yield ("plc", readings)


@pytest.mark.parametrize(("timezone", "utc_offset_h"), [("UTC", 0), ("Europe/Rome", 1)])
async def test_the_processor_raises_a_burst_with_its_size_and_pressure_drop_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timezone: str, utc_offset_h: int
) -> None:
    """The district's own time zone names the slots; the event carries UTC beside it (Rome in
    January: an hour ahead), so a centre that files events by UTC needs no calendar of its own."""
    monkeypatch.setenv("TZ", "UTC")
    start = datetime(2024, 1, 29, 10, 0)
    burst = DistrictLeak(start, 0.5 * MEAN, end=start + timedelta(days=1))
    cols = District(37, daytime_events=False, prv_changes_per_year=0.0, leaks=[burst]).simulate(33)
    readings = _readings(_until(cols, datetime(2024, 2, 1)))  # it is cleared at 00:30 on 31 January
    split = next(i for i, r in enumerate(readings) if r.ts_ns >= int(datetime(2024, 1, 25).timestamp() * 1e9))
    section = FlowLeakSection(
        name="dma-east", inflow=["inflow_a", "inflow_b"], outflow=["outflow"], pressure="pressure",
        timezone=timezone, sample_s=900, stale_after_s=1800, burst=BurstSection(enabled=True),
    )  # fmt: skip
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    first = FlowLeakProcessor([section], tmp_path)
    await first.run(_feed(readings[:split]), emit)
    health = first.health().districts["dma-east"]
    assert health.burst_state == "armed"
    assert (tmp_path / "flow_leak" / "dma-east" / "burst.json").exists()
    again = FlowLeakProcessor([section], tmp_path)  # a restart keeps the profile
    assert again.health().districts["dma-east"].burst_state == "armed"
    await again.run(_feed(readings[split:]), emit)
    bursts = [e for e in events if e.kind == "burst"]
    assert len(bursts) == 1, [(e.kind, e.detail) for e in bursts]
    detail = bursts[0].detail
    assert detail["onset_utc"] <= "2024-01-29T11:00Z"
    for when in ("onset", "slot"):
        local, utc = datetime.fromisoformat(detail[f"{when}_local"]), detail[f"{when}_utc"]
        assert local - timedelta(hours=utc_offset_h) == datetime.fromisoformat(utc.removesuffix("Z"))
    assert detail["added_m3h"] == pytest.approx(0.5 * MEAN, rel=0.35)
    assert detail["pressure_drop"] > 0  # more flow through the inlet, more head loss
    # ... a drop from the pressure the profile expects, not a sum with it
    assert detail["pressure_drop"] < 0.5 * float(
        np.nanmedian(cast(npt.NDArray[np.float64], cols["pressure"]))
    )
    assert bursts[0].severity in ("alarm", "critical")
    assert again.health().districts["dma-east"].bursts == 1
    cleared = [e for e in events if e.kind == "burst_cleared"]
    assert len(cleared) == 1
    assert cleared[0].detail["how"] == "repaired"
    assert cleared[0].detail["volume_lost_m3"] == pytest.approx(0.5 * MEAN * 24, rel=0.3)
    assert not [e for e in events if e.kind == "flow_leak" and e.detail["night"] < "2024-01-29"]


def test_config_refuses_a_slot_that_does_not_divide_a_day() -> None:
    with pytest.raises(ValueError, match="divide a day"):
        BurstSection(enabled=True, slot_minutes=25)


def _inflow_a_glitched(readings: list[Reading], factors: dict[datetime, float]) -> list[Reading]:
    """`readings` with the inflow_a reading at each (local, TZ=UTC) time multiplied by its factor."""
    at = {int(when.timestamp() * 1e9): f for when, f in factors.items()}
    return [
        dataclasses.replace(r, value=float(r.value) * at[r.ts_ns])  # type: ignore[arg-type]
        if r.tag == "inflow_a" and r.ts_ns in at else r
        for r in readings
    ]  # fmt: skip


async def _processed(
    section: FlowLeakSection, readings: list[Reading], where: Path
) -> tuple[list[Event], FlowLeakProcessor]:
    """The events a flow-leak processor with state in `where` emits for `readings`, and it."""
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    proc = FlowLeakProcessor([section], where)
    await proc.run(_feed(readings), emit)
    return events, proc


def _glitch_section() -> FlowLeakSection:
    return FlowLeakSection(
        name="dma-east", inflow=["inflow_a", "inflow_b"], outflow=["outflow"], pressure="pressure",
        timezone="UTC", sample_s=900, stale_after_s=1800, baseline_nights=10,
        burst=BurstSection(enabled=True),
    )  # fmt: skip


@pytest.fixture(scope="module")
def district_37(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Reading], dict[str, float]]:
    """District 37's readings (TZ=UTC) and the night flows a processor reports on them: the clean
    twin of every glitched run below, the same for each glitch, so processed once (read-only).
    Up to 26 January: armed on the 15th; without the glitch rules the glitch of the 25th at 03:00
    raises false bursts that morning and costs the night of the 25th, so the days after add
    nothing the assertions need."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "UTC")
        cols = District(37, daytime_events=False, prv_changes_per_year=0.0).simulate(32)
        readings = _readings(_until(cols, datetime(2024, 1, 26)))
        clean, _ = asyncio.run(_processed(_glitch_section(), readings, tmp_path_factory.mktemp("clean")))
    nights = {e.detail["night"]: e.detail["night_flow_m3h"] for e in clean if e.kind == "night_flow"}
    return readings, nights


@pytest.mark.parametrize("factor", [1000.0, -1000.0], ids=["spike", "negative"])
async def test_one_glitched_flow_reading_raises_no_burst_and_costs_no_night(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    factor: float,
    district_37: tuple[list[Reading], dict[str, float]],
) -> None:
    # Before, one inflow reading of 1000x at 03:00 set the profile's day scale to its floor: a
    # false burst every morning for four days (the scale kept the glitch while in alarm); one of
    # -1000x made that night's flow -70,000 m3/h, and the night went unjudged.
    monkeypatch.setenv("TZ", "UTC")
    readings, want = district_37
    glitched = _inflow_a_glitched(readings, {datetime(2024, 1, 25, 3): factor})
    events, proc = await _processed(_glitch_section(), glitched, tmp_path / "glitched")
    assert [e.kind for e in events if e.kind != "night_flow"] == []
    nights = {e.detail["night"]: e.detail["night_flow_m3h"] for e in events if e.kind == "night_flow"}
    assert nights["2024-01-25"] == pytest.approx(want["2024-01-25"], rel=0.05)
    district = proc.health().districts["dma-east"]
    assert district.spikes == 1
    assert "dma-east: 1 glitched sample(s) skipped" in proc.health().status_lines()


async def test_a_glitch_while_learning_stays_out_of_the_profile_and_a_burst_by_day_is_found_within_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, glitches were known only once armed: an inflow reading of 1000x at 08:00 on a
    # learning day went into the stored profile (a slot of 531,997 m3/h) and the district's mean
    # flow, which raised the smallest burst reported from 47 to 72 m3/h for the four weeks the day
    # is kept: a burst of 60 m3/h from 10:00 was raised at 00:45 the night after, not at 13:45, and
    # again the next night; only the night's own rule counted the -1000x one.
    monkeypatch.setenv("TZ", "UTC")
    start = datetime(2024, 1, 22, 10, 0)
    burst = DistrictLeak(start, 0.15 * MEAN, end=start + timedelta(days=2))
    cols = District(37, daytime_events=False, prv_changes_per_year=0.0, leaks=[burst]).simulate(30)
    # Up to the morning after the burst began: the night after it is when it was raised before.
    readings = _readings(_until(cols, datetime(2024, 1, 23, 6)))
    learning = {datetime(2024, 1, 9, 8): 1000.0, datetime(2024, 1, 11, 3): -1000.0}  # both while learning
    glitched = _inflow_a_glitched(readings, learning)
    section = FlowLeakSection(
        name="dma-east", inflow=["inflow_a", "inflow_b"], outflow=["outflow"], pressure="pressure",
        timezone="UTC", sample_s=900, stale_after_s=1800, burst=BurstSection(enabled=True),
    )  # fmt: skip

    clean, _ = await _processed(section, readings, tmp_path / "clean")
    events, proc = await _processed(section, glitched, tmp_path / "glitched")
    want = next(e.detail for e in clean if e.kind == "burst")
    got = next(e.detail for e in events if e.kind == "burst")
    assert want["slot_local"] <= "2024-01-22T16:00"
    assert got["slot_local"] <= "2024-01-22T16:00", got
    assert got["min_burst_m3h"] == pytest.approx(want["min_burst_m3h"], rel=0.02)
    stored = json.loads((tmp_path / "glitched" / "flow_leak" / "dma-east" / "burst.json").read_text())
    assert stored["days"]["2024-01-09"][32] is None  # 08:00: the slot's only sample was the glitch
    assert proc.health().districts["dma-east"].spikes == 2
    assert "dma-east: 2 glitched sample(s) skipped" in proc.health().status_lines()


def test_a_burst_of_many_times_the_flow_while_learning_is_learnt_from_its_third_sample() -> None:
    start = datetime(2024, 1, 5, 10, 0)
    cols = District(31, daytime_events=True).simulate(8)
    during = np.array([start <= t < start + timedelta(hours=6) for t in cols["time"]])
    cols["inflow_a"] = np.asarray(cols["inflow_a"]) + np.where(during, 12 * MEAN, 0.0)
    det = BurstDetector()
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    for t, q in zip(cols["time"], net, strict=True):
        det.add(t, float(q))
    assert det.state == "learning"
    assert det.glitches == 2  # as once armed: two samples in a row may be a glitch, a third is flow
    day = det.days[start.date()]
    assert np.isnan(day[40:42]).all()  # 10:00 and 10:15
    assert (day[42:64] > 12 * MEAN).all()


def test_the_morning_rise_from_a_low_night_is_learnt_not_skipped_as_a_glitch() -> None:
    """The simulated district steps from its night flow to about ten times that at 05:30: judged
    against the last samples it would be a glitch every learning morning; against the day's
    slots learnt so far it is demand."""
    for seed in (31, 33, 9100):
        cols = District(seed, daytime_events=True).simulate(16)
        net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
        times = cols["time"]
        assert isinstance(times, list)
        step = [net[i] / net[i - 1] for i, t in enumerate(times) if (t.hour, t.minute) == (5, 30)]
        assert max(step) > 9  # the step this test is about
        det = BurstDetector()
        for t, q in zip(times, net, strict=True):
            det.add(t, float(q))
        assert det.glitches == 0, seed
        assert all(np.isfinite(v[22]) for d, v in det.days.items() if d > times[0].date())  # 05:30


def test_a_restart_while_learning_keeps_skipping_glitches() -> None:
    cols = District(35, daytime_events=True).simulate(4)
    net = np.asarray(cols["inflow_a"]) + np.asarray(cols["inflow_b"]) - np.asarray(cols["outflow"])
    times = cols["time"]
    assert isinstance(times, list)
    det = BurstDetector()
    for t, q in zip(times[:-8], net[:-8], strict=True):
        det.add(t, float(q))
    det.flush()
    again = BurstDetector.from_dict(json.loads(json.dumps(det.to_dict())), BurstParams())
    assert again.state == "learning"
    again.add(times[-8], 1000 * float(net[-8]))
    for t, q in zip(times[-7:], net[-7:], strict=True):
        again.add(t, float(q))
    assert again.glitches == 1


# -- public holidays from a country's calendar ------------------------------------------------------

ITALY = "IT"
SPRING_2024 = datetime(2024, 2, 1)  # 100 days: Easter Monday (1 April), 25 April and 1 May are weekdays
ITALIAN_WEEKDAY_HOLIDAYS = ("2024-04-01", "2024-04-25", "2024-05-01")
# What the detectors are given of those 100 days: from three weeks before Easter Monday (armed
# after two; a profile keeps `profile_days`, 28, so 25 April and 1 May are judged on a full one as
# when fed from 1 February) to the night after 1 May, the last a burst begun on it could be raised
# in. The same bursts, with the same onsets, as when fed all 100 days; 53 days instead.
SPRING_FED = (datetime(2024, 3, 11), datetime(2024, 5, 3))


def test_a_country_calendar_does_not_run_out_and_knows_regions() -> None:
    italy = public_holidays(ITALY)
    assert date(2031, 4, 14) in italy  # Easter Monday: Easter Sunday is 13 April 2031
    assert date(2046, 12, 25) in italy  # two decades on, where a typed-in list has long ended
    assert date(2030, 1, 14) in public_holidays("JP")  # Coming of Age Day, the 2nd Monday of January
    assert date(2030, 1, 6) in public_holidays("DE", "BY")  # Epiphany in Bavaria ...
    assert date(2030, 1, 6) not in public_holidays("DE", "BE")  # ... not in Berlin
    with pytest.raises(HolidayCalendarError, match="unknown country 'XX'") as country:
        public_holidays("XX")
    assert country.value.key == "holidays_country"
    with pytest.raises(HolidayCalendarError, match=r"no subdivision 'ZZ'.*BY") as region:
        public_holidays("DE", "ZZ")
    assert region.value.key == "holidays_subdivision"


def _italian_spring() -> dict[str, Any]:
    cols = District(30, daytime_events=True, start=SPRING_2024, holidays=public_holidays(ITALY)).simulate(100)
    return _until(cols, SPRING_FED[1], start=SPRING_FED[0])


def _italian_spring_csv(tmp_path: Path) -> Path:
    path = tmp_path / "dma.csv"
    write_csv(_italian_spring(), str(path))
    return path


def test_score_burst_judges_the_countrys_holidays_as_sundays(tmp_path: Path) -> None:
    # A weekday holiday's Sunday-like morning (the peak two hours later) is a false burst when the
    # holiday is judged as a weekday: one on each of the three, in this district.
    csv = _italian_spring_csv(tmp_path)
    args = ["--csv", str(csv), "--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow"]
    args += ["--timezone", "UTC", "--events"]

    def burst_days(run: CliRun) -> set[str]:
        assert run.returncode == 0, run.stderr
        return {line[:10] for line in run.stdout.splitlines()[1:] if line.split(",")[4] == "burst"}

    plain = edge_agent("models", "score", "burst", *args)
    assert set(ITALIAN_WEEKDAY_HOLIDAYS) <= burst_days(plain)
    assert "no holidays given (--holidays-country CC)" in plain.stderr
    judged = edge_agent("models", "score", "burst", *args, "--holidays-country", ITALY)
    assert not burst_days(judged) & set(ITALIAN_WEEKDAY_HOLIDAYS)
    assert "3 holiday(s) on weekdays judged as Sundays" in judged.stderr
    bad = edge_agent("models", "score", "burst", *args, "--holidays-country", "XX")
    assert bad.returncode == 2
    assert "--holidays-country: unknown country 'XX'" in bad.stderr
    orphan = edge_agent("models", "score", "burst", *args, "--holidays-subdivision", "BY")
    assert orphan.returncode == 2
    assert "--holidays-subdivision needs --holidays-country" in orphan.stderr


async def test_the_processor_takes_the_configured_countrys_holidays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    readings = _readings(_italian_spring())
    found = {}
    for country in (None, ITALY):
        section = FlowLeakSection(
            name="dma-south", inflow=["inflow_a", "inflow_b"], outflow=["outflow"], timezone="UTC",
            sample_s=900, stale_after_s=1800, burst=BurstSection(enabled=True, holidays_country=country),
        )  # fmt: skip
        events, _ = await _processed(section, readings, tmp_path / str(country))
        bursts = [e for e in events if e.kind == "burst"]
        found[country] = {e.detail["onset_local"][:10] for e in bursts}
        if country is None:  # the event says which profile judged it: a hint to add the day
            kinds = {e.detail["onset_local"][:10]: e.detail["day_kind"] for e in bursts}
            assert all(kinds[day] == "weekday" for day in ITALIAN_WEEKDAY_HOLIDAYS)
    assert set(ITALIAN_WEEKDAY_HOLIDAYS) <= found[None]
    assert not found[ITALY] & set(ITALIAN_WEEKDAY_HOLIDAYS)


DISTRICT_TABLES = """
[[devices]]
name = "plc"
kind = "fake"
poll_interval_ms = 1000

  [[devices.tags]]
  name = "inflow"

[[models.flow_leak]]
name = "dma-south"
inflow = ["plc/inflow"]
timezone = "Europe/Rome"

  [models.flow_leak.burst]
  enabled = true
"""


def _district_config(tmp_path: Path, burst: str) -> Path:
    return config_file(tmp_path, DISTRICT_TABLES + burst)


@pytest.mark.parametrize(
    ("burst", "key", "expected"),
    [
        ('holidays_country = "XX"\n', "burst.holidays_country", "unknown country 'XX'"),
        ('holidays_country = "DE"\nholidays_subdivision = "ZZ"\n', "burst.holidays_subdivision", "BY"),
        ('holidays_subdivision = "BY"\n', "burst", "needs holidays_country"),
        ('holidays_country = "italy"\n', "burst.holidays_country", "pattern"),
    ],
    ids=["unknown-country", "unknown-region", "region-alone", "not-a-code"],
)
def test_a_holiday_calendar_mistake_names_the_file_and_key(
    tmp_path: Path, burst: str, key: str, expected: str
) -> None:
    path = _district_config(tmp_path, burst)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert str(path) in problem
    assert f"models.flow_leak[0].{key}" in problem
    assert expected in problem


def test_check_config_warns_when_the_holiday_list_runs_out(tmp_path: Path) -> None:
    yesterday = date.today() - timedelta(days=1)
    ended = edge_agent("check-config", "-c", str(_district_config(tmp_path, f"holidays = [{yesterday}]\n")))
    assert ended.returncode == 0, ended.stderr
    assert f"burst.holidays: the list ends {yesterday}" in ended.stderr
    assert "set holidays_country" in ended.stderr
    none = edge_agent("check-config", "-c", str(_district_config(tmp_path, "")))
    assert "burst.holidays: no public holidays" in none.stderr
    calendar = edge_agent("check-config", "-c", str(_district_config(tmp_path, 'holidays_country = "IT"\n')))
    assert calendar.returncode == 0, calendar.stderr
    assert "holidays" not in calendar.stderr
