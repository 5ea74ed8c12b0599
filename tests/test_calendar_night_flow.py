"""A calendar walk of the districts' night flow: the gateway's `FlowLeakProcessor` and `edge-agent models
score flow-leak` on a district read every 15 minutes on Rome's clock (40 m3/h at night) across the
spring-forward night (2027-03-28: 02:00-03:00 skipped, inside the default 02:00-04:00 window), the
fall-back night (2026-10-25: 02:00-03:00 twice), New Year (2026-12-31 -> 2027-01-01) and the leap
day (2028-02-29). Every night comes once, named by its own date, none missing; and a night is too
thinly sampled to judge by the time its window really lasted: the spring-forward night's one hour
used to be measured against two, so that one missing sample of its four left it unjudged, while an
ordinary night may miss three of its eight."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.cli import edge_agent
from water_edge.core.local_zone import zone
from water_edge.core.reading import Event, Reading
from water_edge.models.flow_leak.config import FlowLeakSection
from water_edge.models.flow_leak.processor import FlowLeakProcessor
from water_edge.models.nightwindow import NightWindow

ROME = ZoneInfo("Europe/Rome")
SPRING, AUTUMN = date(2027, 3, 28), date(2026, 10, 25)
WALKS = {  # local noon before the first night, and the nights the walk must give
    "spring": ("2027-03-24T12:00", [date(2027, 3, 25) + timedelta(days=i) for i in range(8)]),
    "autumn": ("2026-10-21T12:00", [date(2026, 10, 22) + timedelta(days=i) for i in range(8)]),
    "new year": ("2026-12-28T12:00", [date(2026, 12, 29) + timedelta(days=i) for i in range(8)]),
    "leap day": ("2028-02-25T12:00", [date(2028, 2, 26) + timedelta(days=i) for i in range(8)]),
}
# The spring-forward night's 03:15 sample is lost (one of its four); an ordinary night loses three of eight.
LOST = {datetime(2027, 3, 28, 3, 15), *(datetime(2027, 3, 26, h, m) for h, m in ((2, 15), (2, 45), (3, 15)))}


def district(start: str, days: int = 8) -> list[tuple[datetime, float]]:
    """(UTC instant, inflow m3/h) every 15 min from Rome's local `start`: 40 m3/h between 01:00 and
    05:00 on the wall clock, 100 by day; the samples of `LOST` missing."""
    t0 = datetime.fromisoformat(start).replace(tzinfo=ROME).astimezone(UTC)
    out = []
    for i in range(days * 96):
        t = t0 + timedelta(minutes=15 * i)
        local = t.astimezone(ROME)
        if local.replace(tzinfo=None) in LOST:
            continue
        q = 40 + (0 if 1 <= local.hour < 5 else 60) + 0.5 * math.sin(i * 1.7)
        out.append((t, q))
    return out


async def gateway_nights(start: str, where: Path) -> list[tuple[str, float | None]]:
    """(night, night_flow_m3h) of each `night_flow` event the gateway's processor gives."""
    section = FlowLeakSection(
        name="dma",
        inflow=["inflow"],
        timezone="Europe/Rome",
        sample_s=900,
        stale_after_s=1800,
        baseline_nights=3,
    )
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    async def feed() -> AsyncIterator[tuple[str, list[Reading]]]:
        yield ("plc", [Reading("plc", "inflow", int(t.timestamp() * 1e9), q) for t, q in district(start)])

    await FlowLeakProcessor([section], where).run(feed(), emit)
    return [(e.detail["night"], e.detail["night_flow_m3h"]) for e in events if e.kind == "night_flow"]


@pytest.mark.parametrize("walk", WALKS)
async def test_the_gateway_gives_each_night_once_on_its_date_and_judges_the_short_one(
    walk: str, tmp_path: Path
) -> None:
    start, want = WALKS[walk]
    nights = await gateway_nights(start, tmp_path)
    assert [n for n, _ in nights] == [d.isoformat() for d in want]
    for night, flow in nights:
        assert flow == pytest.approx(40, abs=1), night  # judged: the short night with 3 of its 4 samples


