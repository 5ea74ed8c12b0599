"""Modbus RTU driver against firmware-sim's RTU face on a real pseudo-terminal: reads, writes,
exceptions, timeouts, garbage, a dead unit beside a live one, unplug and back, and arbitrary bytes
on the line never crashing the driver."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.drivers.modbus.config import ModbusRtuConfig
from water_edge.drivers.modbus.poller import MAX_SILENT_REQUESTS
from water_edge.drivers.modbus.rtu import ModbusRtuDriver
from water_edge.sim.faults import CommFault, CommFaults
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import WRITABLE_BASE, Plant, apply_write
from water_edge.sim.rtu import RtuComponent, crc16, frame, handle_pdu


class Line:
    """A sim PLC on a pty, ticking its model, and a way to make drivers for it."""

    def __init__(self, tmp: Path) -> None:
        self.station = PumpStation(5, tick_s=1.0)
        self.plant = Plant()
        self.plant.on_write = lambda name, raw: apply_write(self.station, name, raw)
        self.plant.update(self.station.state)
        self.comm = CommFaults(lambda: self.now)
        self.now = 0.0
        self.sim = RtuComponent()
        self.link = self.sim.open(self.plant, tmp / "ttyRTU", self.comm).detail["link"]

    def driver(self, name: str = "plc", **kw: Any) -> ModbusRtuDriver:
        doc: dict[str, Any] = {
            "name": name, "kind": "modbus_rtu", "port": self.link, "parity": "none",
            "timeout_ms": 150, "retries": 0,
            "tags": [
                {"name": "map_version", "address": 8},
                {"name": "flow", "address": 100, "type": "float32", "unit": "m3/h"},
                {"name": "meter_flow", "unit_id": 2, "table": "input", "address": 0, "type": "float32"},
                {"name": "running", "table": "discrete", "address": 0, "type": "bool"},
            ],
        }  # fmt: skip
        doc.update(kw)
        return ModbusRtuDriver.from_config(doc)


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[Line]:
    sim_line = Line(tmp_path)
    yield sim_line
    await sim_line.sim.stop()


def by_tag(readings: list[Any]) -> dict[str, Any]:
    return {r.tag: r for r in readings}


async def test_reads_the_documented_map_from_two_units(line: Line) -> None:
    driver = line.driver()
    await driver.open()
    try:
        got = by_tag(await driver.read())
    finally:
        await driver.aclose()
    assert got["map_version"].value == 2
    assert got["flow"].quality == "good"
    assert got["flow"].value == pytest.approx(line.station.state.pumps[0].flow_m3h, rel=1e-6)
    assert got["meter_flow"].value == pytest.approx(line.station.state.outflow_m3h, rel=1e-6)
    assert got["running"].value is True


async def test_an_adapter_echoing_every_request_is_read_with_local_echo(line: Line) -> None:
    # A 2-wire RS-485 adapter hands each request back before the answer. Without local_echo the
    # echo of a write (FC 6: the answer repeats the request) was taken for its answer and the real
    # answer for the next request's: "bad response: answer to function 3, request was function 2".
    line.sim.echo = True
    driver = line.driver(local_echo=True)
    await driver.open()
    try:
        first = by_tag(await driver.read())
        await driver.write(1, "holding", WRITABLE_BASE, [250])
        await driver.write(1, "coil", 10, [False, True])
        assert await driver.read_back(1, "holding", WRITABLE_BASE, 1) == [250]
        after = by_tag(await driver.read())
    finally:
        await driver.aclose()
    for got in (first, after):
        assert {r.quality for r in got.values()} == {"good"}, got
        assert got["map_version"].value == 2
        assert got["flow"].value == pytest.approx(line.station.state.pumps[0].flow_m3h, rel=1e-6)
    assert driver.health().errors == 0
    assert line.station.state.setpoints.level_m == 2.5
    assert not line.station.state.pumps[0].enabled


async def test_a_port_named_by_a_link_and_by_its_target_is_one_shared_port(line: Line) -> None:
    # /dev/serial/by-id/... in one device, the /dev/ttyUSB0 it leads to in another: opened twice,
    # the second device found the port busy and stayed down.
    by_link = line.driver("by-link", port=str(line.link))
    by_target = line.driver("by-target", port=os.path.realpath(line.link))
    await by_link.open()
    await by_target.open()
    try:
        for driver in (by_link, by_target):
            got = by_tag(await driver.read())
            assert {r.quality for r in got.values()} == {"good"}, got
    finally:
        await by_link.aclose()
        await by_target.aclose()


async def test_an_echoing_adapter_without_local_echo_is_named_when_the_unit_goes_down(line: Line) -> None:
    # What an engineer meets at install with a 2-wire adapter and local_echo unset: every request
    # comes back as it was sent. The echo of a read of holding 0 (01 03 00 00 00 01 84 0A) holds
    # what reads as the start of a 137-byte frame: the answer behind it is never found, the unit
    # goes down. The readings and the reason say why.
    line.sim.echo = True
    driver = line.driver(tags=[{"name": "status_word", "address": 0}])
    hint = "the request came back as it was sent: the RS-485 adapter echoes, set local_echo = true"
    await driver.open()
    try:
        for _ in range(MAX_SILENT_REQUESTS - 1):
            (reading,) = await driver.read()
            assert (reading.quality, reading.reason) == ("bad", f"timeout ({hint})")
        with pytest.raises(DriverIOError) as down:
            await driver.read()
    finally:
        await driver.aclose()
    assert str(down.value) == f"plc: unit 1 did not answer {MAX_SILENT_REQUESTS} requests in a row: {hint}"


async def test_a_silent_unit_is_named_when_it_goes_down_and_no_echo_is_claimed(line: Line) -> None:
    driver = line.driver(tags=[{"name": "nobody", "unit_id": 9, "address": 8}])
    await driver.open()
    try:
        for _ in range(MAX_SILENT_REQUESTS - 1):
            (reading,) = await driver.read()
            assert reading.reason == "timeout"
        with pytest.raises(DriverIOError) as down:
            await driver.read()
    finally:
        await driver.aclose()
    assert str(down.value) == f"plc: unit 9 did not answer {MAX_SILENT_REQUESTS} requests in a row"


async def test_unmapped_address_is_a_bad_reading_with_the_exception(line: Line) -> None:
    driver = line.driver(tags=[{"name": "hole", "address": 60}])
    await driver.open()
    try:
        (reading,) = await driver.read()
    finally:
        await driver.aclose()
    assert reading.quality == "bad"
    assert reading.reason == "modbus exception 2: illegal data address"


async def test_writes_use_the_writable_area_and_read_back(line: Line) -> None:
    driver = line.driver()
    await driver.open()
    try:
        await driver.write(1, "holding", WRITABLE_BASE, [250])
        await driver.write(1, "coil", 10, [False, True])
        assert await driver.read_back(1, "holding", WRITABLE_BASE, 1) == [250]
        assert await driver.read_back(1, "coil", 10, 2) == [False, True]
        with pytest.raises(DeviceError) as refused:
            await driver.write(1, "holding", 100, [1])  # a measurement
        assert refused.value.code == 2
        with pytest.raises(DeviceError) as out_of_range:
            await driver.write(1, "holding", WRITABLE_BASE, [5])
        assert out_of_range.value.code == 3
        with pytest.raises(ValueError, match="holding"):
            await driver.write(1, "input", 0, [1])  # type: ignore[arg-type]
    finally:
        await driver.aclose()
    assert line.station.state.setpoints.level_m == 2.5
    assert not line.station.state.pumps[0].enabled


async def test_dead_unit_does_not_stall_a_live_one_on_the_same_port(line: Line) -> None:
    live = line.driver("live", tags=[{"name": "v", "address": 8}])
    dead = line.driver("dead", unit_id=9, timeout_ms=200, tags=[{"name": "v", "address": 8}])
    await live.open()
    await dead.open()
    try:
        started = time.monotonic()
        results = await asyncio.gather(dead.read(), live.read(), dead.read(), live.read())
        elapsed = time.monotonic() - started
    finally:
        await live.aclose()
        await dead.aclose()
    assert [r[0].reason for r in results[0::2]] == ["timeout", "timeout"]
    assert [r[0].value for r in results[1::2]] == [2, 2]
    # live reads waited at most for the dead unit's own timeouts (2 x 200 ms), not more
    assert elapsed < 2 * 0.2 + 1.0


async def test_silence_and_garbage_become_timeouts_then_recover(line: Line) -> None:
    driver = line.driver(tags=[{"name": "v", "address": 8}])
    await driver.open()
    try:
        line.comm.add(CommFault("silence", 10.0, 5.0, "modbus_rtu"))
        line.comm.add(CommFault("garbage", 20.0, 5.0, "modbus_rtu", 1.0))
        line.now = 12.0
        assert (await driver.read())[0].reason == "timeout"
        line.now = 22.0
        assert (await driver.read())[0].quality == "bad"
        line.now = 30.0
        assert (await driver.read())[0].value == 2
        assert line.sim.stats["garbage"] >= 1
        # silence is a timeout; garbage that frames no answer is counted apart from it
        assert driver.health().timeouts >= 1
        assert driver.health().bad_frames >= 1
    finally:
        await driver.aclose()


async def test_a_late_answer_is_not_taken_for_the_next_request(line: Line) -> None:
    # A slave that answers after the timeout once (busy writing its EEPROM, a slow gateway):
    # without a transaction id, its late answer to `a` must not become `b`'s value.
    driver = line.driver(tags=[{"name": "a", "address": 8}, {"name": "b", "address": WRITABLE_BASE}])
    await driver.open()
    try:
        await driver.write(1, "holding", WRITABLE_BASE, [250])
        line.comm.add(CommFault("latency", 10.0, 1.0, "modbus_rtu", 0.25))  # timeout is 0.15 s
        line.now = 10.5
        polls = [by_tag(await driver.read())]
        line.now = 20.0
        polls += [by_tag(await driver.read()) for _ in range(3)]
    finally:
        await driver.aclose()
    assert polls[0]["a"].reason == "timeout"
    for poll in polls:
        assert poll["a"].value in (None, 2), poll
        assert poll["b"].value in (None, 250), poll
    assert (polls[-1]["a"].value, polls[-1]["b"].value) == (2, 250)


async def test_an_answer_that_does_not_fit_its_request_is_bad_not_decoded(line: Line) -> None:
    # Slower than the timeout and the wait after it: the answer to the float `a` (two registers,
    # asked twice) arrives while the one-register `b` is asked for. It used to be cut to one
    # register and reported as b's good value; its size gives it away.
    driver = line.driver(
        tags=[{"name": "a", "address": 20, "type": "float32"}, {"name": "b", "address": WRITABLE_BASE}],
        timeout_ms=200,
        retries=1,
    )
    await driver.open()
    try:
        line.comm.add(CommFault("latency", 10.0, 1.0, "modbus_rtu", 0.5))
        line.now = 10.5
        first = by_tag(await driver.read())
        line.now = 20.0
        after = [by_tag(await driver.read()) for _ in range(3)]
    finally:
        await driver.aclose()
    assert first["a"].reason == "timeout"
    assert (first["b"].quality, first["b"].value) == ("bad", None)
    assert first["b"].reason == "bad response: 2 registers for a request of 1"
    demand = pytest.approx(line.station.state.demand_m3h, rel=1e-6)
    for poll in after:
        assert poll["a"].value is None or poll["a"].value == demand, poll
        assert poll["b"].value in (None, 400), poll  # the set-point, 4.0 m in centimetres
    assert after[-1]["a"].value == demand
    assert driver.health().errors >= 2


async def test_three_silent_requests_raise_driver_io_error_until_the_unit_answers(line: Line) -> None:
    driver = line.driver(tags=[{"name": "v", "address": 8}])
    await driver.open()
    line.comm.add(CommFault("silence", 0.0, 100.0, "modbus_rtu"))
    try:
        assert (await driver.read())[0].reason == "timeout"
        assert (await driver.read())[0].reason == "timeout"
        with pytest.raises(DriverIOError, match="did not answer 3 requests"):
            await driver.read()
        # Reopening a serial port always works: a unit still silent after the back-off is still
        # down at its first request (the supervisor must not see a read that "worked" and flap).
        await driver.open()
        # the same reason as the first time: every stand-in reading carries it
        with pytest.raises(DriverIOError, match="did not answer 3 requests"):
            await driver.read()
        line.now = 150.0  # the silence is over
        await driver.open()
        assert (await driver.read())[0].value == 2
        line.comm.add(CommFault("silence", 150.0, 100.0, "modbus_rtu"))
        assert (await driver.read())[0].reason == "timeout"  # an answer restarted the count
    finally:
        await driver.aclose()


async def test_unplugged_port_raises_and_reopens_when_back(line: Line) -> None:
    driver = line.driver(tags=[{"name": "v", "address": 8}])
    await driver.open()
    first_path = os.path.realpath(line.link)
    line.sim.unplug()
    with pytest.raises(DriverIOError):  # noqa: PT012 - the loss shows within a few transactions
        for _ in range(3):
            await driver.read()
    line.sim.plug()
    await driver.aclose()
    await driver.open()
    try:
        assert (await driver.read())[0].value == 2
    finally:
        await driver.aclose()
    assert os.path.realpath(line.link) != first_path or os.path.exists(first_path)


async def test_a_line_plugged_again_while_plugged_is_still_served(line: Line) -> None:
    # The scenario's unplug watch can put a line back before a test's (or a fault's) own plug: the
    # old master's descriptor was closed while still watched, its number came back with the new
    # pair, and the loop never read the new line.
    line.sim.plug()
    line.sim.plug()
    driver = line.driver(tags=[{"name": "v", "address": 8}])
    await driver.open()
    try:
        assert (await driver.read())[0].value == 2
    finally:
        await driver.aclose()


async def test_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    driver = ModbusRtuDriver.from_config(
        {
            "name": "x",
            "kind": "modbus_rtu",
            "port": str(tmp_path / "ttyUSB9"),
            "tags": [{"name": "v", "address": 0}],
        }
    )
    with pytest.raises(DriverIOError, match="no such device"):
        await driver.open()


async def test_a_port_that_refuses_the_line_settings_says_so(line: Line) -> None:
    # A pty keeps no parity (the kernel drops it and glibc reports EINVAL): the technician was sent
    # to look for another program or a permission when the parity was what to check.
    driver = line.driver(tags=[{"name": "v", "address": 8}], parity="even")
    with pytest.raises(DriverIOError) as refused:
        await driver.open()
    assert str(refused.value) == (
        f"plc: serial port {line.link} refuses the line settings 19200 8E1 (Invalid argument): check "
        "baudrate, parity and stopbits against the device and its adapter (a pseudo-terminal, as "
        'edge-sim\'s, takes parity = "none" only)'
    )


async def test_conflicting_line_settings_on_one_port_are_refused(line: Line) -> None:
    a = line.driver("a")
    b = line.driver("b", baudrate=9600)
    await a.open()
    try:
        with pytest.raises(DriverIOError, match="line settings"):
            await b.open()
    finally:
        await a.aclose()


def test_config_checks_line_settings_and_inter_frame_time() -> None:
    cfg = ModbusRtuConfig.model_validate(
        {"name": "x", "kind": "modbus_rtu", "port": "/dev/ttyUSB0", "tags": [{"name": "v", "address": 0}]}
    )
    assert (cfg.baudrate, cfg.parity, cfg.stopbits, cfg.bytesize) == (19200, "even", 1, 8)
    assert cfg.inter_frame_s == pytest.approx(3.5 * 11 / 19200)
    with pytest.raises(ValueError, match="baudrate"):
        ModbusRtuConfig.model_validate({**cfg.model_dump(), "baudrate": 12345})
    with pytest.raises(ValueError, match="extra"):
        ModbusRtuConfig.model_validate({**cfg.model_dump(), "baud": 9600})


def test_sim_frames_have_valid_crc_and_refuse_other_function_codes() -> None:
    plant = Plant()
    assert crc16(b"\x01\x03\x00\x08\x00\x01") == 0xC805  # sent as 05 C8, as mbpoll sends it
    assert handle_pdu(plant, 1, bytes([8, 0, 0, 0, 0])) == bytes([0x88, 1])  # diagnostics: no
    assert handle_pdu(plant, 1, bytes([3, 0, 8, 0, 200])) == bytes([0x83, 3])  # too many
    body = frame(1, handle_pdu(plant, 1, bytes([3, 0, 8, 0, 1])))
    assert crc16(body[:-2]) == int.from_bytes(body[-2:], "little")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.binary(min_size=1, max_size=64))
def test_arbitrary_bytes_on_the_line_never_crash_the_driver(tmp_path: Path, noise: bytes) -> None:
    async def scenario() -> list[Any]:
        line = Line(tmp_path)
        real = line.sim._serve

        async def noisy(data: bytes) -> None:
            os.write(line.sim._link.master_fd, noise)  # type: ignore[union-attr]
            line.sim._serve = real  # type: ignore[method-assign]

        line.sim._serve = noisy  # type: ignore[method-assign]
        driver = line.driver(tags=[{"name": "v", "address": 8}], timeout_ms=60)
        await driver.open()
        try:
            first = await driver.read()
            # The stimulus, not a wait: the quiet gap a master leaves on the line between two
            # requests; the claim is about the very next request, so nothing is retried.
            await asyncio.sleep(0.01)
            second = await driver.read()
        finally:
            await driver.aclose()
            await line.sim.stop()
        return first + second

    first, second = asyncio.run(scenario())
    assert first.quality in ("good", "bad")  # whatever the noise was, a reading came back
    assert second.value == 2  # and the line recovered for the next request


async def test_a_noise_byte_before_every_answer_is_skipped(line: Line) -> None:
    # RS-485 transceivers often put one 0x00 (or 0xFF) on the line as it turns round. pymodbus's
    # framer threw the whole buffer away when that byte did not start a frame with a good CRC:
    # every intact answer was a timeout, and the unit down for good.
    line.sim.answer_prefix = b"\x00"
    driver = line.driver()
    await driver.open()
    try:
        polls = [by_tag(await driver.read()) for _ in range(2)]
    finally:
        await driver.aclose()
    for got in polls:
        assert {r.quality for r in got.values()} == {"good"}, got
        assert got["map_version"].value == 2
        assert got["flow"].value == pytest.approx(line.station.state.pumps[0].flow_m3h, rel=1e-6)
    assert driver.health().errors == 0


@pytest.mark.parametrize("echo", [False, True], ids=["glitch", "echo-and-glitch-with-local-echo"])
async def test_a_noise_byte_before_an_exception_answer_is_skipped(line: Line, echo: bool) -> None:
    # 0x00 in front of unit 2's exception answer (02 83 02 ..) reads as unit 0 with 131 bytes of
    # discrete inputs: the framer waited for them, and the exception was a timeout. A candidate of
    # a unit not asked is passed over, as one whose CRC fails (docs/drivers/modbus_rtu.md).
    line.sim.answer_prefix, line.sim.echo = b"\x00", echo
    tags = [{"name": "map_version", "address": 8}, {"name": "unmapped", "unit_id": 2, "address": 0}]
    driver = line.driver(tags=tags, local_echo=echo)
    await driver.open()
    try:
        polls = [by_tag(await driver.read()) for _ in range(2)]
    finally:
        await driver.aclose()
    for got in polls:
        assert got["map_version"].value == 2
        assert (got["unmapped"].quality, got["unmapped"].reason) == (
            "bad",
            "modbus exception 2: illegal data address",
        )
    assert driver.health().timeouts == 0


async def test_a_scaled_integer_arrives_as_the_decimal_it_is(line: Line) -> None:
    # The RTU driver decodes with the TCP driver's codec: pump_count 3 with scale 0.1 is 0.3, not
    # 0.30000000000000004.
    driver = line.driver(tags=[{"name": "pumps_tenths", "address": 9, "type": "uint16", "scale": 0.1}])
    await driver.open()
    try:
        (reading,) = await driver.read()
    finally:
        await driver.aclose()
    assert repr(reading.value) == "0.3"


async def test_a_truncated_answer_is_told_from_no_answer(line: Line) -> None:
    # A cut-off answer (noise, a loose wire, a wrong speed: bytes came, no whole frame) read as
    # `timeout`, the same as a unit that is not there (wrong address or baud: nothing came), so a
    # technician could not tell which to look for. It is its own reason and its own count now.
    real = line.sim._serve

    async def cut_short(data: bytes) -> None:
        answer = frame(data[0], handle_pdu(line.plant, data[0], data[1:-2]))
        os.write(line.sim._link.master_fd, answer[:-3])  # type: ignore[union-attr]

    driver = line.driver(tags=[{"name": "v", "address": 8}])
    await driver.open()
    try:
        line.sim._serve = cut_short  # type: ignore[method-assign]
        cut = (await driver.read())[0]
        line.comm.add(CommFault("silence", 0.0, 100.0, "modbus_rtu"))
        line.sim._serve = real  # type: ignore[method-assign]
        silent = (await driver.read())[0]
    finally:
        await driver.aclose()
    assert (cut.quality, cut.value) == ("bad", None)
    assert cut.reason == (
        "no valid answer: bytes came back that are no whole frame with a good CRC "
        "(noise on the line, wiring or line settings?)"
    )
    assert silent.reason == "timeout"
    health = driver.health()
    assert (health.timeouts, health.bad_frames, health.errors) == (1, 1, 2)
    assert "bad frames 1" in health.status_lines()[0]
