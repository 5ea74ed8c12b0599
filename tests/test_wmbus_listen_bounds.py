"""`listen = true` in a city: a receiver hears hundreds to thousands of neighbours' meters, and every
tag it reports is kept by everything downstream (a Sparkplug birth, report by exception, the learnt
tags and their stand-ins). Only the first `listen_max_meters` meters not configured give `heard.*`
readings, the same ones across a receiver's reopen; the others are counted and logged once. And
`heard.*` tags are no learnt tags: no stand-in readings for them while the receiver is down.

The telegrams are the simulator's meters', sent to its USB stick on a pseudo-terminal in an order
the test chooses (the meters themselves are muted), through the driver's real receive path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError
from structlog.testing import capture_logs

from tests.support.supervised import supervised
from tests.support.testing import eventually
from tests.support.wmbus_air import Air, stick_config
from water_edge.agent.learnt_tags import LearntTags, fingerprint
from water_edge.core.reading import Reading
from water_edge.drivers.wmbus import driver as wmbus_driver
from water_edge.drivers.wmbus.config import WmbusConfig
from water_edge.drivers.wmbus.driver import WmbusDriver
from water_edge.sim.wmbus_air import WmbusAir

FOREIGN = list(range(2, 22))  # 20 meters not configured (0 and 1 may be)
CAP = 5
LIMIT_EVENT = "wmbus.listen_limit_reached"


async def quiet_air(air_factory: Callable[..., Any]) -> tuple[Air, WmbusAir]:
    """22 unencrypted meters that send only when the test says so."""
    air = await air_factory(meters=2 + len(FOREIGN), compact_share=0.0, security="none", interval_s=1e9)
    sim = air.component.air
    assert sim is not None
    for meter in sim.meters:
        meter.faults.mute = True
    return air, sim


def send(sim: WmbusAir, indices: Sequence[int]) -> None:
    """One telegram of each meter, in this order, reaching the stick intact."""
    for i in indices:
        sim.stick.deliver(sim.meters[i].telegram((2026, 12, 4, 13, 0)), -70.0)


def senders(readings: Sequence[Reading]) -> set[str]:
    """The meters that gave `heard.<ID>.*` readings."""
    return {r.tag.split(".")[1] for r in readings if r.tag.startswith("heard.")}


def ids(air: Air, indices: Sequence[int]) -> set[str]:
    return {air.meters[i]["id"] for i in indices}


async def until_read(driver: WmbusDriver, tag: str) -> list[Reading]:
    """What the driver reads until a good `tag` reading (a meter sent last: all before it are in)."""
    readings: list[Reading] = []
    async with asyncio.timeout(10):
        while not any(r.tag == tag and r.quality == "good" for r in readings):
            readings += await driver.listen_readings(0.1)
    return readings


@pytest.fixture
def fresh_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # structlog caches a module's logger at its first use (an earlier test's configure): a fresh
    # one follows `capture_logs`.
    monkeypatch.setattr(wmbus_driver, "log", structlog.get_logger(wmbus_driver.__name__))


@pytest.mark.usefixtures("fresh_log")
async def test_only_the_first_meters_heard_are_reported_the_others_counted_and_logged_once(
    air_factory: Callable[..., Any],
) -> None:
    air, sim = await quiet_air(air_factory)
    cfg = stick_config(
        air, [air.meter(0, key=None), air.meter(1, key=None)], listen=True, listen_max_meters=CAP
    )
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    try:
        with capture_logs() as logs:
            send(sim, [0, *FOREIGN, 1])
            first = await until_read(driver, "m1.volume")
            # Every meter heard again, the neighbours in the other order: the same five report.
            send(sim, [0, *reversed(FOREIGN), 1])
            again = await until_read(driver, "m1.volume")
        health = driver.health()
    finally:
        await driver.aclose()
    reported = ids(air, FOREIGN[:CAP])
    assert senders(first) == reported
    assert {r.tag for r in first if r.tag.startswith("heard.")} == {
        f"heard.{ident}.{what}" for ident in reported for what in ("rssi", "volume")
    }
    assert senders(again) == reported  # a meter once reported stays reported
    assert driver.listen_not_reported == len(FOREIGN) - CAP == 15  # distinct: each heard twice
    assert health.listen_not_reported == 15
    assert "listen: 15 meters heard not reported (past listen_max_meters)" in health.status_lines()
    warnings = [e for e in logs if e["event"] == LIMIT_EVENT]
    assert len(warnings) == 1, warnings
    assert warnings[0]["log_level"] == "warning"
    assert "'listen_max_meters'" in warnings[0]["reason"]
    assert "edge-agent probe --listen" in warnings[0]["reason"]
    # The configured meters are read as ever, twice each.
    for name in ("m0", "m1"):
        assert [r.quality for r in first + again if r.tag == f"{name}.volume"] == ["good", "good"]
    assert health.meters_heard == 2
    # What the driver lists of the meters heard (`probe --listen`) is not limited: every neighbour,
    # its volume read.
    heard = {h.ident: h for h in driver.heard() if h.configured is None}
    assert set(heard) == ids(air, FOREIGN)
    assert all(h.total_volume_m3 is not None and h.frames == 2 for h in heard.values())


async def test_the_meters_reported_stay_the_same_after_the_receiver_is_reopened(
    air_factory: Callable[..., Any],
) -> None:
    # The stick is pulled out and plugged back in; the supervisor reopens the same driver. After
    # it, the neighbours are heard in the other order: a set kept per connection would now report
    # the last five, and the centre would see five meters vanish and five others appear.
    air, sim = await quiet_air(air_factory)
    cfg = stick_config(air, [air.meter(0, key=None)], listen=True, listen_max_meters=CAP)
    driver = WmbusDriver.from_config(cfg)
    async with supervised(cfg, driver) as run:
        readings, events = run.readings, run.events
        await eventually(lambda: driver.health().open, 10)
        send(sim, [*FOREIGN, 0])
        await eventually(lambda: any(r.tag == "m0.volume" for r in readings), 10)
        before = list(readings)
        sim.apply({"component": "wmbus", "receiver_fault": "unplug"})
        await eventually(lambda: any(e.kind == "driver_down" for e in events), 10)
        sim.apply({"component": "wmbus", "receiver_fault": "replug"})
        await eventually(lambda: driver.health().receivers[0].reopens == 1 and driver.health().open, 10)
        after = len(readings)
        send(sim, [*reversed(FOREIGN), 0])
        await eventually(lambda: any(r.tag == "m0.volume" for r in readings[after:]), 10)
        reopened = readings[after:]
    assert [e.kind for e in events] == ["driver_down", "driver_up"]
    assert senders(before) == senders(reopened) == ids(air, FOREIGN[:CAP])
    assert driver.listen_not_reported == len(FOREIGN) - CAP


async def test_heard_tags_are_not_learnt_and_get_no_stand_ins_while_a_meter_s_learnt_tags_do(
    air_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # As the agent runs it: the device runner with the record of learnt tags. The stick is pulled
    # out and stays out; at each failed reopen the runner stands in a bad reading for every tag it
    # knows. The configured meter's volume (learnt once read) is among them; no neighbour's meter.
    air, sim = await quiet_air(air_factory)
    cfg = stick_config(air, [air.meter(0, key=None)], listen=True, listen_max_meters=CAP)
    record = tmp_path / "learnt_tags.json"
    learnt = LearntTags(record, [cfg])
    driver = WmbusDriver.from_config(cfg)
    async with supervised(cfg, driver, backoff_min_s=0.1, backoff_max_s=0.2, learnt=learnt) as run:
        readings, events = run.readings, run.events
        await eventually(lambda: driver.health().open, 10)
        send(sim, [*FOREIGN, 0])
        await eventually(lambda: any(r.tag == "m0.volume" for r in readings), 10)
        assert senders(readings) == ids(air, FOREIGN[:CAP])  # reported, ...
        learnt_tags = {t.name for t in learnt.of("w")}
        assert {"m0.volume", "m0.rssi"} <= learnt_tags
        assert not [t for t in learnt_tags if t.startswith("heard.")]  # ... not learnt
        sim.apply({"component": "wmbus", "receiver_fault": "unplug"})
        await eventually(lambda: any(e.kind == "driver_down" for e in events), 10)
        down = len(readings)
        await eventually(lambda: run.runner.stats.failures >= 3, 10)  # two reopens failed too
        stand_ins = readings[down:]
    assert stand_ins
    assert {r.quality for r in stand_ins} == {"bad"}
    stood_in = {r.tag for r in stand_ins}
    assert {"m0.volume", "m0.status"} <= stood_in
    assert not [t for t in stood_in if t.startswith("heard.")]
    learnt.save(learnt.snapshot())
    kept = json.loads(record.read_text())["w"]["tags"]
    assert "m0.volume" in kept
    assert not [t for t in kept if t.startswith("heard.")]


def offline_config(**extra: Any) -> WmbusConfig:
    return WmbusConfig.model_validate(
        {"name": "w", "kind": "wmbus", "receiver": "im871a", "port": "/dev/ttyUSB0",
         "meters": [{"name": "m0", "id": "30000000"}], **extra}
    )  # fmt: skip


def test_a_record_an_earlier_version_wrote_loses_its_heard_tags(tmp_path: Path) -> None:
    # An upgraded gateway: its record holds thousands of neighbours' `heard.*` tags, each of which
    # the earlier version stood in for at every failed reopen of the receiver.
    cfg = offline_config(listen=True)
    record = tmp_path / "learnt_tags.json"
    heard = {f"heard.{30_000_000 + 7 * i:08d}.{what}": unit for i in range(3000)
             for what, unit in (("rssi", "dBm"), ("volume", "m3"))}  # fmt: skip
    tags = {"m0.volume": "m3", "m0.rssi": "dBm", **heard}
    record.write_text(json.dumps({"w": {"config": fingerprint(cfg), "tags": tags}}))
    assert {t.name for t in LearntTags(record, [cfg]).of("w")} == {"m0.volume", "m0.rssi"}
    # Without `listen`, `heard` is a name like any other: a meter may be called so.
    plain = offline_config(meters=[{"name": "heard", "id": "30000000"}])
    record.write_text(json.dumps({"w": {"config": fingerprint(plain), "tags": {"heard.volume": "m3"}}}))
    assert {t.name for t in LearntTags(record, [plain]).of("w")} == {"heard.volume"}


@pytest.mark.parametrize(
    ("value", "fragment"), [(0, "greater than or equal to 1"), (5001, "less than or equal")]
)
def test_listen_max_meters_is_checked(value: int, fragment: str) -> None:
    assert offline_config(listen=True).listen_max_meters == 200
    with pytest.raises(ValidationError, match=f"listen_max_meters\n.*{fragment}"):
        offline_config(listen=True, listen_max_meters=value)
