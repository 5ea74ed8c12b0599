"""The M-Bus driver against firmware-sim meters on a pseudo-terminal (readings, faults, scans), and
through its master factory with a scripted master (failure accounting, a shared segment)."""

from __future__ import annotations

import itertools
import os
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mbus_sim import bus_config, read_once, running_bus
from water_edge.agent.config import load_config
from water_edge.core.errors import DriverIOError
from water_edge.drivers.mbus.config import MbusConfig
from water_edge.drivers.mbus.driver import MbusDriver
from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.mbus.link import (
    LinkStats,
    MbusMaster,
    MbusTimeoutError,
    identity_mismatch,
    secondary_mask,
)
from water_edge.drivers.mbus.telegram import Header, Record, Telegram
from water_edge.sim.mbus_bus import MbusBus
from water_edge.sim.mbus_meter import STATUS_PERMANENT_ERROR, STATUS_POWER_LOW, manufacturer_field

SAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "samples" / "mbus.toml"


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[MbusBus]:
    async with running_bus(tmp_path) as running:
        yield running


config = bus_config


async def test_all_records_of_primary_and_secondary_meters(bus: MbusBus) -> None:
    m1, m3 = bus.meter(1), bus.meter(3)
    cfg = config(bus, [
        {"name": "house1", "address": 1},
        {"name": "house3", "secondary": f"{m3.spec.ident:08d}"},
    ])  # fmt: skip
    got, driver = await read_once(cfg)
    totaliser = bus._ctx.state().totaliser_m3
    volume = got["house1.volume"]
    assert volume.quality == "good"
    assert volume.unit == "m3"
    assert volume.value == pytest.approx(m1.volume_litres(totaliser) / 1000, abs=0.01)
    assert got["house1.volume.storage1"].value == pytest.approx(m1.due_date_litres(totaliser) / 1000)
    assert got["house1.volume_flow"].unit == "m3/h"
    assert got["house1.flow_temperature"].unit == "degC"
    assert isinstance(got["house1.date_time"].value, str)
    assert got["house1.status"].value == 0
    # Meter 3 sends two telegrams: the monthly values of the second arrive too (FCB toggled).
    for storage in (2, 3, 4, 5):
        expected = m3.monthly_litres(storage) / 1000
        assert got[f"house3.volume.storage{storage}"].value == pytest.approx(expected)
    assert {t.name for t in driver.tags()} >= set(got)
    assert driver.health().meter_reads == 2


async def test_selected_records_and_a_missing_one(bus: MbusBus) -> None:
    cfg = config(bus, [{"name": "m2", "address": 2, "records": [
        {"quantity": "volume"},
        {"quantity": "volume", "storage": 1, "tag": "due_volume"},
        {"quantity": "energy"},
    ]}])  # fmt: skip
    got, _ = await read_once(cfg)
    assert set(got) == {"m2.status", "m2.volume", "m2.due_volume", "m2.energy"}
    assert got["m2.volume"].quality == "good"
    assert got["m2.due_volume"].quality == "good"
    assert got["m2.energy"].quality == "bad"
    assert got["m2.energy"].reason == "record not in the meter's telegram"


async def test_checksum_error_is_retried_and_counted(bus: MbusBus) -> None:
    bus.inject(1, "checksum")
    got, driver = await read_once(config(bus, [{"name": "m1", "address": 1}]))
    assert got["m1.volume"].quality == "good"
    health = driver.health()
    assert health.checksum_errors == 1
    assert health.retries == 1


async def test_silent_or_garbled_meter_gives_bad_readings_others_stay_good(bus: MbusBus) -> None:
    bus.inject(2, "silent", count=10)
    bus.inject(4, "checksum", count=10)
    cfg = config(bus, [
        {"name": "a", "address": 1}, {"name": "b", "address": 2}, {"name": "d", "address": 4},
    ], retries=1)  # fmt: skip
    got, driver = await read_once(cfg)
    assert got["a.volume"].quality == "good"
    assert (got["b.status"].quality, got["b.status"].reason) == ("bad", "timeout")
    assert got["d.status"].quality == "bad"
    assert got["d.status"].reason is not None
    assert "checksum" in got["d.status"].reason
    assert driver.health().meter_failures == 2


