"""A flood from outside through a real driver: forged wireless M-Bus telegrams sent to the simulated
USB stick on a pseudo-terminal. The log holds the guard's budget of `wmbus.telegram_refused` lines
and the count of the rest; the driver's health counts every telegram refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from tests.support.testing import eventually
from tests.support.wmbus_air import stick_config
from water_edge.core import logs
from water_edge.core.log_flood import DEFAULT_BURST, SUMMARY_EVENT
from water_edge.drivers.wmbus import driver as wmbus_driver
from water_edge.drivers.wmbus.driver import WmbusDriver

FORGED = 300
WINDOW_S = 2.0
REFUSED = "wmbus.telegram_refused"


async def test_forged_telegrams_write_the_budget_and_a_count_while_health_counts_each_one(
    air_factory: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs.configure("info", json=True, flood_window_s=WINDOW_S)
    # structlog caches a module's logger at its first use: one cached under an earlier test's
    # configure would still write through that test's pipeline. A fresh one follows this one.
    monkeypatch.setattr(wmbus_driver, "log", structlog.get_logger(wmbus_driver.__name__))
    air = await air_factory(meters=2, compact_share=0.0)
    sim = air.component.air
    assert sim is not None
    assert air.meters[1]["security"] == "mode7"
    meter = sim.meters[1]
    meter.faults.mute = True  # on the air: only the forged telegrams of this meter
    driver = WmbusDriver.from_config(stick_config(air, [air.meter(1)]))
    await driver.open()
    try:
        async with asyncio.timeout(30):
            started = time.monotonic()
            for sent in range(1, FORGED + 1):
                forged = bytearray(meter.telegram((2026, 12, 4, 13, 0)))  # a new access number each
                forged[-16 + 3] ^= 0x01  # its AFL MAC no longer matches
                sim.stick.deliver(bytes(forged), -70.0)
                if sent % 20 == 0:
                    await driver.listen_readings(0.02)
            while driver.health().bad_mac < FORGED:
                await driver.listen_readings(0.1)
            ended = time.monotonic()
            health = driver.health()
    finally:
        await driver.aclose()
    assert health.bad_mac == FORGED  # the guard limits lines, never counts

    lines: list[dict[str, Any]] = []

    def refused_and_reported() -> tuple[list[dict[str, Any]], int] | None:
        lines.extend(json.loads(line) for line in capsys.readouterr().err.splitlines() if line)
        refused = [line for line in lines if line["event"] == REFUSED]
        summaries = [line for line in lines if line["event"] == SUMMARY_EVENT and line["of_event"] == REFUSED]
        reported = sum(line.get("suppressed", 0) for line in refused + summaries)
        return (refused, reported) if len(refused) + reported >= FORGED else None

    refused, reported = await eventually(refused_and_reported, WINDOW_S + 5, what=lambda: str(lines))
    windows = int(ended // WINDOW_S) - int(started // WINDOW_S) + 1  # aligned to the monotonic clock
    assert len(refused) <= DEFAULT_BURST * windows < FORGED / 3
    assert len(refused) + reported == FORGED
    assert refused[0]["meter"] == "m1"
