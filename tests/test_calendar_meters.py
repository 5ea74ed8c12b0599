"""A calendar walk of the meters' night use (`models/meter/consumption.py`): a household's total-volume
register read every five minutes, as the wireless and wired M-Bus drivers give it, across the nights
whose clocks change (Europe/Rome, and Lord Howe Island's half-hour change), New Year's night and the
leap day. A night is the local date its window began on: the spring-forward night's one hour was
added to the night before's litres (a false `meter_night_use`), and the fall-back night's first
02:00 hour was dropped at the second (a real one missed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.testing import write_agent_config
from water_edge.agent.cli import main
from water_edge.core.reading import Event, Reading
from water_edge.drivers.mbus.values import date as mbus_date
from water_edge.models.meter.config import MeterGroupConfig
from water_edge.models.meter.processor import MeterProcessor

NS = 1_000_000_000
STEP_S = 300  # a reading every five minutes


def register(
    zone: str, start: str, days: int, litres_per_hour: Callable[[datetime], float]
) -> Iterator[Reading]:
    """flat1's total-volume register (m3) from local `start`, drawing `litres_per_hour` at each
    local wall-clock time."""
    tz = ZoneInfo(zone)
    t0 = int(datetime.fromisoformat(start).replace(tzinfo=tz).timestamp())
    volume = 123.0
    for t in range(t0, t0 + days * 86400, STEP_S):
        volume += litres_per_hour(datetime.fromtimestamp(t, tz)) * STEP_S / 3600 / 1000
        yield Reading("wm", "flat1.volume", t * NS, round(volume, 6), "good", "m3")


def night_use(zone: str, readings: Iterator[Reading]) -> list[tuple[str, str, float]]:
    """(local time of the judgement, start/clear, litres) of each `meter_night_use`."""
    processor = MeterProcessor([MeterGroupConfig(name="block-a", device="wm", timezone=zone, night_l=20)])
    events: list[Event] = []
    for r in readings:
        events += processor.handle(r)
    tz = ZoneInfo(zone)
    return [
        (datetime.fromtimestamp(e.ts_ns / NS, tz).isoformat(), e.detail["state"], e.detail["litres"])
        for e in events
        if e.kind == "meter_night_use"
    ]


def steady(litres: float) -> Callable[[datetime], float]:
    """`litres` an hour from midnight to 06:00 (a dripping cistern), nothing by day."""
    return lambda local: litres if local.hour < 6 else 0.0


@pytest.mark.parametrize(
    ("zone", "start"),
    [("Europe/Rome", "2027-03-25T12:00"), ("Australia/Lord_Howe", "2026-10-01T12:00")],
    ids=["Rome 2027-03-28", "Lord Howe 2026-10-04 (half an hour)"],
)
def test_the_spring_forward_night_holds_its_own_litres_not_the_night_befores(zone: str, start: str) -> None:
    # 8 l/h: 16 l in an ordinary 02:00-04:00 night, under night_l 20; the short night holds less.
    # Before, its hour's 8 l were added to the night before's 16: a `meter_night_use` of 24 l.
    assert night_use(zone, register(zone, start, 6, steady(8.0))) == []


def test_a_night_whose_end_the_clocks_skip_is_judged() -> None:
    # A 01:00-03:00 window on the spring-forward night: after its 01:00 hour comes 03:00, already
    # outside. Before, that night was never judged (its end was looked for at 02:00), and its 30 l
    # were forgotten when the next night began.
    def draw(local: datetime) -> float:
        return 30.0 if local.date() == date(2027, 3, 28) and local.hour == 1 else 0.0

    processor = MeterProcessor(
        [
            MeterGroupConfig(
                name="block-a", device="wm", timezone="Europe/Rome", night="01:00-03:00", night_l=20
            )
        ]
    )
    events = [e for r in register("Europe/Rome", "2027-03-26T12:00", 4, draw) for e in processor.handle(r)]
    rome = ZoneInfo("Europe/Rome")
    assert [(datetime.fromtimestamp(e.ts_ns / NS, rome).isoformat(), e.detail["state"]) for e in events] == [
        ("2027-03-28T03:00:00+02:00", "start"),
        ("2027-03-29T03:00:00+02:00", "clear"),
    ]


def test_the_fall_back_night_counts_both_of_its_02_00_hours() -> None:
    # 12 l/h drawn in every 02:00 hour: 12 l a night, 24 l in the night that has two of them (both
    # are use that passed the meter). Before, the second 02:00 started the night again: 12 l.
    readings = register("Europe/Rome", "2026-10-21T12:00", 6, lambda t: 12.0 if t.hour == 2 else 0.0)
    (start, clear) = night_use("Europe/Rome", readings)
    assert start[:2] == ("2026-10-25T04:00:00+01:00", "start")
    assert start[2] == pytest.approx(24.0, abs=1.5)  # the first reading of a pass falls a step late
    assert clear[:2] == ("2026-10-26T04:00:00+01:00", "clear")
    assert clear[2] == pytest.approx(12.0, abs=1.5)


@pytest.mark.parametrize(
    ("zone", "start", "night"),
    [
        ("Europe/Rome", "2026-12-29T12:00", "2027-01-01"),  # New Year's night
        ("Europe/Rome", "2028-02-26T12:00", "2028-02-29"),  # the leap day
        ("UTC", "2028-02-26T12:00", "2028-02-29"),
        ("America/Santiago", "2027-09-02T12:00", "2027-09-05"),  # its clocks change at midnight
    ],
)
def test_a_night_of_use_is_judged_once_on_its_own_date(zone: str, start: str, night: str) -> None:
    def draw(local: datetime) -> float:
        return 120.0 if local.date().isoformat() == night and 2 <= local.hour < 4 else 2.0

    # 240 l that night, 4 l on the others: one start at its end, one clear at the next night's end.
    assert [(when[:16], state) for when, state, _ in night_use(zone, register(zone, start, 6, draw))] == [
        (f"{night}T04:00", "start"),
        (f"{date.fromisoformat(night) + timedelta(days=1)}T04:00", "clear"),
    ]


def test_the_groups_zone_is_used_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The night window is read in the group's `timezone` (default UTC), never in the machine's:
    # a gateway on UTC with a group in Rome, and a gateway on Rome time with a group left in UTC.
    def draw(local: datetime) -> float:
        return 120.0 if local.date().isoformat() == "2027-03-27" and 2 <= local.hour < 4 else 0.0

    for machine in ("UTC", "Europe/Rome"):
        monkeypatch.setenv("TZ", machine)
        rome = night_use("Europe/Rome", register("Europe/Rome", "2027-03-25T12:00", 4, draw))
        assert [(w, s) for w, s, _ in rome] == [
            ("2027-03-27T04:00:00+01:00", "start"),
            ("2027-03-28T04:00:00+02:00", "clear"),
        ]
        # 02:00-04:00 Rome time is 01:00-03:00 UTC: half of it in a UTC night window, 120 l: a start.
        utc = night_use("UTC", register("Europe/Rome", "2027-03-25T12:00", 4, draw))
        assert [(w, s) for w, s, _ in utc] == [
            ("2027-03-27T04:00:00+00:00", "start"),
            ("2027-03-28T04:00:00+00:00", "clear"),
        ]


DEVICES = """
[[devices]]
name = "plc1"
kind = "modbus_tcp"
host = "127.0.0.1"
tags = [{ name = "flow", address = 0, type = "float32", unit = "m3/h" }]
"""


def test_check_config_warns_of_a_group_read_in_utc_on_a_machine_in_another_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gateway on Rome time with a group that names no zone: its nights are 02:00-04:00 UTC, an
    # hour or two after the leak and flow-leak models' (which follow the machine), and nothing said so.
    (tmp_path / "unset").mkdir()
    (tmp_path / "named").mkdir()
    unset = write_agent_config(tmp_path / "unset", devices=DEVICES, models={"meter": [{"name": "block-a"}]})
    monkeypatch.setenv("TZ", "Europe/Rome")
    assert main(["check-config", "-c", str(unset)]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: {unset}: models.meter[0].timezone: not set: the night and expected windows are read "
        "in UTC, not in this machine's zone (TZ=Europe/Rome)"
    ) in err
    named = {
        "meter": [{"name": "block-a", "timezone": "UTC"}, {"name": "block-b", "timezone": "Europe/Rome"}]
    }
    assert (
        main(
            ["check-config", "-c", str(write_agent_config(tmp_path / "named", devices=DEVICES, models=named))]
        )
        == 0
    )
    assert "timezone" not in capsys.readouterr().err
    monkeypatch.setenv("TZ", "UTC")  # the default is the machine's own zone: nothing to say
    assert main(["check-config", "-c", str(unset)]) == 0
    assert "timezone" not in capsys.readouterr().err


def _type_g(year: int, month: int, day: int) -> bytes:
    """An M-Bus type G date (EN 13757-3 annex A): day and the year's low 3 bits, month and its high 4."""
    y = year % 100
    return bytes([(y & 0x07) << 5 | day, (y >> 3) << 4 | month])