async def test_meter_error_flags_set_quality(bus: MbusBus) -> None:
    bus.meter(1).state.status = STATUS_POWER_LOW
    bus.meter(2).state.status = STATUS_PERMANENT_ERROR
    got, _ = await read_once(config(bus, [{"name": "a", "address": 1}, {"name": "b", "address": 2}]))
    assert got["a.volume"].quality == "uncertain"
    assert got["a.volume"].reason == "meter reports power low"
    assert got["b.volume"].quality == "bad"
    assert got["b.volume"].reason == "meter reports permanent error"


async def test_a_meter_in_alarm_keeps_its_readings_good(bus: MbusBus) -> None:
    """Application status 3 is the meter's alarm (a leak it saw): its volume is still right."""
    bus.meter(1).state.status = 0x03
    bus.meter(2).state.status = 0x02  # "any application error": the measurements are in doubt
    got, _ = await read_once(config(bus, [{"name": "a", "address": 1}, {"name": "b", "address": 2}]))
    assert (got["a.volume"].quality, got["a.volume"].reason) == ("good", None)
    assert got["a.status"].value == 0x03
    assert (got["b.volume"].quality, got["b.volume"].reason) == ("bad", "meter reports application error")


async def test_a_meter_answering_with_a_bare_application_error_is_bad_with_its_reason(bus: MbusBus) -> None:
    """A meter may answer REQ_UD2 with an application error (CI 70h) and no status byte: a control
    frame (L = 3). The link took it for a stray answer and the decoder for a frame without data, so
    the meter read as silent; its status said nothing of an error either way. It is now what the
    meter says: an unspecified application error, on the status and on every selected record."""
    bus.inject(1, "app_error", count=10)
    got, driver = await read_once(
        config(
            bus,
            [{"name": "a", "address": 1, "records": [{"quantity": "volume"}]}, {"name": "b", "address": 2}],
        )
    )
    why = "meter reports application error: unspecified error"
    assert (got["a.status"].quality, got["a.status"].reason) == ("bad", why)
    assert (got["a.volume"].value, got["a.volume"].quality, got["a.volume"].reason) == (None, "bad", why)
    assert got["b.volume"].quality == "good"  # the next meter on the segment is read as before
    assert driver.health().meter_failures == 0  # it answered: not a failed read


async def test_unopenable_port_is_a_driver_io_error(tmp_path: Path) -> None:
    cfg = MbusConfig.model_validate(
        {"name": "x", "kind": "mbus", "port": str(tmp_path / "nope"), "meters": [{"name": "m", "address": 1}]}
    )
    driver = MbusDriver.from_config(cfg)
    with pytest.raises(DriverIOError, match="cannot open"):
        await driver.open()


async def test_secondary_wildcard_scan_finds_every_meter(bus: MbusBus) -> None:
    import asyncio

    master = MbusMaster(bus.path, bus.baudrate, retries=0)
    await asyncio.to_thread(master.open)
    try:
        found = await asyncio.to_thread(master.scan_secondary)
        primary = await asyncio.to_thread(master.scan_primary, range(6))
    finally:
        master.close()
    assert sorted(a[:8] for a in found) == sorted(f"{m.spec.ident:08d}" for m in bus.meters)
    assert all(a.endswith("07") for a in found)  # medium water
    assert primary == [m.spec.address for m in bus.meters]


async def test_a_meter_answering_in_place_of_the_selected_one_is_bad_never_stored(bus: MbusBus) -> None:
    # Meter 2 takes every selection as its own; the configured meter 00000001 is gone from the bus.
    # Before the identity check its telegram was stored as the missing meter's volume.
    neighbour = bus.meter(2)
    neighbour.state.ignores_select = True
    cfg = config(bus, [
        {"name": "gone", "secondary": "00000001", "records": [{"quantity": "volume"}]},
        {"name": "house4", "secondary": f"{bus.meter(4).spec.ident:08d}"},
    ], retries=0)  # fmt: skip
    got, driver = await read_once(cfg)
    for tag in ("gone.status", "gone.volume"):
        assert (got[tag].quality, got[tag].value) == ("bad", None)
        assert got[tag].reason == (
            f"wrong meter: another meter answered: ID {neighbour.spec.ident:08d}, selected 00000001FFFFFFFF"
        )
    # Meter 4 selected, meter 2 answering over it: a collision, never meter 2's nor a mix stored.
    assert got["house4.status"].quality == "bad"
    assert "checksum" in (got["house4.status"].reason or "")
    health = driver.health()
    assert (health.wrong_meter, health.meter_failures, health.meter_reads) == (1, 2, 0)
    assert any("wrong meter 1" in line for line in health.status_lines())


