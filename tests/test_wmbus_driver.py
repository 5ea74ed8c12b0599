"""The wmbus driver against firmware-sim's wireless meters: a USB stick on a pseudo-terminal and an
rtl_wmbus TCP stream, encrypted meters with and without their keys, alarms, silence, line faults."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from tests.support.testing import free_port
from tests.support.wmbus_air import Air, rtlwmbus_config, stick_config, volumes
from water_edge.core.errors import DriverIOError
from water_edge.core.health import health_json
from water_edge.core.reading import Reading
from water_edge.drivers.wmbus.config import WmbusConfig
from water_edge.drivers.wmbus.driver import WmbusDriver
from water_edge.drivers.wmbus.duplicates import HOP_COUNTER_BIT, Duplicates
from water_edge.drivers.wmbus.frame import LinkFrame
from water_edge.drivers.wmbus.receivers import Received


async def listen(cfg: WmbusConfig, seconds: float = 10.0) -> tuple[dict[str, Reading], WmbusDriver]:
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    try:
        readings = await driver.listen_readings(seconds, until_all_heard=bool(cfg.meters))
    finally:
        await driver.aclose()
    latest: dict[str, Reading] = {}
    for r in readings:
        latest[r.tag] = r
    return latest, driver


async def test_oms_meters_mode5_and_mode7_decrypt_with_their_keys(air_factory: Callable[..., Any]) -> None:
    air = await air_factory(compact_share=0.0, faults={"1": {"tamper": True, "battery_low": True}})
    assert [m["security"] for m in air.meters[:2]] == ["mode5", "mode7"]
    got, driver = await listen(stick_config(air, [air.meter(0), air.meter(1)]))
    assert got["m0.volume"].quality == "good"
    # A meter that reports power low: its values are uncertain, with the reason (as wired meters).
    assert (got["m1.volume"].quality, got["m1.volume"].reason) == ("uncertain", "meter reports power low")
    for name in ("m0", "m1"):
        assert got[f"{name}.volume"].unit == "m3"
        assert 50 <= float(got[f"{name}.volume"].value or 0) <= 500
        assert got[f"{name}.volume_backward"].value == 0
    assert got["m1.alarm.tamper"].value is True
    assert got["m1.alarm.battery"].value is True
    assert got["m0.alarm.tamper"].value is False
    health = driver.health()
    assert health.decoded >= 2
    assert (health.no_key, health.wrong_key) == (0, 0)


async def test_compact_meters_ell_ctr_and_their_leak_flag(air_factory: Callable[..., Any]) -> None:
    air = await air_factory(compact_share=1.0, faults={"0": {"leak_lph": 12.0}})
    assert air.meters[0]["kind"] == "compact"
    got, driver = await listen(stick_config(air, [air.meter(0), air.meter(1)], mode="C1"), 15.0)
    assert got["m0.volume"].quality == "good"
    assert got["m0.alarm.leak"].value is True
    assert got["m1.alarm.leak"].value is False
    assert driver.health().decoded >= 2


async def test_meter_without_key_or_with_a_wrong_one_is_counted_never_garbage(
    air_factory: Callable[..., Any],
) -> None:
    air = await air_factory(compact_share=0.0)
    wrong = "00" * 16
    meters = [air.meter(0, key=None), air.meter(1, key=wrong), air.meter(2)]
    got, driver = await listen(stick_config(air, meters))
    assert got["m0.status"].quality == "bad"
    assert "no key" in (got["m0.status"].reason or "")
    assert "does not decrypt" in (got["m1.status"].reason or "")
    assert "m0.volume" not in got
    assert "m1.volume" not in got
    assert got["m2.volume"].quality == "good"
    health = driver.health()
    assert health.no_key >= 1
    assert health.wrong_key >= 1
    assert health.meters_without_key == ["m0"]
    assert any("without key: m0" in line for line in health.status_lines())


async def test_key_from_a_secret_file_is_never_shown(air_factory: Callable[..., Any], tmp_path: Path) -> None:
    air = await air_factory(compact_share=0.0)
    key = air.meters[0]["key"]
    secret = tmp_path / "m0.key"
    secret.write_text(key + "\n")
    secret.chmod(0o600)
    with capture_logs() as logs:
        got, driver = await listen(stick_config(air, [air.meter(0, key={"file": str(secret)})]))
    assert got["m0.volume"].quality == "good"
    shown = orjson.dumps([health_json(driver.health()), logs, [r.reason for r in got.values()]]).decode()
    assert key.lower() not in shown.lower()


async def test_unknown_meters_are_listed_and_listen_mode_reports_them(
    air_factory: Callable[..., Any],
) -> None:
    air = await air_factory(compact_share=0.0, security="none")
    got, driver = await listen(stick_config(air, [], listen=True), 3.0)
    health = driver.health()
    assert health.unknown_frames >= 3
    heard = {h.ident: h for h in driver.heard()}
    plain_id = air.meters[0]["id"]
    assert plain_id in heard
    assert f"heard.{plain_id}.volume" in got
    assert any(entry.startswith(plain_id) for entry in health.unknown_meters)


async def test_silent_meter_gets_a_bad_status_with_the_reason(air_factory: Callable[..., Any]) -> None:
    air = await air_factory(compact_share=0.0, faults={"1": {"mute": True}})
    cfg = stick_config(air, [air.meter(0), air.meter(1, silent_after_s=0.5)])
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    silent: Reading | None = None
    try:
        async with asyncio.timeout(10):
            async for readings in driver.stream():
                silent = next((r for r in readings if r.tag == "m1.status" and r.quality == "bad"), None)
                if silent is not None:
                    break
    finally:
        await driver.aclose()
    assert silent is not None
    assert "not heard" in (silent.reason or "")
    assert driver.health().meters_silent == ["m1"]


async def test_line_faults_on_the_stick_are_counted_and_reading_goes_on(
    air_factory: Callable[..., Any],
) -> None:
    air = await air_factory(compact_share=0.0, line_faults=0.5)
    got, driver = await listen(stick_config(air, [air.meter(i) for i in range(1, 6)]), 12.0)
    health = driver.health()
    assert health.crc_errors + health.garbage_bytes > 0
    assert sum(1 for i in range(1, 6) if f"m{i}.volume" in got) >= 3


async def test_lost_telegrams_are_counted_from_access_number_gaps(air_factory: Callable[..., Any]) -> None:
    # Nine in ten of the stick's frames spoiled on the line, half of them beyond repair (a broken
    # checksum): about 45 % of each meter's telegrams never arrive.
    air = await air_factory(compact_share=0.5, line_faults=0.9)
    cfg = stick_config(air, [air.meter(i) for i in (3, 4, 5)], listen=True)  # the OMS meters, on T1
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    readings: list[Reading] = []
    try:
        # 40 received: a share of 0.8 or more by chance (0.55 expected) then has odds of 2e-4.
        async with asyncio.timeout(30):
            while min((h.reception.received for h in driver.heard()), default=0) < 40:
                readings += await driver.listen_readings(0.5)
        health = driver.health()
    finally:
        await driver.aclose()
    assert air.component.air is not None
    heard = driver.heard()
    lost = sum(h.reception.lost for h in heard)
    spoiled = air.component.air.stick.counters["line_faults"] + air.component.air.counters["collisions"]
    assert 0 < lost <= spoiled  # a broken checksum loses a telegram; junk before a frame mostly not
    for h in heard:
        share = h.reception.share
        assert share is not None
        assert 0.3 < share < 0.8, (h.ident, h.reception)
    assert sorted(name.split()[0] for name in health.meters_poor_reception) == ["m3", "m4", "m5"]
    # Each telegram but the meter's first says how many were lost before it: what the centre sums
    # per meter and day. The first has nothing to count a gap from (docs/drivers/wmbus.md).
    for h in heard:
        name = h.configured
        counts = [int(r.value or 0) for r in readings if r.tag == f"{name}.telegrams_lost"]
        assert sum(counts) == h.reception.lost
        assert len(counts) == h.reception.received - 1
    assert any(line.startswith("poor reception (telegrams received): m") for line in health.status_lines())


async def test_rtl_wmbus_over_tcp_hears_both_link_modes_and_counts_collisions(
    air_factory: Callable[..., Any],
) -> None:
    air = await air_factory(meters=60, compact_share=0.5, interval_s=0.3)
    cfg = rtlwmbus_config(air, [air.meter(0), air.meter(59)])
    got, driver = await listen(cfg, 15.0)
    assert {air.meters[0]["link_mode"], air.meters[59]["link_mode"]} == {"C1", "T1"}
    assert got["m59.volume"].quality == "good"
    assert driver.health().frames > 20
    assert air.component.air is not None
    collisions = air.component.air.counters["collisions"]
    # Collided frames reach the driver as failed-CRC lines (none before it connected).
    assert 0 < driver.health().crc_errors <= collisions


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"meters": [{"name": "a", "id": "12345678", "key": "abc"}]}, "32 hex digits"),
        ({"host": "127.0.0.1"}, "exactly one of 'port'"),
        ({"meters": []}, "listen = true"),
        ({"link_modes": ["T1", "C1"]}, "one link mode"),
        ({"meters": [{"name": "a", "id": "12345678"}, {"name": "b", "id": "12345678"}]}, "configured twice"),
    ],
)
def test_config_errors_name_what_was_expected(change: dict[str, Any], fragment: str) -> None:
    base = {"name": "w", "kind": "wmbus", "receiver": "im871a", "port": "/dev/ttyUSB0",
            "meters": [{"name": "a", "id": "12345678"}]}  # fmt: skip
    with pytest.raises(ValidationError, match=fragment):
        WmbusConfig.model_validate({**base, **change})


async def test_a_telegram_heard_again_through_a_repeater_gives_readings_once(
    air_factory: Callable[..., Any],
) -> None:
    # Every telegram is on the air twice: from the meter and, 0.2 model seconds later, from a
    # repeater (hop counter bit set in the compact meter's extended link layer). rtl_wmbus hears
    # both link modes. A leak makes each meter's volume grow from one telegram to the next, so a
    # copy turned into readings shows as a volume that does not grow.
    leak = {"leak_lph": 36_000.0}
    air = await air_factory(meters=2, compact_share=0.5, repeater_delay_s=0.2, faults={"0": leak, "1": leak})
    assert [m["kind"] for m in air.meters] == ["compact", "oms"]
    cfg = rtlwmbus_config(air, [air.meter(0), air.meter(1)])
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    readings: list[Reading] = []
    try:

        def volumes(name: str) -> list[float]:
            return [float(r.value or 0) for r in readings if r.tag == f"{name}.volume"]

        async with asyncio.timeout(10):
            while min(len(volumes("m0")), len(volumes("m1"))) < 6:
                readings += await driver.listen_readings(0.5)
    finally:
        await driver.aclose()
    assert air.component.air is not None
    assert air.component.air.counters["repeated"] >= 12
    for name in ("m0", "m1"):
        got = volumes(name)
        assert all(b > a for a, b in itertools.pairwise(got)), f"{name}: a copy gave readings: {got}"
    health = driver.health()
    assert health.duplicates >= 10
    assert health.wrong_key == 0  # the relayed copies never reached decryption
    assert any(f"duplicates {health.duplicates}" in line for line in health.status_lines())


def _link(payload: bytes, ident: bytes = b"\x78\x56\x34\x12") -> LinkFrame:
    return LinkFrame(len(payload) + 10, 0x44, 0x2C2D, ident, 0x1B, 0x16, payload, "none")


def test_duplicates_within_the_window_only_and_by_content() -> None:
    ell = bytes.fromhex("8D2042") + bytes(range(12))  # ELL II, CC 20, access number 42
    relayed = ell[:1] + bytes((ell[1] | HOP_COUNTER_BIT,)) + ell[2:]
    seen = Duplicates(window_s=30.0)
    assert not seen.seen(_link(ell), 100.0)
    assert seen.seen(_link(relayed), 101.0)  # the repeater's copy
    assert seen.seen(_link(ell), 102.0)  # a second receiver's copy
    assert not seen.seen(_link(ell, ident=b"\x79\x56\x34\x12"), 102.0)  # another meter
    assert not seen.seen(_link(ell[:2] + b"\x43" + ell[3:]), 103.0)  # the next access number
    assert not seen.seen(_link(ell[:-1] + b"\xff"), 104.0)  # same access number, other content
    assert not seen.seen(_link(ell), 130.5)  # the access number came round again: not a copy
    assert not Duplicates(window_s=0).seen(_link(ell), 100.0)  # 0: every copy kept
    bounded = Duplicates(window_s=30.0, capacity=2)
    for n in range(3):
        bounded.seen(_link(bytes((0x7A, n, 0, 0, 0))), 1.0)
    assert not bounded.seen(_link(bytes((0x7A, 0, 0, 0, 0))), 1.0)  # forgotten first, never unbounded


def two_receivers(air: Air, meters: list[dict[str, Any]], sdr_port: int | None = None) -> WmbusConfig:
    """The stick ("roof") and the rtl_wmbus stream ("cellar") as one device's receivers."""
    return WmbusConfig.model_validate(
        {"name": "w", "kind": "wmbus", "meters": meters,
         "receivers": [
             {"name": "roof", "receiver": "im871a", "port": air.detail["path"], "link_modes": ["T1"]},
             {"name": "cellar", "receiver": "rtlwmbus", "host": "127.0.0.1",
              "tcp_port": sdr_port or air.detail["rtlwmbus"]["port"], "link_modes": ["T1", "C1"]},
         ]}
    )  # fmt: skip


