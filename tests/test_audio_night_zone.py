"""A hydrophone's night minimum is taken in the site's zone (`timezone` of the audio device), not only
the machine's: a gateway that keeps UTC, as many are set up, took a Rome site's 02:00-04:00 quiet from
04:00-06:00 local in summer, when the morning's first traffic and water use begin."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.io import wavfile

from tests.support.testing import eventually
from water_edge.core.reading import Reading
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.driver import AudioDriver
from water_edge.drivers.audio.levels import LevelMeter, NightTracker, local_clock
from water_edge.drivers.audio.ring import Chunk
from water_edge.drivers.audio.window import Clock

RATE = 8000
NS = 1_000_000_000


def _noise(seconds: float, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    return (10 ** (dbfs / 20) * rng.standard_normal(round(seconds * RATE))).astype(np.float32)


def test_the_night_minimum_follows_the_configured_zone_across_a_summer_night() -> None:
    """2026-07-01 in Rome (UTC+2): the 02:00-04:00 night is 00:00-02:00 UTC."""
    rng = np.random.default_rng(3)
    midnight_utc = datetime(2026, 7, 1, tzinfo=UTC)
    at = {"01:00 UTC (03:00 Rome)": (1, -50.0), "03:00 UTC (05:00 Rome)": (3, -60.0), "07:00 UTC": (7, -40.0)}

    def night_minimum(tracker: NightTracker) -> float:
        meter = LevelMeter("h", Clock(int(midnight_utc.timestamp() * NS), RATE), ["A"], interval_s=10,
                           bands_hz=[125.0], calibration_db=None, night=tracker)  # fmt: skip
        readings: list[Reading] = []
        for hour, dbfs in at.values():  # 20 s at each hour, at -40 dBFS but for 10 s at `dbfs`
            clip = np.concatenate([_noise(5, -40.0, rng), _noise(10, dbfs, rng), _noise(5, -40.0, rng)])
            readings += meter.feed([Chunk(hour * 3600 * RATE, clip[:, None])])
        (minimum,) = [r for r in readings if r.tag == "A.night_min_dbfs"]
        return cast(float, minimum.value)

    rome = night_minimum(NightTracker("02:00", "04:00", 7, 1, local_clock(ZoneInfo("Europe/Rome"))))
    utc = night_minimum(NightTracker("02:00", "04:00", 7, 1, local_clock(UTC)))
    assert rome == pytest.approx(-50.0, abs=0.5)  # 03:00 in Rome, inside its night
    assert utc == pytest.approx(-60.0, abs=0.5)  # the same window read in UTC: 05:00 in Rome


async def test_an_audio_device_takes_its_night_in_its_timezone_through_the_capture_path(
    tmp_path: Path,
) -> None:
    """The real driver, a WAV file played 500 times faster than real time from now on: the night
    window, in Asia/Kolkata (UTC+5:30), opens 2 to 3 minutes from now for 4 minutes; the recording
    is quieter inside it (minute 5) and quieter still after it (minute 10). On a machine in UTC
    (or any zone not 5:30 ahead), the machine's zone put no second of the recording in the night."""
    zone = ZoneInfo("Asia/Kolkata")
    start = (datetime.now(zone) + timedelta(minutes=3)).replace(second=0, microsecond=0)
    end = start + timedelta(minutes=4)
    rng = np.random.default_rng(4)
    minutes = [_noise(60, -40.0, rng) for _ in range(12)]
    minutes[5][20 * RATE : 30 * RATE] = _noise(10, -55.0, rng)
    minutes[10][20 * RATE : 30 * RATE] = _noise(10, -65.0, rng)
    path = tmp_path / "night.wav"
    wavfile.write(path, RATE, np.concatenate(minutes))
    driver = AudioDriver(
        AudioConfig(
            name="hyd",
            kind="audio",
            source="file",
            path=path,
            playback_speed=500,
            buffer_s=600,
            night_start=start.strftime("%H:%M"),
            night_end=end.strftime("%H:%M"),
            timezone="Asia/Kolkata",
        )
    )
    await driver.open()
    got: list[Reading] = []

    async def consume() -> None:
        async for batch in driver.stream():
            got.extend(batch)

    task = asyncio.create_task(consume())
    try:
        await eventually(
            lambda: any(r.tag == "A.night_min_dbfs" for r in got), 60, lambda: f"{len(got)} readings"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.aclose()
    (minimum,) = [r for r in got if r.tag == "A.night_min_dbfs"]
    assert cast(float, minimum.value) == pytest.approx(-55.0, abs=1.0)


def test_an_unknown_zone_is_refused_naming_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Europe/Atlantis'"):
        AudioConfig(
            name="hyd", kind="audio", source="file", path=tmp_path / "x.wav", timezone="Europe/Atlantis"
        )
