"""The wmbus driver against what radio meters and receivers do in the field, through firmware-sim's
air, its USB stick on a pseudo-terminal and its rtl_wmbus TCP stream: an old telegram sent again, a
key that belongs to another meter, a telegram altered on the way, a street full of neighbours'
meters, a stick pulled out mid-frame and plugged back in, an rtl_wmbus stream cut mid-line, a meter
heard only through a repeater."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.supervised import supervised
from tests.support.testing import eventually
from tests.support.wmbus_air import stick_config, volumes
from water_edge.core.reading import Reading
from water_edge.drivers.wmbus.config import WmbusConfig
from water_edge.drivers.wmbus.driver import WmbusDriver

LEAK = {"leak_lph": 36_000.0}  # the register grows with every telegram: an old one shows as a dip


async def test_an_old_telegram_sent_again_is_dropped_not_stored_as_a_fresh_reading(
    air_factory: Callable[..., Any],
) -> None:
    # One OMS meter (mode 5) whose volume grows with every telegram. Well after the duplicate
    # window, the telegram it sent 16 telegrams ago is on the air again (a recorder, or a
    # store-and-forward repeater flushing its memory): same meter, older access number, older
    # register. Stored as a reading, the centre's register would go down and up again.
    air = await air_factory(meters=1, compact_share=0.0, faults={"0": LEAK})
    sim = air.component.air
    assert sim is not None
    driver = WmbusDriver.from_config(stick_config(air, [air.meter(0)], duplicate_window_s=0.1))
    await driver.open()
    readings: list[Reading] = []
    try:
        async with asyncio.timeout(20):
            while len(volumes(readings, "m0")) < 20:
                readings += await driver.listen_readings(0.2)
            sim.apply({"component": "wmbus", "meter": 0, "replay": 16})
            after = len(readings)
            while len(volumes(readings[after:], "m0")) < 10:
                readings += await driver.listen_readings(0.2)
        health = driver.health()
    finally:
        await driver.aclose()
    assert sim.counters["replayed"] == 1
    got = volumes(readings, "m0")
    dips = [(a, b) for a, b in itertools.pairwise(got) if b <= a]
    assert not dips, f"an old register was stored as a fresh reading: {dips} in {len(got)} volumes"
    # Nothing went missing on the way: the old access number did not count as lost telegrams.
    lost = sum(int(r.value or 0) for r in readings if r.tag == "m0.telegrams_lost")
    (heard,) = driver.heard()
    assert lost == heard.reception.lost < 5, (lost, heard.reception)
    assert (health.stale, health.meters_stale) == (1, ["m0"])
    assert "old telegrams dropped (replayed or delayed): m0" in health.status_lines()
    assert any(f"stale {health.stale}" in line for line in health.status_lines())


async def test_the_access_number_coming_round_is_not_taken_for_an_old_telegram(
    air_factory: Callable[..., Any],
) -> None:
    # The access number is one byte: after 255 comes 0. 300 telegrams of one meter, every one a
    # reading (one a model second, 200 a wall second).
    air = await air_factory(meters=1, compact_share=0.0, faults={"0": LEAK}, speed=200.0)
    sim = air.component.air
    assert sim is not None
    driver = WmbusDriver.from_config(stick_config(air, [air.meter(0)], duplicate_window_s=0.1))
    await driver.open()
    readings: list[Reading] = []
    try:
        # Counted by what arrived, not by what the simulator sent: on a loaded machine several
        # telegrams are still on the line when the simulator's count reaches 300.
        async with asyncio.timeout(30):
            while len(volumes(readings, "m0")) < 300:
                readings += await driver.listen_readings(0.2)
        health = driver.health()
    finally:
        await driver.aclose()
    got = volumes(readings, "m0")
    assert all(b > a for a, b in itertools.pairwise(got))
    # Past the wrap (more than 256 in a row), none taken for an old telegram or for a copy.
    assert (health.stale, health.meters_stale, health.duplicates) == (0, [], 0)


def test_freshness_tells_old_from_new_by_access_number_time_stamp_and_counter() -> None:
    from water_edge.drivers.wmbus.freshness import Freshness

    f = Freshness()
    assert f.judge(10, None, None, 0.0) is None  # the first telegram: nothing to compare with
    for n, at in ((10, 0.0), (11, 16.0), (12, 32.0)):
        f.accept(n, None, None, at)
    assert f.interval_s == 16.0
    assert f.judge(13, None, None, 48.0) is None
    reason = f.judge(5, None, None, 48.0)
    assert reason == "access number 5, 7 behind the last accepted (12)"
    assert f.judge(12, None, None, 48.0) is None  # the same number: a copy, the duplicate filter's
    # Wrap: 254, 255, 0, 1 are each one ahead.
    g = Freshness()
    for n, at in ((253, 0.0), (254, 1.0), (255, 2.0), (0, 3.0), (1, 4.0)):
        assert g.judge(n, None, None, at) is None
        g.accept(n, None, None, at)
    assert g.judge(200, None, None, 5.0) is not None  # 57 behind, 1 s later: old
    # A meter not heard for longer than 64 of its intervals may be anywhere: not judged old.
    assert g.judge(200, None, None, 4.0 + 65.0) is None
    # A meter whose numbers do not count its telegrams (random, or several counters) is not
    # judged by them.
    r = Freshness()
    for n, at in ((10, 0.0), (90, 16.0), (40, 32.0), (100, 48.0)):
        assert r.judge(n, None, None, at) is None
        r.accept(n, None, None, at)
    assert not r.counts
    assert r.judge(60, None, None, 50.0) is None
    assert g.counts
    # The meter's own clock decides first, both ways (summer time is an hour ahead).
    t = Freshness()
    t.accept(100, ("2026-12-04T10:15", False), None, 0.0)
    assert t.judge(90, ("2026-12-04T10:20", False), None, 1.0) is None  # newer: a reset meter
    assert t.judge(90, ("2026-12-04T10:05", False), None, 500.0) is not None  # older on both
    assert t.judge(90, ("2026-12-04T11:10", True), None, 500.0) is not None  # 10:10 standard time
    # A meter without a clock counting again from 3 after a battery change: its telegrams are old
    # by their number until three in a row came one apart at its pace; then it is taken again. A
    # repeater flushing old telegrams one apart in a burst never makes such a run.
    b = Freshness()
    for n, at in ((100, 0.0), (101, 16.0), (102, 32.0)):
        b.accept(n, None, None, at)
    assert b.judge(3, None, None, 48.0) is not None
    assert b.judge(4, None, None, 64.0) is not None
    assert b.judge(5, None, None, 80.0) is None
    b.accept(5, None, None, 80.0)
    assert b.judge(6, None, None, 96.0) is None
    burst = Freshness()
    for n, at in ((100, 0.0), (101, 16.0), (102, 32.0)):
        burst.accept(n, None, None, at)
    assert all(burst.judge(n, None, None, 40.0 + 0.1 * n) is not None for n in range(90, 100))
    # Mode 7's message counter never goes back.
    c = Freshness()
    c.accept(7, None, 1000, 0.0)
    assert c.judge(8, None, 999, 1.0) == "message counter 999, below the last accepted (1000)"


async def test_a_key_that_does_not_decrypt_names_the_meter_in_status(air_factory: Callable[..., Any]) -> None:
    # m0 (mode 5) is given meter 2's key, as when two key files are swapped; m1 (mode 7) a key
    # that belongs to no meter. Neither gives a value, each is named.
    air = await air_factory(compact_share=0.0)
    assert [m["security"] for m in air.meters[:3]] == ["mode5", "mode7", "mode5"]
    meters = [air.meter(0, key=air.meters[2]["key"]), air.meter(1, key="11" * 16), air.meter(2)]
    driver = WmbusDriver.from_config(stick_config(air, meters))
    await driver.open()
    readings: list[Reading] = []
    try:
        async with asyncio.timeout(10):
            while not {"m0.status", "m1.status", "m2.volume"} <= {r.tag for r in readings}:
                readings += await driver.listen_readings(0.2)
        health = driver.health()
    finally:
        await driver.aclose()
    lines = health.status_lines()
    assert "key does not decrypt: m0, m1" in lines, lines
    assert health.meters_wrong_key == ["m0", "m1"]
    assert health.wrong_key >= 2
    values = [
        r for r in readings if r.tag.split(".")[0] in ("m0", "m1") and r.tag.split(".")[1] != "telegrams_lost"
    ]
    assert values
    assert not [r for r in values if r.quality != "bad" or r.tag.split(".")[1] != "status"]  # never garbage
    for name in ("m0", "m1"):
        assert {r.reason for r in readings if r.tag == f"{name}.status"} == {
            "the configured key does not decrypt this meter"
        }
    assert any(r.tag == "m2.volume" and r.quality == "good" for r in readings)


async def test_a_telegram_altered_on_the_way_is_refused_counted_and_the_next_one_read(
    air_factory: Callable[..., Any],
) -> None:
    # Meter 1 (mode 7) is heard through a repeater that corrupts one telegram: a bit flipped in its
    # last encrypted block garbles only that block, so the check bytes 2F 2F still come out. Only
    # the AFL MAC tells; the telegram gives a bad status and nothing else, and the next is read.
    air = await air_factory(meters=2, compact_share=0.0, faults={"1": LEAK})
    sim = air.component.air
    assert sim is not None
    assert air.meters[1]["security"] == "mode7"
    meter = sim.meters[1]
    driver = WmbusDriver.from_config(stick_config(air, [air.meter(1)]))
    await driver.open()
    readings: list[Reading] = []
    try:
        async with asyncio.timeout(20):
            while not volumes(readings, "m1"):
                readings += await driver.listen_readings(0.2)
            meter.faults.mute = True  # its own telegrams held back while the corrupted one is judged
            in_flight = await driver.listen_readings(0.3)
            while any(r.tag.startswith("m1.") for r in in_flight):  # those already on the way
                readings += in_flight
                in_flight = await driver.listen_readings(0.3)
            corrupted = bytearray(meter.telegram((2026, 12, 4, 13, 0)))
            corrupted[-16 + 3] ^= 0x01
            sim.stick.deliver(bytes(corrupted), -70.0)
            refused_from = len(readings)
            while not [r for r in readings[refused_from:] if r.tag == "m1.status"]:
                readings += await driver.listen_readings(0.2)
            health = driver.health()
            meter.faults.mute = False
            after = len(readings)
            while not volumes(readings[after:], "m1"):
                readings += await driver.listen_readings(0.2)
        health_after = driver.health()
    finally:
        await driver.aclose()
    refused = next(r for r in readings[refused_from:] if r.tag == "m1.status")
    assert refused.quality == "bad"
    assert "the AFL MAC does not match: the telegram was altered on the way" in (refused.reason or "")
    assert [r for r in readings[refused_from:after] if r.tag.startswith("m1.")] == [refused]  # nothing else
    assert (health.bad_mac, health.meters_bad_mac, health.wrong_key) == (1, ["m1"], 0)
    assert "MAC missing or not matching, telegrams refused: m1" in health.status_lines()
    got = volumes(readings, "m1")
    assert all(b > a for a, b in itertools.pairwise(got)), got
    assert any(r.tag == "m1.volume" and r.quality == "good" for r in readings[after:])
    assert (health_after.bad_mac, health_after.meters_bad_mac) == (1, [])


async def test_a_dense_street_of_neighbours_does_not_push_out_a_configured_meter(
    air_factory: Callable[..., Any],
) -> None:
    # 1100 meters in range of one rtl_wmbus receiver, one of them configured: the Kamstrup-style
    # meter 0, sending every 120 s, its key not configured yet. Between two of its telegrams the
    # receiver hears some 1700 neighbours. The air runs 200 model seconds a wall second (one in
    # five of meter 0's telegrams collides: four heard take some 700 model seconds).
    street = {"meters": 1100, "compact_share": 0.001, "interval_s": 60.0, "compact_interval_s": 120.0}
    air = await air_factory(**street, security="none", speed=200.0)
    assert [m["kind"] for m in air.meters[:2]] == ["compact", "oms"]
    cfg = WmbusConfig.model_validate(
        {"name": "sdr", "kind": "wmbus", "receiver": "rtlwmbus", "host": "127.0.0.1",
         "tcp_port": air.detail["rtlwmbus"]["port"], "link_modes": ["T1", "C1"],
         "meters": [air.meter(0, key=None)]}
    )  # fmt: skip
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    readings: list[Reading] = []
    listed: list[bool] = []  # whether status named m0 "without key", at each look once it was heard
    try:
        async with asyncio.timeout(60):
            while sum(1 for r in readings if r.tag == "m0.status") < 4:
                readings += await driver.listen_readings(0.5)
                if any(r.tag == "m0.status" for r in readings):
                    listed.append(driver.health().meters_without_key == ["m0"])
        health = driver.health()
    finally:
        await driver.aclose()
    assert health.unknown_frames > 3000
    heard = driver.heard()
    assert len(heard) <= 1001  # the neighbours are bounded; the configured meter is kept
    (m0,) = [h for h in heard if h.configured == "m0"]
    telegrams = sum(1 for r in readings if r.tag == "m0.status")
    assert (m0.frames, m0.reception.received) == (telegrams, telegrams)
    assert all(listed), f"status named m0 without key at {sum(listed)} of {len(listed)} looks"


async def test_a_stick_pulled_mid_frame_and_plugged_back_in_is_reopened_and_set_up_again(
    air_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stick is pulled while it sends a telegram (half a frame reaches the gateway), and plugged
    # back in a second later: a new pty behind the same link, the stick in its power-on link mode.
    # The agent's device runner reopens the driver, which sets the stick up again.
    monkeypatch.setattr("water_edge.drivers.wmbus.links.SETUP_ANSWER_S", 0.3)
    air = await air_factory(meters=2, compact_share=0.0)
    sim = air.component.air
    assert sim is not None
    config = stick_config(air, [air.meter(0), air.meter(1)])
    driver = WmbusDriver.from_config(config)
    async with supervised(config, driver) as run:
        readings, events = run.readings, run.events
        await eventually(lambda: volumes(readings, "m0") and volumes(readings, "m1"), 10)
        sim.apply({"component": "wmbus", "receiver_fault": "unplug"})
        await eventually(lambda: any(e.kind == "driver_down" for e in events), 10)
        for i in (0, 1):  # the meters stay quiet while the stick comes back
            sim.apply({"component": "wmbus", "meter": i, "meter_fault": "mute"})
        sim.apply({"component": "wmbus", "receiver_fault": "replug"})
        await eventually(lambda: driver.health().receivers[0].reopens == 1, 10)
        await asyncio.sleep(0.6)  # twice the time a stick takes to answer (monkeypatched)
        stick = driver.health().receivers[0]
        assert stick.setup == "confirmed", driver.health().status_lines()
        assert sim.stick.link_mode == "T1"  # set up again after its power-on S1
        for i in (0, 1):
            sim.apply({"component": "wmbus", "meter": i, "meter_fault": "clear"})
        after = len(readings)
        await eventually(lambda: volumes(readings[after:], "m0") and volumes(readings[after:], "m1"), 10)
        health = driver.health()
    assert [e.kind for e in events] == ["driver_down", "driver_up"]
    # The half frame is counted as bytes that were no frame, not as a corrupted telegram.
    assert health.crc_errors == 0
    assert 0 < health.garbage_bytes < 64
    lines = health.status_lines()
    assert f"crc errors 0  garbage bytes {health.garbage_bytes}  " in lines[0]
    reopened = [line for line in lines if line.startswith("im871a: reopened 1 time")]
    assert reopened, lines
    assert air.detail["path"] in reopened[0]


async def test_an_rtl_wmbus_stream_cut_mid_line_loses_no_telegram_after_it_reconnects(
    air_factory: Callable[..., Any],
) -> None:
    # `rtl_wmbus | nc` restarted while a line was half written (the pipe buffers in blocks): the
    # connection closes after half a line. The agent reconnects; the half line must not be glued
    # to the first line of the new connection, which is a whole telegram.
    air = await air_factory(meters=2, compact_share=0.0)
    sim = air.component.air
    assert sim is not None
    config = WmbusConfig.model_validate(
        {"name": "sdr", "kind": "wmbus", "receiver": "rtlwmbus", "host": "127.0.0.1",
         "tcp_port": air.detail["rtlwmbus"]["port"], "link_modes": ["T1"],
         "meters": [air.meter(0), air.meter(1)]}
    )  # fmt: skip
    driver = WmbusDriver.from_config(config)
    async with supervised(config, driver) as run:
        readings, events = run.readings, run.events
        await eventually(lambda: volumes(readings, "m0") and volumes(readings, "m1"), 10)
        sim.apply({"component": "wmbus", "receiver_fault": "cut"})
        await eventually(lambda: driver.health().receivers[0].reopens == 1, 10)
        after = len(readings)
        await eventually(lambda: len(volumes(readings[after:], "m0")) >= 3, 10)
        health = driver.health()
    assert [e.kind for e in events] == ["driver_down", "driver_up"]
    half_line = sim.sdr.counters["cut_bytes"]
    assert half_line > 0
    # Only the half line was thrown away, not the whole telegram that came next.
    assert health.garbage_bytes == half_line, (health.garbage_bytes, half_line)
    assert health.crc_errors == 0
    assert any(line.startswith("rtlwmbus: reopened 1 time, last error: ") for line in health.status_lines())


async def test_a_meter_heard_only_through_a_repeater_is_read_with_its_key(
    air_factory: Callable[..., Any],
) -> None:
    # Two Kamstrup-style meters (extended link layer, AES-128-CTR). The stick hears meter 0 only
    # through a single-hop repeater, which sets the hop counter bit of the CC field when it relays:
    # it cannot re-encrypt (it has no key), so the telegram still decrypts as the meter sent it.
    leak = {"leak_lph": 36_000.0}
    air = await air_factory(
        meters=2, compact_share=1.0, repeater_delay_s=0.2, repeater_only=[0], faults={"0": leak, "1": leak}
    )
    driver = WmbusDriver.from_config(stick_config(air, [air.meter(0), air.meter(1)], mode="C1"))
    await driver.open()
    readings: list[Reading] = []
    try:
        async with asyncio.timeout(10):
            while min(len(volumes(readings, "m0")), len(volumes(readings, "m1"))) < 5:
                readings += await driver.listen_readings(0.3)
                if driver.health().wrong_key > 5:
                    break
        health = driver.health()
    finally:
        await driver.aclose()
    assert (health.wrong_key, health.meters_wrong_key) == (0, []), health.status_lines()
    for name in ("m0", "m1"):
        got = volumes(readings, name)
        assert len(got) >= 5
        assert all(b > a for a, b in itertools.pairwise(got)), (name, got)
    assert health.duplicates >= 5  # meter 1's relayed copies, heard after its own