async def test_two_receivers_give_each_meter_once_whichever_hears_it(air_factory: Callable[..., Any]) -> None:
    # Meters 0 and 1 are out of the stick's range, 4 and 5 out of the SDR's; 2 and 3 both hear. A
    # leak makes each volume grow from one telegram to the next: a second copy turned into
    # readings would show as a volume that does not grow.
    leak = {"leak_lph": 36_000.0}
    air = await air_factory(
        compact_share=0.0, out_of_range={"stick": [0, 1], "rtlwmbus": [4, 5]},
        faults={str(i): leak for i in range(6)}, line_faults=0.3,
    )  # fmt: skip
    driver = WmbusDriver.from_config(two_receivers(air, [air.meter(i) for i in range(6)]))
    await driver.open()
    readings: list[Reading] = []
    try:
        async with asyncio.timeout(20):
            while min(len(volumes(readings, f"m{i}")) for i in range(6)) < 4:
                readings += await driver.listen_readings(0.5)
        health = driver.health()
    finally:
        await driver.aclose()
    for i in range(6):
        got = volumes(readings, f"m{i}")
        assert all(b > a for a, b in itertools.pairwise(got)), f"m{i}: a copy gave readings: {got}"
    by_id = {h.ident: h for h in driver.heard()}
    heard_by = [set(by_id[air.meters[i]["id"]].receivers) for i in range(6)]
    assert heard_by == [{"cellar"}] * 2 + [{"roof", "cellar"}] * 2 + [{"roof"}] * 2
    roof_rssi = by_id[air.meters[2]["id"]].receivers["roof"].rssi
    assert roof_rssi is not None
    assert -100 < roof_rssi < -50
    # One unit per `.rssi` tag: the stick's dBm; rtl_wmbus's own figure stays in `heard`.
    assert {r.unit for r in readings if r.tag.endswith(".rssi")} == {"dBm"}
    assert not [r for r in readings if r.tag in ("m0.rssi", "m1.rssi")]  # heard by the SDR alone
    assert by_id[air.meters[0]["id"]].receivers["cellar"].rssi_unit == ""
    # The stick loses telegrams on its line; what the SDR heard fills them in.
    both = [by_id[air.meters[i]["id"]] for i in (2, 3)]
    roof_lost = sum(h.receivers["roof"].reception.lost for h in both)
    assert roof_lost > sum(h.reception.lost for h in both)
    assert health.duplicates >= 6  # meters 2 and 3, each of their telegrams once more
    assert health.receiver == "im871a + rtlwmbus"
    roof, cellar = health.receivers
    assert (roof.name, cellar.name) == ("roof", "cellar")
    assert (roof.setup, cellar.setup) == ("confirmed", "none")  # the stick answered its set-up
    assert min(roof.first_copies, cellar.first_copies) > 0
    assert roof.first_copies + cellar.first_copies + health.duplicates == roof.frames + cellar.frames
    lines = health.status_lines()
    assert any(line.startswith("roof: im871a ") and " open " in line for line in lines), lines
    assert orjson.loads(orjson.dumps(health_json(health)))["receivers"][1]["name"] == "cellar"