async def test_wildcard_selection_reads_the_one_meter_it_names(bus: MbusBus) -> None:
    m3 = bus.meter(3)
    man = manufacturer_field(m3.spec.manufacturer)
    rest = f"{man & 0xFF:02X}{man >> 8:02X}{m3.spec.version:02X}{m3.spec.medium:02X}"
    cfg = config(bus, [
        {"name": "by_make", "secondary": "FFFFFFFF" + rest},
        {"name": "everyone", "secondary": "FFFFFFFF"},
    ], retries=0)  # fmt: skip
    got, driver = await read_once(cfg)
    totaliser = bus._ctx.state().totaliser_m3
    assert got["by_make.volume"].quality == "good"
    assert got["by_make.volume"].value == pytest.approx(m3.volume_litres(totaliser) / 1000, abs=0.01)
    # Four meters answer at once: garbage on the line, a bad reading, nothing stored.
    assert got["everyone.status"].quality == "bad"
    assert driver.health().wrong_meter == 0


async def test_an_adapter_echoing_every_request_is_read_with_local_echo(bus: MbusBus) -> None:
    bus.echo = True
    meters: list[dict[str, Any]] = [
        {"name": "house1", "address": 1},
        {"name": "house3", "secondary": f"{bus.meter(3).spec.ident:08d}"},
    ]
    got, driver = await read_once(config(bus, meters, local_echo=True, retries=0))
    assert got["house1.volume"].quality == "good"
    assert got["house3.volume.storage5"].quality == "good"  # the second telegram (FCB toggled)
    assert (driver.health().frame_errors, driver.health().meter_failures) == (0, 0)


async def test_without_local_echo_an_echoing_adapter_answers_every_request_with_it(bus: MbusBus) -> None:
    bus.echo = True
    got, _ = await read_once(config(bus, [{"name": "house1", "address": 1}], retries=0))
    assert got["house1.status"].reason == (
        "bad frame: SND_NKE to 1: answer is not the E5 acknowledgement (a short frame)"
    )


async def test_local_echo_on_an_adapter_that_does_not_echo_says_so(bus: MbusBus) -> None:
    got, driver = await read_once(config(bus, [{"name": "house1", "address": 1}], local_echo=True, retries=0))
    reason = got["house1.status"].reason or ""
    assert reason.startswith("bad frame: local echo: expected the request back, got ")
    assert reason.endswith("(does this adapter echo?)")
    assert driver.health().frame_errors == 1


def test_identity_check_compares_what_the_mask_names() -> None:
    header = Header("12345678", "KAM", 0x1B, 0x07, access_number=1, status=0, signature=0)
    assert identity_mismatch(secondary_mask("12345678"), header) is None
    assert identity_mismatch(secondary_mask("1234FFFF2D2C1B07"), header) is None
    assert identity_mismatch(secondary_mask("12345679"), header) == (
        "another meter answered: ID 12345678, selected 12345679FFFFFFFF"
    )
    assert identity_mismatch(secondary_mask("12345678A511FFFF"), header) == (
        "another meter answered: manufacturer KAM, selected 12345678A511FFFF"
    )
    assert identity_mismatch(secondary_mask("12345678FFFF1C06"), header) == (
        "another meter answered: version 1B, medium 07, selected 12345678FFFF1C06"
    )
    assert "no identification" in (identity_mismatch(secondary_mask("12345678"), None) or "")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of 'address'"):
        MbusConfig.model_validate(
            {"name": "x", "kind": "mbus", "port": "/dev/ttyUSB0", "meters": [{"name": "m"}]}
        )
    with pytest.raises(ValueError, match="share primary address 5"):
        MbusConfig.model_validate(
            {
                "name": "x",
                "kind": "mbus",
                "port": "/dev/ttyUSB0",
                "meters": [{"name": "a", "address": 5}, {"name": "b", "address": 5}],
            }
        )
    with pytest.raises(ValueError, match="baudrate"):
        MbusConfig.model_validate(
            {
                "name": "x",
                "kind": "mbus",
                "port": "p",
                "baudrate": 4800,
                "meters": [{"name": "a", "address": 1}],
            }
        )


def test_sample_config_loads() -> None:
    cfg = load_config(SAMPLE)
    (device,) = [d for d in cfg.devices if d.kind == "mbus"]
    assert isinstance(device, MbusConfig)
    assert len(device.meters) >= 2


# -- through the master factory: a scripted master, no serial port ------------------------------------

_fake_ports = itertools.count()


