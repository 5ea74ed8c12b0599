"""The OPC UA driver against what real servers do that a well-behaved one does not: a subscription
the server ends or stops serving while the session stays, status codes, a wrong device clock, a
node deleted under a monitored item, a restart that renumbers namespaces and retypes a variable.
firmware-sim's server on a real socket, in this process so that a test can inject the fault."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import pytest_asyncio

from tests.support.opcua_sim import Sim, opcua_station
from tests.support.testing import eventually
from tests.test_opcua_driver import collect
from water_edge.agent.supervisor import DeviceRunner
from water_edge.core.errors import DriverIOError
from water_edge.core.logs import AsyncuaDeadConnectionFilter
from water_edge.core.reading import Event, Reading
from water_edge.drivers.opcua.config import OpcUaConfig
from water_edge.drivers.opcua.driver import OpcUaDriver
from water_edge.sim.opcua_server import NAMESPACE_URI

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

YEAR_S = 365 * 86_400


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sim]:
    async with opcua_station(tmp_path_factory.mktemp("opcua-faults") / "sim") as running:
        yield running


def driver(url: str, tags: list[dict[str, Any]], **extra: Any) -> OpcUaDriver:
    return OpcUaDriver.from_config(
        OpcUaConfig.model_validate({"name": "ua", "kind": "opcua", "endpoint": url, "tags": tags, **extra})
    )


FAST = {"publishing_interval_ms": 100, "sampling_interval_ms": 100}
TICKS = {"name": "ticks", "node": "ns=2;s=station.ticks"}


@dataclasses.dataclass
class Arrived:
    at: float  # time.monotonic() when the runner handed it on
    wall_ns: int  # time.time_ns() then
    reading: Reading


@contextlib.asynccontextmanager
async def running(drv: OpcUaDriver) -> AsyncIterator[tuple[DeviceRunner, list[Arrived]]]:
    """The driver under the agent's supervisor (reopen with a short backoff), what it hands on."""
    got: list[Arrived] = []
    events: list[Event] = []

    async def on_readings(_stream: str, batch: list[Reading]) -> None:
        now, wall = time.monotonic(), time.time_ns()
        got.extend(Arrived(now, wall, r) for r in batch)

    async def on_event(event: Event) -> None:
        events.append(event)

    runner = DeviceRunner(drv.config, drv, on_readings, on_event, backoff_min_s=0.2, backoff_max_s=0.5)
    task = asyncio.create_task(runner.run())
    try:
        yield runner, got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def first(got: list[Arrived], since: float, test: Callable[[Reading], bool]) -> Arrived | None:
    return next((a for a in got if a.at >= since and test(a.reading)), None)


# --- 2. the session stays, the subscription goes ---------------------------------------------------


@pytest.mark.parametrize("status", [None, "BadTimeout"], ids=["silently", "with-status-change"])
async def test_a_subscription_the_server_ends_is_noticed_at_once_and_made_again(
    sim: Sim, status: str | None
) -> None:
    # A server whose subscription lifetime ran out, or that reset its subscriptions, keeps the
    # session: reads still work, only the data stops. Without a status change the only sign is
    # BadNoSubscription on the next publish (asyncua's publish loop then ends without a word).
    drv = driver(sim.url, [TICKS], **FAST)
    async with running(drv) as (runner, got):
        await eventually(lambda: sum(a.reading.quality == "good" for a in got) >= 3, 10)
        ended_at = time.monotonic()
        assert await sim.component.end_subscriptions(status) >= 1

        def silent() -> str:
            since = sum(a.at >= ended_at for a in got)
            return (
                f"no bad reading {time.monotonic() - ended_at:.1f} s after the server ended the "
                f"subscription: {since} readings since, driver connected={drv.health().connected}, "
                f"runner state {runner.stats.state}"
            )

        lost = await eventually(lambda: first(got, ended_at, lambda r: r.quality == "bad"), 20, silent)
        resumed = await eventually(
            lambda: first(got, lost.at, lambda r: r.quality == "good"), 10, "readings again"
        )
    noticed_s = lost.at - ended_at
    assert noticed_s < 2.0, noticed_s
    assert ("BadNoSubscription" if status is None else status) in (lost.reading.reason or "")
    assert resumed.at - lost.at < 5.0
    assert runner.stats.reconnects == 1


