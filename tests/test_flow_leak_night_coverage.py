"""The gateway's rule for a night too thinly sampled to judge, shared with `score flow-leak`
(`mnf.minimum_night_flow`): each sample covers the step between the night's samples, at most the
stream's own interval. A lone sample used to count as the whole window."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from water_edge.core.reading import Event, Reading
from water_edge.models.flow_leak.config import FlowLeakSection
from water_edge.models.flow_leak.mnf import minimum_night_flow
from water_edge.models.flow_leak.processor import FlowLeakProcessor

START = datetime(2024, 3, 1)


def _readings(days: int, every_min: int, gap: tuple[datetime, datetime] | None = None) -> list[Reading]:
    """A district's inflow read every `every_min` minutes (40 m3/h at night), none within `gap`."""
    out = []
    for i in range(days * 1440 // every_min):
        t = START + timedelta(minutes=every_min * i)
        if gap is not None and gap[0] <= t < gap[1]:
            continue
        h = t.hour + t.minute / 60
        q = 40 + (0 if 1 <= h < 5 else 60) + 0.5 * math.sin(i * 1.7)
        out.append(Reading("plc", "inflow", int(t.replace(tzinfo=UTC).timestamp() * 1e9), q))
    return out


async def _nights(section: FlowLeakSection, readings: list[Reading], where: Path) -> dict[str, Any]:
    """night -> its night flow, from the processor's `night_flow` events."""
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    async def feed() -> AsyncIterator[tuple[str, list[Reading]]]:
        yield ("plc", readings)

    await FlowLeakProcessor([section], where).run(feed(), emit)
    return {e.detail["night"]: e.detail["night_flow_m3h"] for e in events if e.kind == "night_flow"}


async def test_a_night_with_one_sample_of_a_15_minute_stream_is_not_judged_and_an_hourly_one_is(
    tmp_path: Path,
) -> None:
    # Readings every 15 min; on 5 March none from 02:15 to 04:00: the night has its 02:00 sample
    # alone, which was that night's MNF as if it covered the 2 hours.
    section = FlowLeakSection(
        name="dma", inflow=["inflow"], timezone="UTC", sample_s=900, stale_after_s=1800, baseline_nights=3
    )
    gap = (datetime(2024, 3, 5, 2, 15), datetime(2024, 3, 5, 4))
    nights = await _nights(section, _readings(8, 15, gap), tmp_path / "gap")
    assert nights["2024-03-05"] is None
    assert all(v == pytest.approx(40, abs=1) for n, v in nights.items() if n != "2024-03-05")
    # A meter read once an hour at the default sampling (1 min) gives one sample an hour, and one
    # in a one-hour window: the stream's interval is the readings', and that sample covers its hour.
    hourly = FlowLeakSection(
        name="dma", inflow=["inflow"], timezone="UTC", night_end="03:00", baseline_nights=3
    )
    nights = await _nights(hourly, _readings(8, 60), tmp_path / "hourly")
    assert len(nights) >= 7
    assert all(v == pytest.approx(40, abs=1) for v in nights.values())


def test_a_lone_sample_covers_the_interval_it_stands_for_and_none_unknown() -> None:
    two_hours = 120.0
    assert minimum_night_flow([0], [40.0], window_min=two_hours) is None
    assert minimum_night_flow([0], [40.0], window_min=two_hours, interval_s=900) is None
    assert minimum_night_flow([0], [40.0], window_min=two_hours, interval_s=3600) == 40.0
    apart = [0, 105 * 60 * 10**9]  # 02:00 and 03:45 of a 15-min stream: 30 minutes, not 210
    assert minimum_night_flow(apart, [40.0, 41.0], window_min=two_hours) == 40.0
    assert minimum_night_flow(apart, [40.0, 41.0], window_min=two_hours, interval_s=900) is None


def test_the_night_flow_is_the_lowest_quarter_hour_average_not_the_lowest_sample_or_the_mean() -> None:
    # Two hours read every 5 minutes: 40 m3/h, a quiet quarter-hour at 30, and one low sample (16)
    # that a quarter-hour's average lifts to 32.
    ts = [i * 300 * 10**9 for i in range(24)]
    flow = [40.0] * 24
    flow[5:8] = [30.0, 30.0, 30.0]
    flow[15] = 16.0
    assert minimum_night_flow(ts, flow, window_min=120.0) == pytest.approx(30.0)
    assert minimum_night_flow(ts, flow, window_min=120.0, average_minutes=5.0) == pytest.approx(16.0)
    # An average as long as the night is the night's mean.
    mean = sum(flow) / len(flow)
    assert minimum_night_flow(ts, flow, window_min=120.0, average_minutes=120.0) == pytest.approx(mean)