async def test_a_lost_receiver_is_reopened_while_the_other_goes_on(air_factory: Callable[..., Any]) -> None:
    air = await air_factory(compact_share=0.0, out_of_range={"stick": [0], "rtlwmbus": [1]})
    driver = WmbusDriver.from_config(two_receivers(air, [air.meter(0), air.meter(1)]))
    sim = air.component.air
    assert sim is not None
    await driver.open()
    seen: list[Reading] = []
    try:
        async with asyncio.timeout(30):
            stream = driver.stream()
            while not volumes(seen, "m0"):  # meter 0 only through the SDR
                seen += await anext(stream)
            sim.apply({"component": "wmbus", "receiver_fault": "drop"})  # the scenario event
            dropped_at = len(seen)
            while not driver.health().receivers[1].reopens:
                seen += await anext(stream)
            during = seen[dropped_at:]
            after = len(seen)
            while not volumes(seen[after:], "m0"):
                seen += await anext(stream)
        cellar = driver.health().receivers[1]
    finally:
        await driver.aclose()
    assert volumes(during, "m1"), "the stick's meter stopped while the SDR was away"
    # The centre sees it too: each receiver's state as it changes.
    states = [(r.tag, r.value) for r in seen if r.tag.startswith("receiver.")]
    assert states == [("receiver.roof.open", True), ("receiver.cellar.open", True),
                      ("receiver.cellar.open", False), ("receiver.cellar.open", True)]  # fmt: skip
    assert (cellar.open, cellar.reopens) == (True, 1)
    assert "closed by the peer" in str(cellar.last_error)