class ScriptedMaster:
    """An `MbusLink` answering each primary address with telegrams, or raising what it is given."""

    def __init__(self, answers: dict[int, list[Telegram] | Exception]) -> None:
        self.answers = answers
        self.stats = LinkStats()
        self.baudrates: list[int] = []
        self.opens = 0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self.opens += 1
        self._open = True

    def close(self) -> None:
        self._open = False

    def read_telegrams(
        self, address: int, *, max_telegrams: int = 8, key: bytes | None = None
    ) -> list[Telegram]:
        self.stats.requests += 1
        answer = self.answers[address]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def read_secondary(
        self, secondary: str, *, max_telegrams: int = 8, key: bytes | None = None
    ) -> list[Telegram]:
        raise MbusTimeoutError(f"no meter {secondary}")

    def use_baudrate(self, baudrate: int) -> None:
        self.baudrates.append(baudrate)


def water_meter(address: int, litres: float) -> list[Telegram]:
    header = Header("12345678", "KAM", 1, 7, access_number=1, status=0, signature=0)
    volume = Record(b"\x04", b"\x13", b"", litres / 1000, "m3", "volume", "instantaneous", 0, 0, 0)
    return [Telegram(address, 0x08, 0x72, header, [volume])]


def scripted_config(port: str, name: str, addresses: list[int]) -> MbusConfig:
    meters = [{"name": f"m{a}", "address": a} for a in addresses]
    return MbusConfig.model_validate({"name": name, "kind": "mbus", "port": port, "meters": meters})


async def test_meter_failures_are_bad_readings_counted_in_health_without_a_port() -> None:
    master = ScriptedMaster({
        1: water_meter(1, 12_500),
        2: MbusDecodeError("unknown VIF 0x7E"),
        3: MbusTimeoutError("no answer"),
    })  # fmt: skip
    port = f"/dev/fake-mbus-{next(_fake_ports)}"
    driver = MbusDriver(scripted_config(port, "meters", [1, 2, 3]), lambda _config: master)
    await driver.open()
    try:
        got = {r.tag: r for r in await driver.read()}
        health = driver.health()
    finally:
        await driver.aclose()
    assert (got["m1.volume"].value, got["m1.volume"].quality, got["m1.volume"].unit) == (12.5, "good", "m3")
    assert got["m2.status"].quality == "bad"
    assert got["m2.status"].reason == "undecodable telegram: unknown VIF 0x7E"
    assert (got["m3.status"].quality, got["m3.status"].reason) == ("bad", "timeout")
    assert (health.polls, health.meter_reads, health.meter_failures, health.decode_errors) == (1, 1, 2, 1)
    assert (health.open, health.requests) == (True, 3)
    assert health.bus is not None
    assert (health.bus.port, health.bus.users, health.bus.transactions) == (port, 1, 4)  # open + 3 meters
    closed = driver.health()
    assert (closed.open, closed.bus) == (False, None)


async def test_two_sections_on_one_segment_share_the_first_ones_master() -> None:
    first, second = ScriptedMaster({1: water_meter(1, 1_000)}), ScriptedMaster({})
    port = f"/dev/fake-mbus-{next(_fake_ports)}"
    a = MbusDriver(scripted_config(port, "a", [1]), lambda _config: first)
    b = MbusDriver(scripted_config(port, "b", [1]), lambda _config: second)
    await a.open()
    await b.open()
    try:
        assert [r.value for r in await b.read() if r.tag == "m1.volume"] == [1.0]
        assert (first.opens, second.opens, first.stats.requests) == (1, 0, 1)
        bus = b.health().bus
        assert bus is not None
        assert bus.users == 2
    finally:
        await a.aclose()
        await b.aclose()
    assert not first.is_open  # the last user closed it


class _UnpluggedPort:
    """What pyserial hands back for a USB adapter that was pulled: its tcflush fails with EIO."""

    def reset_input_buffer(self) -> None:
        raise termios.error(5, "Input/output error")


def test_a_port_refusing_its_line_settings_or_gone_is_a_driver_io_error() -> None:
    # pyserial lets termios.error through (tcsetattr refusing 8E1: an adapter, or a pty still set
    # up by its last user); the supervisor logged it as a driver crash with a traceback.
    def refusing(*args: Any, **kwargs: Any) -> Any:
        raise termios.error(22, "Invalid argument")

    master = MbusMaster("/dev/ttyUSB0", 2400, serial_factory=refusing)
    with pytest.raises(DriverIOError) as refused:
        master.open()
    assert (
        str(refused.value)
        == "M-Bus port /dev/ttyUSB0: cannot open: the port refuses 2400 Bd 8E1 (Invalid argument)"
    )
    master = MbusMaster("/dev/ttyUSB0", 2400, serial_factory=lambda *a, **k: _UnpluggedPort())
    master.open()
    with pytest.raises(DriverIOError, match=r"M-Bus port /dev/ttyUSB0: .*Input/output error"):
        master.exchange(b"\x10\x5b\x01\x5c\x16")