async def test_a_subscription_that_stops_publishing_is_noticed_within_stale_after(sim: Sim) -> None:
    # The TCP connection and the session stay up and Read answers, but no publish response comes
    # any more (no data, no keep-alive): a hung publish engine. Default settings, as a user has them.
    drv = driver(sim.url, [TICKS])
    await drv.open()
    try:
        await collect(drv, bool)
        sim.component.hold_publishes()
        held_at = time.monotonic()
        try:
            async with asyncio.timeout(30):
                with pytest.raises(DriverIOError) as lost:
                    async for _ in drv.stream():
                        pass
        except TimeoutError:
            pytest.fail(
                f"still no loss noticed {time.monotonic() - held_at:.1f} s after the server stopped "
                f"publishing; driver connected={drv.health().connected}, "
                f"keep-alives {drv.health().keepalives}"
            )
        noticed_s = time.monotonic() - held_at
    finally:
        sim.component.hold_publishes(False)
        await drv.aclose()
    # The driver asks for a keep-alive every 5 s and counts 3 missed ones as lost.
    assert 10.0 <= noticed_s < 20.0, noticed_s
    assert "subscription silent for 15 s" in str(lost.value)


# --- 3. status codes are counted --------------------------------------------------------------------


async def test_uncertain_and_bad_values_are_counted_in_the_drivers_status(sim: Sim) -> None:
    drv = driver(sim.url, [
        {"name": "flow", "node": "ns=2;s=pump1.flow"},
        {"name": "speed", "node": "ns=2;s=pump1.speed"},
        TICKS,
    ], **FAST)  # fmt: skip
    await drv.open()
    try:
        # held still, so that no further change is on its way when the counts are compared
        sim.component.serve("pump1.speed", 1234.5)
        sim.component.override("pump1.flow", "BadSensorFailure")
        sim.component.override("pump1.speed", "UncertainLastUsableValue")

        def both(readings: list[Reading]) -> bool:
            flows = [r.quality for r in readings if r.tag == "flow"]
            speeds = [r.quality for r in readings if r.tag == "speed"]
            return "bad" in flows and "uncertain" in speeds

        pushed = await collect(drv, both)
        polled = await drv.read()
        health = drv.health()
    finally:
        await drv.aclose()
        sim.component.override("pump1.flow", None)
        sim.component.override("pump1.speed", None)
        sim.component.serve("pump1.speed", None)
    seen = pushed + polled
    assert health.bad_values == sum(r.quality == "bad" for r in seen) >= 2
    assert health.uncertain_values == sum(r.quality == "uncertain" for r in seen) >= 2
    assert f"values uncertain {health.uncertain_values}  bad {health.bad_values}" in health.status_lines()


# --- 4. a device clock that is wrong ------------------------------------------------------------------


async def _offsets(sim: Sim, drv: OpcUaDriver, source_s: float | None, server_s: float | None) -> list[float]:
    """Reading time minus arrival time (s) of the ticks written after the sim's clock was set so."""
    sim.component.clock(source_s, server_s)
    changed = time.monotonic()
    offsets: list[float] = []
    async with asyncio.timeout(10):
        async for batch in drv.stream():
            # Batches queued before come out at once: only those that arrive while the stream
            # waits are timed, from half a second after the change (the sim writes every 0.1 s).
            if time.monotonic() - changed < 0.5:
                continue
            arrival = time.time_ns()
            offsets += [(r.ts_ns - arrival) / 1e9 for r in batch if r.tag == "ticks"]
            if len(offsets) >= 3:
                return offsets
    raise AssertionError("the stream ended")