async def test_a_receiver_that_cannot_open_is_retried_and_only_all_down_fails(
    air_factory: Callable[..., Any],
) -> None:
    air = await air_factory(compact_share=0.0)
    nothing = free_port()
    driver = WmbusDriver.from_config(two_receivers(air, [air.meter(0)], sdr_port=nothing))
    await driver.open()
    try:
        got = await driver.listen_readings(10.0, until_all_heard=True)
        health = driver.health()
    finally:
        await driver.aclose()
    assert any(r.tag == "m0.volume" and r.quality == "good" for r in got)
    assert {(r.tag, r.value) for r in got if r.tag.startswith("receiver.")} == {
        ("receiver.roof.open", True), ("receiver.cellar.open", False),
    }  # fmt: skip
    cellar = health.receivers[1]
    assert not cellar.open
    assert "cannot connect" in str(cellar.last_error)
    lines = health.status_lines()
    assert any(line.startswith("cellar: rtlwmbus ") and "cannot connect" in line for line in lines), lines
    air.detail["path"] = "/nonexistent/tty"
    all_down = WmbusDriver.from_config(two_receivers(air, [air.meter(0)], sdr_port=nothing))
    with pytest.raises(
        DriverIOError, match=r"no receiver could be opened \(roof: .*nonexistent.*; cellar: .*connect"
    ):
        await all_down.open()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"receiver": "im871a"}, "not both"),
        ({"duplicate_window_s": 0}, "must be above 0"),
        (
            {
                "receivers": [
                    {"receiver": "rtlwmbus", "port": "/run/a"},
                    {"name": "r1", "receiver": "rtlwmbus", "port": "/run/b"},
                ]
            },
            "'r1' is used twice",
        ),
        ({"receivers": [{"receiver": "im871a", "host": "sdr", "tcp_port": 7000}]}, "USB stick"),
        ({"receivers": []}, "give 'receiver'"),
        (
            {
                "receivers": [
                    {"receiver": "im871a", "port": "/dev/ttyUSB0"},
                    {"receiver": "amb8465", "port": "/dev/ttyUSB0"},
                ]
            },
            "two receivers name /dev/ttyUSB0",
        ),
    ],
)
def test_receivers_config_errors_name_what_was_expected(change: dict[str, Any], fragment: str) -> None:
    base = {"name": "w", "kind": "wmbus", "meters": [{"name": "a", "id": "12345678"}],
            "receivers": [{"receiver": "im871a", "port": "/dev/ttyUSB0"},
                          {"receiver": "rtlwmbus", "host": "sdr", "tcp_port": 7000,
                           "link_modes": ["T1", "C1"]}]}  # fmt: skip
    assert [r.label for r in WmbusConfig.model_validate(base).receiver_configs()] == ["r1", "r2"]
    with pytest.raises(ValidationError, match=fragment):
        WmbusConfig.model_validate({**base, **change})