def test_a_pty_refusing_8e1_says_why_and_to_try_again() -> None:
    # A pty keeps no parity and refuses 8E1 while still set up by its last user; edge-sim resets
    # its own as that user closes it (tests/test_mbus_reopen.py), so a new open is taken.
    def refusing(*args: Any, **kwargs: Any) -> Any:
        raise termios.error(22, "Invalid argument")

    master_fd, slave_fd = os.openpty()
    try:
        master = MbusMaster(os.ttyname(slave_fd), 2400, serial_factory=refusing)
        with pytest.raises(
            DriverIOError,
            match=r"\(Invalid argument\); a pseudo-terminal keeps no parity .* try again\)$",
        ):
            master.open()
    finally:
        os.close(slave_fd)
        os.close(master_fd)


async def test_a_noise_byte_before_every_answer_is_skipped_and_counted(bus: MbusBus) -> None:
    # Level converters often put one spurious byte on the line as a slave starts to send. The
    # master took it for the frame's start: every meter failed every poll, on an intact bus.
    bus.noise = b"\x00"
    cfg = config(bus, [{"name": "a", "address": 1}, {"name": "b", "address": 2}])
    got, driver = await read_once(cfg)
    totaliser = bus._ctx.state().totaliser_m3
    assert got["a.volume"].value == pytest.approx(bus.meter(1).volume_litres(totaliser) / 1000, abs=0.01)
    assert got["b.volume"].value == pytest.approx(bus.meter(2).volume_litres(totaliser) / 1000, abs=0.01)
    health = driver.health()
    assert (health.meter_failures, health.retries, health.frame_errors) == (0, 0, 0)
    assert health.noise_bytes == 4  # SND_NKE and REQ_UD2 answers of two meters


async def test_a_late_answer_from_one_meter_is_never_read_as_the_next_ones(bus: MbusBus) -> None:
    # Meter 1 answers only after the master gave up on it and asked meter 2: its RSP_UD arrived
    # first and was decoded as meter 2's telegram, good readings with meter 1's values.
    bus.inject(1, "late", count=100)
    cfg = config(bus, [
        {"name": "a", "address": 1, "records": [{"quantity": "volume"}]},
        {"name": "b", "address": 2, "records": [{"quantity": "volume"}]},
    ], retries=1)  # fmt: skip
    driver = MbusDriver.from_config(cfg)
    await driver.open()
    try:
        polls = [{r.tag: r for r in await driver.read()} for _ in range(2)]
    finally:
        await driver.aclose()
    totaliser = bus._ctx.state().totaliser_m3
    b_volume = pytest.approx(bus.meter(2).volume_litres(totaliser) / 1000, abs=0.01)
    for got in polls:
        assert (got["a.volume"].quality, got["a.volume"].reason) == ("bad", "timeout")
        assert got["b.volume"].quality == "good"
        assert got["b.volume"].value == b_volume
    assert driver.health().stray_answers == 2


async def test_a_meter_of_its_own_speed_on_a_mixed_segment_is_read_at_it(tmp_path: Path) -> None:
    """A segment at 9600 Bd with one meter at 2400 (old meters keep theirs): without its own
    `baudrate` it never answers; with it, the master switches for that meter and back."""
    async with running_bus(tmp_path / "mixed", baudrates={"4": 2400}) as mixed:
        m4 = mixed.meter(4)
        cfg = bus_config(mixed, [
            {"name": "a", "address": 1},
            {"name": "as_segment", "secondary": f"{m4.spec.ident:08d}"},
            {"name": "own_speed", "address": 4, "baudrate": 2400},
            {"name": "b", "address": 2},
        ], retries=0)  # fmt: skip
        got, driver = await read_once(cfg)
        totaliser = mixed._ctx.state().totaliser_m3
    assert (got["as_segment.status"].quality, got["as_segment.status"].reason) == ("bad", "timeout")
    assert got["own_speed.volume"].value == pytest.approx(m4.volume_litres(totaliser) / 1000, abs=0.01)
    assert got["a.volume"].quality == got["b.volume"].quality == "good"
    assert driver.health().meter_failures == 1
