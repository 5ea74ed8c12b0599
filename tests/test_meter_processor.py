"""Consumption analytics on replayed meter readings: a leak behind the meter, backflow, night use,
a household gone quiet (watch-over), and the meters' own flags, each starting and clearing; an
ordinary household and a silent meter raise nothing."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from water_edge.core.processor import ProcessorContext
from water_edge.core.reading import Event, Reading
from water_edge.models.meter.config import MeterGroupConfig
from water_edge.models.meter.factory import MeterFactory
from water_edge.models.meter.processor import MeterProcessor

NS = 1_000_000_000
START = int(datetime(2024, 3, 4, 0, 0, tzinfo=UTC).timestamp()) * NS  # a Monday, midnight UTC
STEP_S = 300  # a reading every five minutes


def household(rng: random.Random, hour: float) -> float:
    """Litres per 5 minutes an ordinary home draws: mornings and evenings, nothing at night."""
    if 0 <= hour < 6 or hour >= 23:
        return 0.0
    peak = hour in (7, 8, 19, 20)
    return rng.choice([0, 0, 0, 5, 12]) * (3 if peak else 1)


def replay(
    hours: float,
    draw: Callable[[float, int], float],
    *,
    backward: Callable[[float], float] | None = None,
    flags: Callable[[float], dict[str, bool]] | None = None,
) -> Iterator[Reading]:
    volume = 123.0
    back = 0.0
    for step in range(int(hours * 3600 / STEP_S) + 1):
        t = START + step * STEP_S * NS
        h = (step * STEP_S / 3600.0) % 24
        volume += draw(h, step) / 1000.0
        yield Reading("wm", "flat1.volume", t, round(volume, 4), "good", "m3")
        if backward is not None:
            back += backward(h) / 1000.0
            yield Reading("wm", "flat1.volume_backward", t, round(back, 4), "good", "m3")
        if flags is not None:
            for name, on in flags(step * STEP_S / 3600.0).items():
                yield Reading("wm", f"flat1.alarm.{name}", t, on, "good")


def events(readings: Iterator[Reading], **cfg: Any) -> list[Event]:
    processor = MeterProcessor([MeterGroupConfig(name="block-a", device="wm", **cfg)])
    out: list[Event] = []
    for r in readings:
        out += processor.handle(r)
    return out


def kinds(evs: list[Event]) -> list[tuple[str, str]]:
    return [(e.kind, e.detail["state"]) for e in evs]


def test_ordinary_household_raises_nothing() -> None:
    rng = random.Random(1)
    assert events(replay(72, lambda h, _: household(rng, h)), no_use_hours=12) == []


def test_leak_behind_the_meter_is_continuous_flow_and_clears_when_fixed() -> None:
    rng = random.Random(2)
    leak_until_h = 60.0

    def draw(h: float, step: int) -> float:
        leak = 8.0 * STEP_S / 3600 if step * STEP_S / 3600 < leak_until_h else 0.0  # 8 l/h dripping
        return household(rng, h) + leak

    evs = events(replay(72.1, draw))  # to 72:05: the 72:00 reading is used when the next one confirms it
    assert kinds(evs) == [("meter_continuous_flow", "start"), ("meter_continuous_flow", "clear")]
    start, clear = evs
    assert start.ts_ns == START + 24 * 3600 * NS  # after 24 hours with flow in every one
    assert start.detail["min_litres_per_hour"] == pytest.approx(8.0, abs=0.5)
    assert (start.severity, start.source, start.detail["group"]) == ("alarm", "flat1", "block-a")
    assert clear.ts_ns == START + 72 * 3600 * NS  # the first hour without use after the repair: 23-24 h


def test_backflow_register_growth() -> None:
    evs = events(
        replay(30, lambda h, _: 0.0, backward=lambda h: 1.0 if 10 <= h < 11 else 0.0),
        backflow_l=5.0, backflow_hours=6,
    )  # fmt: skip
    assert kinds(evs) == [("meter_backflow", "start"), ("meter_backflow", "clear")]
    assert evs[0].detail["litres"] >= 5.0


def test_night_use_is_judged_when_the_window_ends() -> None:
    rng = random.Random(3)
    evs = events(
        replay(72, lambda h, step: household(rng, h) + (10.0 if 2 < h <= 4 and step < 288 else 0.0)),
        night="02:00-04:00", night_l=20.0,
    )  # fmt: skip
    assert kinds(evs) == [("meter_night_use", "start"), ("meter_night_use", "clear")]
    assert evs[0].ts_ns == START + 4 * 3600 * NS
    assert evs[0].detail["litres"] == pytest.approx(240.0)


def test_watch_over_no_use_in_the_expected_hours_and_use_again() -> None:
    rng = random.Random(4)

    def draw(h: float, step: int) -> float:
        day = step * STEP_S // 86400
        return 0.0 if day == 1 else household(rng, h)  # nothing drawn all of the second day

    evs = events(replay(60, draw), no_use_hours=10, expected="06:00-23:00", timezone="UTC")
    assert kinds(evs) == [("meter_no_use", "start"), ("meter_no_use", "clear")]
    assert evs[0].ts_ns == START + (24 + 16) * 3600 * NS  # 06:00-16:00 of day two without use
    assert evs[0].detail["hours_without_use"] == 10


def test_a_silent_meter_is_no_leak_and_no_watch_over() -> None:
    def silent_half(readings: Iterator[Reading]) -> Iterator[Reading]:
        for r in readings:
            if not (20 * 3600 * NS <= r.ts_ns - START < 44 * 3600 * NS):
                yield r

    drip = 8.0 * STEP_S / 3600
    assert events(silent_half(replay(48, lambda h, _: drip)), no_use_hours=4) == []


def test_meter_flags_start_and_clear_once() -> None:
    def flags(hour: float) -> dict[str, bool]:
        return {"tamper": 1 <= hour < 2, "battery": False}

    evs = events(replay(3, lambda h, _: 0.0, flags=flags))
    assert kinds(evs) == [("meter_alarm", "start"), ("meter_alarm", "clear")]
    assert evs[0].detail["alarm"] == "tamper"
    assert (evs[0].severity, evs[1].severity) == ("alarm", "info")


def test_a_meter_flag_on_across_a_restart_is_not_started_twice_and_its_clear_still_comes(
    tmp_path: Path,
) -> None:
    group = MeterGroupConfig(name="block-a", device="wm")

    def tamper(on: bool, minute: int) -> Reading:
        return Reading("wm", "flat1.alarm.tamper", START + minute * 60 * NS, on)

    assert kinds(MeterProcessor([group], tmp_path).handle(tamper(True, 0))) == [("meter_alarm", "start")]
    restarted = MeterProcessor([group], tmp_path)  # the agent restarted; the meter still says tamper
    assert restarted.handle(tamper(True, 5)) == []
    assert restarted.health().groups["block-a"].active == ["flat1 tamper"]
    # Restarted again, and the flag went off while the agent was down: the centre gets its clear.
    assert kinds(MeterProcessor([group], tmp_path).handle(tamper(False, 10))) == [("meter_alarm", "clear")]
    assert MeterProcessor([group], tmp_path).handle(tamper(False, 15)) == []


def test_an_unreadable_record_of_meter_flags_is_started_afresh(tmp_path: Path) -> None:
    (tmp_path / "meter").mkdir()
    (tmp_path / "meter" / "alarms.json").write_bytes(b"\xff{ torn by a power cut")
    processor = MeterProcessor([MeterGroupConfig(name="g", device="wm")], tmp_path)
    leak = Reading("wm", "flat1.alarm.leak", START, True)
    assert kinds(processor.handle(leak)) == [("meter_alarm", "start")]


def test_readings_of_other_devices_and_meters_are_ignored() -> None:
    processor = MeterProcessor([MeterGroupConfig(name="g", device="wm", meters=["flat2"])])
    assert processor.handle(Reading("other", "flat2.alarm.leak", START, True)) == []
    assert processor.handle(Reading("wm", "flat1.alarm.leak", START, True)) == []
    assert len(processor.handle(Reading("wm", "flat2.alarm.leak", START, True))) == 1
    assert processor.health().groups["g"].active == ["flat2 leak"]


def test_config_checks() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        MeterGroupConfig(name="g", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="should match pattern"):
        MeterGroupConfig(name="g", night="2-4")
    groups = [MeterGroupConfig(name="g", device="plc"), MeterGroupConfig(name="g", device="nope")]
    problems = MeterFactory.check_sections(groups, {"plc": "modbus_tcp", "wm": "wmbus"})
    messages = [p.message for p in problems]
    assert any("used twice" in m for m in messages)
    assert any("is a modbus_tcp, not a meter bus" in m for m in messages)
    assert any("no device 'nope' (meter buses: wm)" in m for m in messages)
    assert MeterFactory.from_config(groups[:1], ProcessorContext(state_dir=None)).processors()  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_register_read_as_infinite_or_nan_is_skipped_and_counted(value: float) -> None:
    # Before, one infinite reading at 03:10 made the night's use infinite: a meter_night_use
    # start with "litres": Infinity, which is not JSON; NaN made the hours around it NaN.
    rng = random.Random(4)
    glitch = START + (48 + 3) * 3600 * NS + 600 * NS
    processor = MeterProcessor([MeterGroupConfig(name="block-a", device="wm", night="02:00-04:00")])
    evs: list[Event] = []
    for r in replay(72, lambda h, _: household(rng, h)):
        evs += processor.handle(dataclasses.replace(r, value=value) if r.ts_ns == glitch else r)
    assert evs == []
    group = processor.health().groups["block-a"]
    assert group.skipped == 1
    assert group.readings == 72 * 12
    assert processor.health().status_lines() == [
        "block-a: 1 meters, 0 events, active: none, 1 readings skipped"
    ]
    use = processor.groups[0].meters["flat1"]
    assert all(math.isfinite(v) for v in use.hours.values())


# -- a register misread for one reading ----------------------------------------------------------

SPIKE_AT = START + (48 + 3) * 3600 * NS + 600 * NS  # 03:10 of the third night, inside 02:00-04:00


def spiked(
    readings: Iterator[Reading], at: int, factor: float, tag: str = "flat1.volume"
) -> Iterator[Reading]:
    for r in readings:
        if r.ts_ns == at and r.tag == tag:
            assert isinstance(r.value, float)
            yield dataclasses.replace(r, value=r.value * factor)
        else:
            yield r


def run_meter(readings: Iterator[Reading], **cfg: Any) -> tuple[MeterProcessor, list[Event]]:
    processor = MeterProcessor([MeterGroupConfig(name="block-a", device="wm", **cfg)])
    out: list[Event] = []
    for r in readings:
        out += processor.handle(r)
    return processor, out


@pytest.mark.parametrize("factor", [1000.0, 0.001], ids=["up", "down-then-back"])
def test_a_register_spiking_for_one_reading_is_dropped_and_counted(factor: float) -> None:
    # Before: x1000 at 03:10 put 124,229,646 l into that night (a meter_night_use start); /1000 read as
    # a meter exchanged, then the way back up as 124,229.6 l drawn in five minutes (the same start).
    def draw(h: float, _: int) -> float:
        return household(random.Random(int(h * 12)), h)

    clean, _ = run_meter(replay(72.5, draw))
    processor, evs = run_meter(spiked(replay(72.5, draw), SPIKE_AT, factor))
    assert evs == []
    group = processor.health().groups["block-a"]
    assert (group.register_glitches, group.register_resets) == (1, 0)
    assert group.readings == 871  # 72.5 hours every five minutes, the glitch among them
    assert processor.health().status_lines() == [
        "block-a: 1 meters, 0 events, active: none, 1 register glitches"
    ]
    use, before = processor.groups[0].meters["flat1"], clean.groups[0].meters["flat1"]
    assert use.hours == pytest.approx(before.hours)  # the night (and every other hour) as without it


def test_a_spike_during_real_night_flow_does_not_change_the_litres() -> None:
    rng = random.Random(3)

    def draw(h: float, step: int) -> float:
        return household(rng, h) + (10.0 if 2 < h <= 4 and 288 <= step < 576 else 0.0)

    _, evs = run_meter(spiked(replay(72, draw), START + (24 + 3) * 3600 * NS, 1000.0))
    assert kinds(evs) == [("meter_night_use", "start"), ("meter_night_use", "clear")]
    assert evs[0].ts_ns == START + (24 + 4) * 3600 * NS
    assert evs[0].detail["litres"] == pytest.approx(240.0)


def test_a_meter_exchanged_is_one_reset_and_use_is_counted_again_after_it() -> None:
    exchanged = START + 36 * 3600 * NS  # noon of the second day: the new meter starts at 0.0

    def readings() -> Iterator[Reading]:
        for r in replay(72, lambda h, _: 8.0 * STEP_S / 3600):  # 8 l/h, continuous
            assert isinstance(r.value, float)
            yield dataclasses.replace(r, value=round(r.value - 123.3, 4)) if r.ts_ns >= exchanged else r

    processor, evs = run_meter(readings())
    group = processor.health().groups["block-a"]
    assert (group.register_glitches, group.register_resets) == (0, 1)
    assert processor.health().status_lines() == [
        "block-a: 1 meters, 1 events, active: flat1 continuous_flow, 1 register resets"
    ]
    # The continuous flow starts after 24 hours, not again after the exchange (whose hour is unknown).
    assert kinds(evs) == [("meter_continuous_flow", "start")]
    use = processor.groups[0].meters["flat1"]
    hour0 = START // (3600 * NS)
    assert use.hours[hour0 + 35] == pytest.approx(8.0 * 11 / 12, abs=0.1)  # 5 min across it: unknown
    assert use.hours[hour0 + 36] == pytest.approx(8.0, abs=0.1)  # counted again on the new meter


def test_a_real_large_draw_is_use() -> None:
    # 500 l in the five minutes before 03:10 (a burst pipe behind the meter), and the register stays.
    _, evs = run_meter(replay(30, lambda h, step: 500.0 if step == 3 * 12 + 2 else 0.0))
    assert kinds(evs) == [("meter_night_use", "start"), ("meter_night_use", "clear")]  # the next night
    assert evs[0].detail["litres"] == pytest.approx(500.0)


def test_a_backward_register_spiking_for_one_reading_is_no_backflow() -> None:
    # Before: the x1000 reading was 123,000 l of backflow (a meter_backflow start, cleared a day later).
    readings = replay(30, lambda h, _: 0.0, backward=lambda h: 0.1 if h < 1 else 0.0)
    processor, evs = run_meter(spiked(readings, START + 10 * 3600 * NS, 1000.0, "flat1.volume_backward"))
    assert evs == []
    assert processor.health().groups["block-a"].register_glitches == 1