async def test_a_device_clock_years_off_or_in_1970_does_not_stamp_the_readings(sim: Sim) -> None:
    drv = driver(sim.url, [TICKS], **FAST)
    await drv.open()
    try:
        ahead = await _offsets(sim, drv, 5 * YEAR_S, 5 * YEAR_S)  # a PLC clock 5 years ahead
        ahead_health = drv.health()
        reset = -(time.time() - 10)  # an RTC reset to 1970-01-01 00:00:10
        in_1970 = await _offsets(sim, drv, reset, reset)
        polled = await drv.read()  # a Read under the same clock
        read_at = time.time_ns()
        far = await _offsets(sim, drv, 7900 * YEAR_S, 7900 * YEAR_S)  # year 99xx: past what is storable
        slightly = await _offsets(sim, drv, 30.0, 30.0)  # within clock_tolerance_ms: the device's time
        none = await _offsets(sim, drv, None, None)  # no timestamps at all: arrival
        server_only = await _offsets(sim, drv, None, 0.0)
    finally:
        sim.component.clock()
        await drv.aclose()
    for name, offsets in (
        ("5 years ahead", ahead),
        ("1970", in_1970),
        ("year 99xx", far),
        ("none", none),
        ("server", server_only),
    ):
        assert all(abs(o) < 2.0 for o in offsets), f"{name}: reading time - arrival = {offsets} s"
    assert all(29.0 < o < 31.0 for o in slightly), slightly
    assert abs(polled[0].ts_ns - read_at) < 2e9, (polled[0].ts_ns - read_at) / 1e9
    assert all(r.quality == "good" for r in polled)
    assert ahead_health.clock_replaced >= 3
    assert ahead_health.device_clock_offset_s is not None
    assert abs(ahead_health.device_clock_offset_s - 5 * YEAR_S) < 5
    assert any(line.startswith("device clock off by +15768") for line in ahead_health.status_lines())


async def test_a_value_unchanged_since_the_server_started_is_no_wrong_clock_and_a_clock_behind_still_is(
    sim: Sim,
) -> None:
    # firmware-sim stamps a value when it changes, source and server timestamp alike, as asyncua's
    # own server and many PLC servers do: a constant (pump1.starts) carries the sim's start time at
    # every Read and in the first data change. The driver took that for a device clock off by
    # minutes ("device clock off by -513 s: 6 values stamped on arrival", opcua.device_clock_off)
    # although sim and gateway share one clock. Equal, old timestamps are a value unchanged since
    # then; a time that moves yet stays far back is a clock behind, and still said.
    constants = [{"name": n, "node": f"ns=2;s=pump1.{n}"} for n in ("starts", "status", "enable")]
    drv = driver(sim.url, [*constants, TICKS], clock_tolerance_ms=1000, **FAST)
    await asyncio.sleep(1.5)  # the constants' time, the sim's start, is further back than 1 s
    await drv.open()
    try:
        polled = await drv.read()
        read_at = time.time_ns()
        streamed = await collect(drv, lambda rs: sum(r.tag == "ticks" for r in rs) >= 5)
        unchanged = drv.health()
        behind = await _offsets(sim, drv, -3600.0, -3600.0)  # a PLC clock an hour behind
        behind_health = drv.health()
    finally:
        sim.component.clock()
        await drv.aclose()
    assert unchanged.clock_replaced == 0, unchanged.status_lines()
    assert unchanged.device_clock_offset_s is None
    assert not [line for line in unchanged.status_lines() if "device clock" in line]
    for reading in [*polled, *(r for r in streamed if r.tag != "ticks")]:
        assert reading.quality == "good", reading
        assert abs(reading.ts_ns - read_at) < 10e9, "stamped when the gateway got it, not at the sim's start"
    assert {r.tag for r in streamed} >= {"starts", "status", "enable"}, "each in the first data change"
    assert all(abs(o) < 2.0 for o in behind), behind
    assert behind_health.clock_replaced >= 2
    assert behind_health.device_clock_offset_s is not None
    assert abs(behind_health.device_clock_offset_s + 3600) < 5
    assert any(line.startswith("device clock off by -36") for line in behind_health.status_lines())


# --- 5. a node deleted while monitored; 1 + 5. a restart that renumbers and retypes -----------------


async def test_a_node_deleted_while_subscribed_reads_bad_not_its_last_value(sim: Sim) -> None:
    drv = driver(sim.url, [{"name": "flow", "node": "ns=2;s=pump1.flow"}, TICKS], **FAST)
    await drv.open()
    try:
        before = await collect(drv, lambda rs: any(r.tag == "flow" for r in rs))
        await sim.component.delete_point("pump1.flow")
        after = await collect(
            drv, lambda rs: any(r.tag == "flow" for r in rs) and sum(r.tag == "ticks" for r in rs) > 5
        )
        health = drv.health()
    finally:
        await drv.aclose()
        # the point comes back with a restart
        await sim.component.stop()
        await sim.component.start(sim.ctx)
    assert [r.quality for r in before if r.tag == "flow"] == ["good"]
    flow = [r for r in after if r.tag == "flow"]
    assert [(r.quality, r.value, r.reason) for r in flow] == [("bad", None, "BadNodeIdUnknown")]
    assert all(r.quality == "good" for r in after if r.tag == "ticks")
    assert health.bad_values == 1