@pytest.mark.parametrize("walk", WALKS)
def test_score_flow_leak_prints_each_night_once_on_its_date_and_judges_the_short_one(
    walk: str, tmp_path: Path
) -> None:
    # An export stamped with its offsets (the autumn's repeated hour is +02:00, then +01:00).
    start, want = WALKS[walk]
    path = tmp_path / "district.csv"
    rows = (f"{t.astimezone(ROME).isoformat()},{q:.3f}" for t, q in district(start))
    path.write_text("time,inflow\n" + "\n".join(rows) + "\n", encoding="utf-8")
    res = edge_agent(
        "models", "score", "flow-leak", "--csv", str(path), "--flow", "inflow", "--calibrate-days", "3",
        "--timezone", "Europe/Rome",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows_out = [line.split(",") for line in res.stdout.splitlines()[1:]]
    assert [r[0] for r in rows_out] == [d.isoformat() for d in want]
    for row in rows_out:
        assert float(row[1]) == pytest.approx(40, abs=1), row


@pytest.mark.parametrize(
    ("tz", "window", "night", "minutes"),
    [
        ("Europe/Rome", "02:00-04:00", SPRING, 60),
        ("Europe/Rome", "02:00-04:00", AUTUMN, 180),
        ("Europe/Rome", "02:00-04:00", date(2026, 12, 31), 120),
        ("Europe/Rome", "23:00-01:00", date(2026, 12, 31), 120),  # across New Year
        ("UTC", "02:00-04:00", date(2028, 2, 29), 120),
        ("Europe/Rome", "01:00-02:30", SPRING, 60),  # its end is in the skipped hour
        ("Europe/Rome", "02:15-02:45", SPRING, 0),  # all of it skipped: that night never comes
        ("Europe/Rome", "02:30-03:00", AUTUMN, 60),  # twice, an hour apart
        ("America/Santiago", "23:00-01:00", date(2027, 4, 3), 180),  # 24:00 -> 23:00
        ("America/Santiago", "23:00-01:00", date(2027, 9, 4), 60),  # 24:00 -> 01:00
        ("Australia/Lord_Howe", "01:00-03:00", date(2027, 4, 4), 150),  # 02:00 -> 01:30
        ("Australia/Lord_Howe", "01:00-03:00", date(2026, 10, 4), 90),  # 02:00 -> 02:30
    ],
)
def test_a_nights_window_lasts_the_time_that_passed_in_it(
    tz: str, window: str, night: date, minutes: int
) -> None:
    w = NightWindow.parse(window, zone(tz))
    assert w.minutes_on(night) == minutes
    # ... which is the minutes of local time `night_of` gives that night.
    t0 = int(datetime.combine(night, datetime.min.time(), UTC).timestamp()) - 86400
    assert sum(1 for t in range(t0, t0 + 3 * 86400, 60) if w.night_of(t * 10**9) == night) == minutes


@pytest.mark.parametrize("walk", ["autumn", "spring"])
def test_score_burst_prints_each_slot_once_and_the_repeated_hour_with_its_offsets(
    walk: str, tmp_path: Path
) -> None:
    # The fall-back night's 02:00-03:00 passes twice: eight 15-minute slots, which used to be
    # printed as two rows of each of 02:00, 02:15, 02:30 and 02:45.
    start, _ = WALKS[walk]
    path = tmp_path / "district.csv"
    rows = (f"{t.astimezone(ROME).isoformat()},{q:.3f}" for t, q in district(start))
    path.write_text("time,inflow\n" + "\n".join(rows) + "\n", encoding="utf-8")
    res = edge_agent(
        "models", "score", "burst", "--csv", str(path), "--flow", "inflow", "--timezone", "Europe/Rome"
    )
    assert res.returncode == 0, res.stderr
    times = [line.split(",")[0] for line in res.stdout.splitlines()[1:]]
    assert len(times) == len(set(times))
    night = (AUTUMN if walk == "autumn" else SPRING).isoformat()
    around = [t for t in times if t.startswith(night) and "01:45" <= t[11:16] <= "03:00"]
    if walk == "autumn":
        quarters = ("02:00", "02:15", "02:30", "02:45")
        assert around == [
            f"{night} 01:45",
            *(f"{night} {q}+02:00" for q in quarters),
            *(f"{night} {q}+01:00" for q in quarters),
            f"{night} 03:00",
        ]
    else:  # the skipped hour has no slot; and no time carries an offset
        assert around == [f"{night} 01:45", f"{night} 03:00"]
        assert all(len(t) == 16 for t in times)