def test_probe_lists_which_receiver_heard_each_meter(capsys: pytest.CaptureFixture[str]) -> None:
    from water_edge.agent.commands.probe import _print_heard
    from water_edge.drivers.wmbus.driver import Heard

    cfg = WmbusConfig.model_validate(
        {"name": "w", "kind": "wmbus", "listen": True,
         "receivers": [{"name": "roof", "receiver": "im871a", "port": "/dev/ttyUSB0"},
                       {"name": "cellar", "receiver": "rtlwmbus", "port": "/run/wmbus.fifo"}]}
    )  # fmt: skip
    both = Heard("30000005", "SIM", 7, frames=3, rssi=-76.5)
    for name, received, numbers in (
        ("roof", Received(b"", -76.5), (7, 10)),
        ("cellar", Received(b"", 31.5, rssi_unit=""), (7, 8, 9, 10)),
    ):
        for access in numbers:
            both.heard_by(name, received, access)
    one = Heard("30000012", "KAM", 22, frames=1, rssi=None)
    one.heard_by("cellar", Received(b"", None, rssi_unit=""), None)
    _print_heard(cfg, [both, one], as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("configured   heard by (rssi, lost)")
    # rtl_wmbus's level is its own figure, not dBm: marked, so nobody compares it with the stick's.
    assert lines[2].endswith("roof -76.5 (lost 2), cellar 31.5* (lost 0)")
    assert lines[3].split()[-4:] == ["-", "cellar", "(lost", "0)"]  # not configured; no RSSI there
    assert lines[4] == "  rssi in dBm; *: rtl_wmbus's own level, comparable only with its own"
    _print_heard(cfg, [both], as_json=True)
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["rssi_unit"] == "dBm"
    assert doc["receivers"]["cellar"] == {"rssi": 31.5, "rssi_unit": "", "received": 4, "lost": 0}


async def test_a_stick_that_does_not_answer_its_set_up_is_named_in_status(
    air_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An AMB8465 configured where the iM871A is (the wrong kind, or the wrong port): the iM871A
    # ignores Amber's command, so nothing confirms the link mode.
    monkeypatch.setattr("water_edge.drivers.wmbus.links.SETUP_ANSWER_S", 0.2)
    air = await air_factory(compact_share=0.0)
    cfg = stick_config(air, [air.meter(0)]).model_copy(update={"receiver": "amb8465"})
    driver = WmbusDriver.from_config(cfg)
    await driver.open()
    try:
        await driver.listen_readings(1.0)
        health = driver.health()
    finally:
        await driver.aclose()
    assert health.receivers[0].setup == "unanswered"
    assert f"amb8465: no answer to its link-mode set-up: is an amb8465 on {air.detail['path']}?" in (
        health.status_lines()
    )


def test_access_numbers_are_read_in_the_clear_and_gaps_counted() -> None:
    from water_edge.drivers.wmbus.reception import Reception, access_number

    assert access_number(_link(bytes.fromhex("7A2A000000"))) == 0x2A  # short transport header
    assert access_number(_link(bytes.fromhex("72785634122D2C1B072B000000"))) == 0x2B  # long header
    assert access_number(_link(bytes.fromhex("8D202C") + bytes(8))) == 0x2C  # the ELL's, outermost
    assert (
        access_number(_link(bytes.fromhex("9003000000") + bytes.fromhex("7A2D000000"))) == 0x2D
    )  # past the AFL
    assert access_number(_link(bytes.fromhex("78") + bytes(4))) is None  # no header: no number
    seen = Reception()
    for access in (250, 251, 254, 254, 1):  # 252, 253 lost; 254 twice is one telegram; 255, 0 lost
        seen.note(access)
    assert (seen.received, seen.lost) == (4, 4)
    seen.note(1 + 200)  # a gap of 199: a long silence, or a meter that does not count each telegram
    assert (seen.received, seen.lost) == (5, 4)
    assert seen.share == 5 / 9
    assert not seen.is_poor()  # fewer than 10 due: not judged yet
    seen.note(205)
    assert seen.is_poor()  # 6 of 12


async def test_an_unforeseen_error_opening_a_receiver_is_a_failed_open_retried_later(
    air_factory: Callable[..., Any],
) -> None:
    from water_edge.drivers.wmbus.config import ReceiverConfig
    from water_edge.drivers.wmbus.links import open_receiver_stream
    from water_edge.drivers.wmbus.transport import ByteStream

    attempts = 0

    async def opener(cfg: ReceiverConfig) -> ByteStream:
        nonlocal attempts
        if cfg.label == "cellar":
            attempts += 1
            raise RuntimeError("a driver library's surprise")
        return await open_receiver_stream(cfg)

    air = await air_factory(compact_share=0.0)
    driver = WmbusDriver(two_receivers(air, [air.meter(0)]), stream_opener=opener)
    await driver.open()
    try:
        got = await driver.listen_readings(2.5)
        cellar = driver.health().receivers[1]
    finally:
        await driver.aclose()
    assert any(r.tag == "m0.volume" for r in got)  # the stick went on
    assert cellar.last_error == "open failed: RuntimeError: a driver library's surprise"
    assert 2 <= attempts <= 4  # retried on the backoff (1 s, then 1-2 s), not in a loop