async def test_a_restart_that_renumbers_namespaces_and_retypes_a_variable(sim: Sim) -> None:
    # The server process restarts on the same endpoint after a project download: the station's
    # namespace moves from index 2 to 3 and station.uptime changed from UInt32 to Float.
    drv = driver(sim.url, [
        {"name": "by_uri", "node": f"nsu={NAMESPACE_URI};s=station.ticks"},
        {"name": "by_index", "node": "ns=2;s=station.ticks"},
        {"name": "uptime", "node": f"nsu={NAMESPACE_URI};s=station.uptime"},
    ], **FAST)  # fmt: skip
    renumbered = dataclasses.replace(sim.ctx, options={"port": 0, "extra_namespaces": 1})
    try:
        async with running(drv) as (runner, got):
            await eventually(lambda: sum(a.reading.tag == "by_uri" for a in got) >= 3, 10)
            await eventually(lambda: first(got, 0, lambda r: r.tag == "uptime"), 10)
            stopped_at = time.monotonic()
            await sim.component.stop()
            lost = await eventually(lambda: first(got, stopped_at, lambda r: r.quality == "bad"), 10)
            await eventually(lambda: runner.stats.failures >= 2, 10, what="a failed reopen")
            sim.component.retype("station.uptime", "Float")
            await sim.component.start(renumbered)
            resumed = await eventually(lambda: first(got, lost.at, lambda r: r.quality == "good"), 15)
            await eventually(
                lambda: sum(a.at >= resumed.at and a.reading.tag == "by_uri" for a in got) >= 5, 15
            )
            await eventually(lambda: first(got, resumed.at, lambda r: r.tag == "uptime"), 10)
    finally:
        await sim.component.stop()
        sim.component.retype("station.uptime", None)
        await sim.component.start(sim.ctx)
    assert lost.at - stopped_at < 2.0
    gap = [a.reading for a in got if lost.at <= a.at < resumed.at]
    assert gap
    assert all(r.quality == "bad" and r.value is None for r in gap)
    old = [a.reading for a in got if a.at < stopped_at]
    new = [a.reading for a in got if a.at >= resumed.at]
    assert {type(r.value) for r in old if r.tag == "uptime"} == {int}
    uptime = [r for r in new if r.tag == "uptime"]
    assert uptime
    assert all(r.quality == "good" and type(r.value) is float for r in uptime), uptime
    ticks = [cast(float, r.value) for r in new if r.tag == "by_uri"]
    assert all(r.quality == "good" for r in new if r.tag == "by_uri")
    assert ticks == sorted(ticks)
    assert ticks[0] > max(cast(float, r.value) for r in old if r.tag == "by_uri")
    # ns=2 is now another namespace: that tag is bad with the server's reason, not another's value
    by_index = [a.reading for a in got if a.at >= lost.at and a.reading.tag == "by_index"]
    assert all(r.quality == "bad" for r in by_index)
    assert "BadNodeIdUnknown" in (by_index[-1].reason or "")


# --- 3. a server that hangs --------------------------------------------------------------------