def _type_f(year: int, month: int, day: int, hour: int, minute: int) -> bytes:
    """Type F: minute, hour, then a type G date."""
    return bytes([minute, hour]) + _type_g(year, month, day)


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (_type_g(2028, 2, 29), ("2028-02-29", None)),  # the leap day
        (_type_g(2000, 2, 29), ("2000-02-29", None)),  # a century's leap day (400 years)
        (_type_f(2028, 2, 29, 23, 59), ("2028-02-29T23:59", None)),
        (_type_f(2026, 12, 31, 23, 59), ("2026-12-31T23:59", None)),  # New Year's Eve ...
        (_type_f(2027, 1, 1, 0, 0), ("2027-01-01T00:00", None)),  # ... and the year after
        (_type_g(2027, 2, 29), (None, "invalid date")),  # no leap day in 2027
        (_type_g(2027, 4, 31), (None, "invalid date")),
        (_type_f(2027, 2, 29, 12, 0), (None, "invalid date/time")),
        (_type_f(2026, 11, 31, 12, 0), (None, "invalid date/time")),
    ],
    ids=[
        "2028-02-29",
        "2000-02-29",
        "F 2028-02-29",
        "F 2026-12-31",
        "F 2027-01-01",
        "2027-02-29",
        "2027-04-31",
        "F 2027-02-29",
        "F 2026-11-31",
    ],
)
def test_a_meters_date_is_one_the_calendar_holds(raw: bytes, read: tuple[str | None, str | None]) -> None:
    # A meter's billing date or clock (the M-Bus decode both buses share): any day up to 31 in any
    # month read as a date, 29 February 2027 and 31 April too.
    value, error, _ = mbus_date(raw)
    assert (value, error) == read
