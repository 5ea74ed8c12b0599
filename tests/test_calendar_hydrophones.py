"""A calendar walk of the hydrophones' nights (`models/leak/processor.py`): a hydrophone on a quiet
main heard through the default 02:00-04:00 window in Europe/Rome on the fall-back night (2026-10-25:
02:00-03:00 twice), the spring-forward night (2027-03-28: 02:00-03:00 skipped) and the leap day.
Each night is stored once under its own date, its 30-minute checks numbered from the window's real
start without a repeat (six on the long night, two on the short one, each judged as a whole check),
and the baseline counts each of them as one night, as the replay of the stored nights does."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from water_edge.core.reading import Event
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.processor import AudioLeakProcessor
from water_edge.models.leak.replay import replay_sensor
from water_edge.models.leak.store import SensorStore

NS = 1_000_000_000
RATE = 8000
ROME = ZoneInfo("Europe/Rome")
SECTION = LeakModelSection(
    device="hyd", timezone="Europe/Rome", check_minutes=30, baseline_nights=2, classifier_every_s=600
)


@dataclasses.dataclass(frozen=True)
class _Window:
    start_ts_ns: int
    sample_rate: int
    samples: npt.NDArray[np.float32]
    channel_names: tuple[str, ...]


class _NoDriver:
    def add_window_listener(self, callback: object) -> object:
        return lambda: None


def _played(spans: list[tuple[str, str]]) -> AsyncIterator[_Window]:
    """2 s windows of a quiet main's noise from each span's local start to its end (Rome's clock),
    continuous in real time: the fall-back night's repeated hour is played twice."""
    noise = (0.01 * np.random.default_rng(1).standard_normal((RATE * 60, 1))).astype(np.float32)

    async def windows() -> AsyncIterator[_Window]:
        for first, last in spans:
            a = int(datetime.fromisoformat(first).replace(tzinfo=ROME).timestamp())
            b = int(datetime.fromisoformat(last).replace(tzinfo=ROME).timestamp())
            for t in range(a, b, 2):
                i = (t - a) % 30
                yield _Window(t * NS, RATE, noise[i * 2 * RATE : (i + 1) * 2 * RATE], ("A",))

    return windows()


async def test_dst_nights_are_stored_once_each_with_the_checks_that_passed(tmp_path: Path) -> None:
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    processor = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]
    spans = [
        ("2026-10-25T01:59", "2026-10-25T04:01"),  # 3 h 2 min of real time
        ("2027-03-28T01:59", "2027-03-28T04:01"),  # 1 h 2 min
        ("2028-02-29T01:59", "2028-02-29T02:31"),  # its first check, which learns the baseline
    ]
    await processor.consume(_played(spans), emit)
    checks = [
        (c.night, c.index, c.seconds, datetime.fromtimestamp(c.start_ns / NS, ROME).isoformat())
        for c in SensorStore(tmp_path, "hyd.A").checks()
    ]
    assert checks == [
        ("2026-10-25", 0, 1800, "2026-10-25T02:00:00+02:00"),
        ("2026-10-25", 1, 1800, "2026-10-25T02:30:00+02:00"),
        ("2026-10-25", 2, 1800, "2026-10-25T02:00:00+01:00"),  # the same clock time, an hour on
        ("2026-10-25", 3, 1800, "2026-10-25T02:30:00+01:00"),
        ("2026-10-25", 4, 1800, "2026-10-25T03:00:00+01:00"),
        ("2026-10-25", 5, 1800, "2026-10-25T03:30:00+01:00"),
        ("2027-03-28", 0, 1800, "2027-03-28T03:00:00+02:00"),  # the window opens at 03:00 that night
        ("2027-03-28", 1, 1800, "2027-03-28T03:30:00+02:00"),
        ("2028-02-29", 0, 1800, "2028-02-29T02:00:00+01:00"),
    ]
    (learnt,) = [e for e in events if e.kind == "leak_baseline"]
    assert learnt.detail["nights"] == ["2026-10-25", "2027-03-28"]
    assert processor.health().sensors["hyd.A"].nights_heard == 3
    # `edge-agent models score leak --sensor hyd.A` replays them: one line per night, none twice.
    _, replayed = replay_sensor([SECTION], tmp_path, "hyd.A", {})
    assert [(n["night"], n["checks"], n["judged_checks"]) for n in replayed] == [
        ("2026-10-25", 6, 6),
        ("2027-03-28", 2, 2),
        ("2028-02-29", 1, 1),
    ]