class FreezingProxy:
    """TCP between the driver and the server that can hang as a stalled PLC does: connections
    stay open, nothing passes. Counts the driver-side connections still open."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = asyncio.Event()
        self.open_clients = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.open_clients += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
        finally:
            self.open_clients -= 1
            for w in (client_w, server_w):
                w.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.frozen.is_set():
                continue  # swallowed: a hung peer reads nothing and answers nothing
            sink.write(data)
            await sink.drain()
        sink.close()  # EOF on one side: the whole connection ends

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_session_on_a_hung_server_is_closed_not_left_open_at_every_hang(sim: Sim) -> None:
    """asyncua closes its socket only once CloseSession is answered; a PLC that hangs never
    answers, and every hang left one connection (one session of the PLC's few) open for good."""
    proxy = FreezingProxy(int(sim.url.rsplit(":", 1)[1]))
    port = await proxy.start()
    try:
        drv = driver(f"opc.tcp://127.0.0.1:{port}", [TICKS], mode="poll")  # requests time out after 5 s
        await drv.open()
        assert [r.quality for r in await drv.read()] == ["good"]
        assert proxy.open_clients == 1
        proxy.frozen.set()
        await drv.aclose()  # what the supervisor does when the device is down
        await eventually(lambda: proxy.open_clients == 0, 5, "the hung session's connection closed")
    finally:
        await proxy.stop()


async def test_a_connect_cancelled_on_a_hung_server_leaves_no_connection(sim: Sim) -> None:
    """The supervisor's guard cancels an open that hangs: the half-made connection is closed."""
    proxy = FreezingProxy(int(sim.url.rsplit(":", 1)[1]))
    port = await proxy.start()
    try:
        proxy.frozen.set()  # hung before the driver comes: the Hello is never answered
        drv = driver(f"opc.tcp://127.0.0.1:{port}", [TICKS], mode="poll")
        opening = asyncio.create_task(drv.open())
        await eventually(lambda: proxy.open_clients == 1, 5, "the driver connecting")
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
        await eventually(lambda: proxy.open_clients == 0, 5, "the half-made connection closed")
    finally:
        await proxy.stop()


async def test_a_text_value_of_megabytes_is_a_bad_reading_not_megabytes_in_the_outbox(sim: Sim) -> None:
    """An untrusted server's 40 MB string filled the outbox in seconds, evicting other devices'
    buffered readings: a text past MAX_TEXT_CHARS is a bad reading, pushed or polled."""
    drv = driver(sim.url, [{"name": "name", "node": "ns=2;s=station.name"}, TICKS], **FAST)
    await drv.open()
    try:
        sim.component.serve("station.name", "x" * 2_000_000)

        def long_name(readings: list[Reading]) -> bool:
            return any(r.tag == "name" and r.quality == "bad" for r in readings)

        pushed = await collect(drv, long_name)
        polled = await drv.read()
    finally:
        await drv.aclose()
        sim.component.serve("station.name", None)
    for got in (next(r for r in pushed if r.tag == "name" and r.quality == "bad"),
                next(r for r in polled if r.tag == "name")):  # fmt: skip
        assert (got.value, got.quality) == (None, "bad")
        assert got.reason == "value too long: 2000000 characters (at most 4096)"
    assert any(r.tag == "ticks" and r.quality == "good" for r in polled)


async def _to_the_end(stream: AsyncIterator[list[Reading]]) -> None:
    async for _ in stream:
        pass


class _Journal(logging.Handler):
    """asyncua's records as the agent's log handler passes them (`core.logs`: the records about a
    connection already lost are left out there), from warning up."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(AsyncuaDeadConnectionFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_server_that_hangs_while_subscribed_puts_no_asyncua_traceback_in_the_journal(
    sim: Sim,
) -> None:
    """A PLC that hangs (or a network path that stops passing packets, the TCP connection still
    up): the driver reports the loss (`opcua.connection_lost`, then `driver.down`), and asyncua
    logged its own traceback at error level: its teardown sent CloseSession to the hung server,
    which timed out (`close_session raised during disconnect; continuing teardown`, TimeoutError),
    read by technicians as the agent crashing. The socket of a connection known lost is now
    closed first: nothing is sent to the server, so nothing times out."""
    proxy = FreezingProxy(int(sim.url.rsplit(":", 1)[1]))
    port = await proxy.start()
    journal = _Journal()
    asyncua_log = logging.getLogger("asyncua")
    asyncua_log.addHandler(journal)
    try:
        drv = driver(f"opc.tcp://127.0.0.1:{port}", [TICKS], request_timeout_ms=1000, **FAST)
        await drv.open()
        stream = drv.stream()
        assert [r.quality for r in await anext(stream)] == ["good"]
        proxy.frozen.set()
        with pytest.raises(DriverIOError, match="ua: connection lost: no answer in time"):
            await _to_the_end(stream)
        await drv.aclose()  # what the supervisor does when the device is down
        await eventually(lambda: proxy.open_clients == 0, 5, "the hung session's connection closed")
    finally:
        asyncua_log.removeHandler(journal)
        await proxy.stop()
    said = [(r.levelname, r.name, r.getMessage()) for r in journal.records]
    assert not [line for line in said if line[0] in ("ERROR", "CRITICAL")], said
