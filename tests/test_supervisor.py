"""The device runner: fixed-rate polls, bad readings instead of gaps, down/up events, restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.agent_proc import running_agent
from tests.support.mbus_sim import bus_config, running_bus
from tests.support.testing import FAKE_DEVICE, eventually, write_agent_config
from water_edge.agent.learnt_tags import LearntTags, SpacedSaves
from water_edge.agent.supervisor import DeviceRunner
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Event, Reading, now_ns
from water_edge.drivers.base import TagInfo
from water_edge.drivers.fake import FakeConfig, FakeDriver, FakeHealth
from water_edge.drivers.mbus.driver import MbusDriver


class Collector:
    def __init__(self) -> None:
        self.readings: list[tuple[str, Reading]] = []
        self.events: list[Event] = []

    async def on_readings(self, stream: str, readings: list[Reading]) -> None:
        self.readings.extend((stream, r) for r in readings)

    async def on_event(self, event: Event) -> None:
        self.events.append(event)


def fake_config(**extra: Any) -> FakeConfig:
    return FakeConfig.model_validate(
        {
            "name": "dev",
            "kind": "fake",
            "poll_interval_ms": 20,
            "tags": [{"name": "a", "unit": "bar", "offset": 2.5}, {"name": "b"}],
            **extra,
        }
    )


async def run_until(runner: DeviceRunner, condition: Callable[[], object], what: str) -> None:
    """Run the runner until `condition()` holds, then stop it (as the agent does, by cancelling)."""
    task = asyncio.create_task(runner.run())
    try:
        await eventually(condition, 10, what=what)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_polls_at_the_configured_rate_into_the_device_stream() -> None:
    sink = Collector()
    config = fake_config(stream="station")
    started = time.monotonic()  # before the runner: its schedule starts when it is made
    runner = DeviceRunner(config, FakeDriver(config), sink.on_readings, sink.on_event)
    await run_until(runner, lambda: runner.stats.polls >= 20, "20 polls")
    elapsed = time.monotonic() - started
    polls = runner.stats.polls
    # n polls 20 ms apart span n - 1 periods: never faster than that, and not far slower
    # (slack for a loaded CI machine).
    assert (polls - 1) * 0.020 <= elapsed <= polls * 0.020 * 2, (polls, elapsed)
    assert len(sink.readings) == 2 * polls
    assert {stream for stream, _ in sink.readings} == {"station"}
    first = sink.readings[0][1]
    assert (first.tag, first.value, first.unit, first.quality) == ("a", 2.5, "bar", "good")
    assert runner.stats.state == "stopped"


async def test_unreachable_device_gives_bad_readings_every_poll_and_one_down_event() -> None:
    sink = Collector()
    config = fake_config(unreachable=True)
    runner = DeviceRunner(
        config, FakeDriver(config), sink.on_readings, sink.on_event, backoff_min_s=0.05, backoff_max_s=0.1
    )
    await run_until(
        runner, lambda: runner.stats.polls >= 10 and runner.stats.failures >= 2, "10 polls, 2 failures"
    )
    assert runner.stats.polls >= 10
    assert len(sink.readings) == 2 * runner.stats.polls  # no gaps: one stand-in per tag per poll
    assert all(r.quality == "bad" and r.value is None for _, r in sink.readings)
    assert all("unreachable" in (r.reason or "") for _, r in sink.readings)
    assert [e.kind for e in sink.events] == ["driver_down"]
    assert runner.stats.failures >= 2  # it kept retrying with backoff
    assert runner.status().state in ("down", "stopped")


class FlakyDriver:
    """Fails its reads during a window, then recovers: a PLC rebooting."""

    def __init__(self, fail_from: int, fail_until: int, crash: bool = False) -> None:
        self.name = "dev"
        self.reads = 0
        self.opens = 0
        self.fail_from, self.fail_until, self.crash = fail_from, fail_until, crash

    def tags(self) -> Sequence[TagInfo]:
        return [TagInfo("a", "bar")]

    async def open(self) -> None:
        self.opens += 1

    async def read(self) -> list[Reading]:
        self.reads += 1
        if self.fail_from <= self.reads < self.fail_until:
            if self.crash:
                raise RuntimeError("bug in driver")
            raise DriverIOError("connection reset by peer")
        return [Reading("dev", "a", now_ns(), 1.0, "good", "bar")]

    async def aclose(self) -> None:
        pass

    def health(self) -> FakeHealth:
        return FakeHealth(open=True, reads=self.reads)


async def test_device_that_drops_and_returns_is_reopened_with_events() -> None:
    sink = Collector()
    driver = FlakyDriver(fail_from=3, fail_until=6)
    runner = DeviceRunner(
        fake_config(), driver, sink.on_readings, sink.on_event, backoff_min_s=0.01, backoff_max_s=0.02
    )
    await run_until(runner, lambda: driver.reads >= 10, "reads well after the device is back")
    assert [e.kind for e in sink.events] == ["driver_down", "driver_up"]
    assert driver.opens >= 2
    assert runner.stats.reconnects == 1
    qualities = [r.quality for _, r in sink.readings]
    assert qualities[:2] == ["good", "good"]
    assert "bad" in qualities
    assert qualities[-1] == "good"
    assert runner.stats.state == "stopped"


async def test_status_read_while_an_event_is_delivered_agrees_with_the_event() -> None:
    """The event goes to the outbox, which may wait (a busy card); `status` read meanwhile must
    already show what the event says: up with no error, or down with its reason."""
    seen: list[tuple[str, str, str | None, bool]] = []
    driver = FlakyDriver(fail_from=3, fail_until=6)

    async def slow_outbox(event: Event) -> None:
        await asyncio.sleep(0)  # the emit yields: the status refresh runs here
        status = runner.status()
        seen.append((event.kind, status.state, status.last_error, status.down_since_ns is not None))

    runner = DeviceRunner(
        fake_config(), driver, Collector().on_readings, slow_outbox, backoff_min_s=0.01, backoff_max_s=0.02
    )
    runner.resume_down(now_ns() - 5_000_000_000)  # down when the agent last stopped
    await run_until(runner, lambda: driver.reads >= 10, "reads well after the device is back")
    assert seen == [
        ("driver_up", "up", None, False),
        ("driver_down", "down", "connection reset by peer", True),
        ("driver_up", "up", None, False),
    ]


async def test_driver_bug_is_caught_counted_and_restarted() -> None:
    sink = Collector()
    driver = FlakyDriver(fail_from=2, fail_until=3, crash=True)
    runner = DeviceRunner(
        fake_config(), driver, sink.on_readings, sink.on_event, backoff_min_s=0.01, backoff_max_s=0.02
    )
    await run_until(runner, lambda: driver.reads >= 5, "reads after the restart")
    assert runner.stats.crashes == 1
    down = sink.events[0]
    assert down.kind == "driver_down"
    assert down.detail["crashed"] is True
    assert "RuntimeError: bug in driver" in down.detail["reason"]
    assert sink.readings[-1][1].quality == "good"


class PushDriver(FlakyDriver):
    """A streaming device whose stream breaks once, like an OPC UA server restart."""

    def __init__(self) -> None:
        super().__init__(fail_from=0, fail_until=0)
        self.streams = 0

    async def stream(self) -> AsyncIterator[list[Reading]]:
        self.streams += 1
        for i in range(3):
            await asyncio.sleep(0.01)  # the device's own pace: a value every 10 ms
            yield [Reading("dev", "a", now_ns(), float(i), "good", "bar")]
        if self.streams == 1:
            raise DriverIOError("server restarted")
        await asyncio.sleep(3600)  # the second stream stays open and quiet until the runner stops


async def test_streaming_driver_is_iterated_and_reopened_after_loss() -> None:
    sink = Collector()
    driver = PushDriver()
    runner = DeviceRunner(
        fake_config(), driver, sink.on_readings, sink.on_event, backoff_min_s=0.01, backoff_max_s=0.02
    )
    await run_until(runner, lambda: len(sink.readings) >= 7, "both streams' readings and the gap")
    assert driver.streams == 2
    assert driver.opens == 2
    assert [e.kind for e in sink.events] == ["driver_down", "driver_up"]
    values = [(r.quality, r.value) for _, r in sink.readings]
    assert values[:3] == [("good", 0.0), ("good", 1.0), ("good", 2.0)]
    assert values[3] == ("bad", None)  # the loss is visible
    assert values[4:] == [("good", 0.0), ("good", 1.0), ("good", 2.0)]


class OpenThenCloseDriver(FlakyDriver):
    """A wM-Bus TCP receiver behind a socat whose dongle is gone: the connection is taken, its
    first batch (the receiver reported open) comes, and the peer closes at once."""

    def __init__(self) -> None:
        super().__init__(fail_from=0, fail_until=0)
        self.opened_at: list[float] = []

    async def open(self) -> None:
        self.opens += 1
        self.opened_at.append(asyncio.get_running_loop().time())

    async def stream(self) -> AsyncIterator[list[Reading]]:
        yield [Reading("dev", "receiver.sdr.open", now_ns(), True, "good", "")]
        raise DriverIOError("the receiver closed the connection")


async def test_a_stream_that_closes_right_after_opening_backs_off_instead_of_flapping_every_second() -> None:
    sink = Collector()
    driver = OpenThenCloseDriver()
    runner = DeviceRunner(
        fake_config(), driver, sink.on_readings, sink.on_event, backoff_min_s=0.02, backoff_max_s=0.64
    )
    await run_until(runner, lambda: driver.opens >= 9, "nine attempts")
    waits = [b - a for a, b in zip(driver.opened_at, driver.opened_at[1:], strict=False)]
    # Full jitter under a doubling cap (0.02 .. 0.64 s): the later waits are long, all of them
    # under 0.1 s about once in 3,000 runs. With the backoff reset at every brief "up" (before),
    # every wait was the shortest, 0.02 s.
    assert max(waits) > 0.1, waits


class HangingDriver(FakeDriver):
    """Accepts the connection, then never answers a read (a wedged PLC or gateway)."""

    async def read(self) -> list[Reading]:
        await asyncio.Event().wait()
        return []


async def test_a_device_that_never_answers_cannot_hang_the_poll_loop() -> None:
    sink = Collector()
    config = fake_config()
    runner = DeviceRunner(
        config,
        HangingDriver(config),
        sink.on_readings,
        sink.on_event,
        backoff_min_s=0.05,
        backoff_max_s=0.1,
        guard_s=0.2,
    )
    await run_until(runner, lambda: runner.stats.failures >= 2 and sink.readings, "2 reads cut off")
    assert runner.stats.failures >= 2, "each hung read was cut off by the guard"
    assert sink.readings, "the poll loop kept producing readings"
    assert all(r.quality == "bad" for _, r in sink.readings)
    assert [e.kind for e in sink.events] == ["driver_down"]


async def test_a_meter_bus_down_at_a_start_stands_in_for_the_tags_an_earlier_run_read(tmp_path: Path) -> None:
    """M-Bus meters read with `records = "all"`: their tags are known once read. Down at the next
    start (a reboot during a wiring fault), only `house1.status` went bad; `house1.volume` simply
    stopped, its last good value standing at the centre for the whole outage."""
    record = tmp_path / "learnt_tags.json"
    async with running_bus(tmp_path) as bus:
        cfg = bus_config(bus, [{"name": "house1", "address": 1}])
        first = Collector()
        learnt = LearntTags(record, [cfg])
        runner = DeviceRunner(
            cfg, MbusDriver.from_config(cfg), first.on_readings, first.on_event, learnt=learnt
        )
        await run_until(runner, lambda: any(r.tag == "house1.volume" for _, r in first.readings), "a volume")
        learnt.save(learnt.snapshot())
    # the segment is gone: the port cannot be opened at the next start
    second = Collector()
    runner = DeviceRunner(
        cfg, MbusDriver.from_config(cfg), second.on_readings, second.on_event,
        learnt=LearntTags(record, [cfg]), backoff_min_s=0.05, backoff_max_s=0.1,
    )  # fmt: skip
    await run_until(runner, lambda: second.readings, "stand-ins")
    stood_in = {r.tag: r for _, r in second.readings}
    assert {r.quality for r in stood_in.values()} == {"bad"}
    assert stood_in["house1.volume"].unit == "m3"
    assert {"house1.status", "house1.volume", "house1.volume_flow"} <= set(stood_in)
    # a device whose config changed (a meter removed, other records) starts afresh
    other = cfg.model_copy(update={"meters": [cfg.meters[0].model_copy(update={"address": 2})]})
    assert LearntTags(record, [other]).of("meters") == []


def _learning(saves: SpacedSaves) -> Callable[[str], None]:
    """`learn(tag)`: device "dev" reads a tag new to it, and the saves hear of it (as the agent does)."""

    def learn(tag: str) -> None:
        assert saves.tags.note("dev", [Reading("dev", tag, now_ns(), 1.0, "good", "bar")])
        saves.learnt()

    return learn


def _saved_tags(record: Path) -> Callable[[], set[str]]:
    """The tags of "dev" in the record as it is on disk now."""
    return lambda: set(json.loads(record.read_text())["dev"]["tags"]) if record.exists() else set()


async def test_the_learnt_tags_record_is_saved_a_moment_after_a_new_tag_and_at_most_once_per_spacing(
    tmp_path: Path,
) -> None:
    """Hundreds of wM-Bus meters heard for the first time one after another each add tags; a save a
    second after each rewrote the whole growing record every second for minutes. Saves now come a
    moment after the first new tag and then at most once per spacing (10 s in the agent; shorter
    here), and what is still waiting at stop is written then."""
    record = tmp_path / "learnt_tags.json"
    saves = SpacedSaves(LearntTags(record, [fake_config()]), first_s=0.05, every_s=1.5)
    learn, saved = _learning(saves), _saved_tags(record)

    learn("a")
    await eventually(lambda: saved() == {"a"}, 5, "the first save")
    first = time.monotonic()
    learn("b")
    learn("c")
    await asyncio.sleep(0.5)
    assert saved() == {"a"}, "saved again within the spacing"
    await eventually(lambda: saved() == {"a", "b", "c"}, 5, "the spaced save")
    assert time.monotonic() - first >= 1.4
    assert saves.saves == 2  # b and c: one save
    learn("d")
    await saves.flush()  # the agent stops: no waiting for the spacing
    assert saved() == {"a", "b", "c", "d"}
    assert saves.saves == 3


async def test_a_tag_learnt_while_the_record_is_being_written_is_saved_by_the_next_save(
    tmp_path: Path,
) -> None:
    """The snapshot being written was taken before the tag: a later save must follow, and a stop
    during a write waits for it before writing the last tags (one writer at a time)."""
    record = tmp_path / "learnt_tags.json"

    class SlowDisk(LearntTags):  # an SD card that takes 0.3 s to write the record
        def save(self, snapshot: dict[str, object]) -> None:
            time.sleep(0.3)
            super().save(snapshot)

    saves = SpacedSaves(SlowDisk(record, [fake_config()]), first_s=0.05, every_s=0.5)
    learn, saved = _learning(saves), _saved_tags(record)

    learn("a")
    await eventually(lambda: saves.saves == 1, 5, "the first write under way")
    learn("b")  # during that write
    await eventually(lambda: saved() == {"a", "b"}, 5, "b saved by a later write")
    await eventually(lambda: saves.saves == 2 and saved() == {"a", "b"}, 5, "the second write done")
    learn("c")
    await eventually(lambda: saves.saves == 3, 5, "the third write under way")
    learn("d")  # waits for its turn ...
    await saves.flush()  # ... and the stop writes it after the write under way
    assert saved() == {"a", "b", "c", "d"}


def test_the_agent_keeps_the_tags_its_devices_read_even_when_stopped_at_once(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)  # a fake device: tags known once read
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["readings"] > 0)
        assert agent.stop() == 0  # within the second the record waits before it is written
    record = json.loads((tmp_path / "state" / "learnt_tags.json").read_text())
    assert record["fake-plc"]["tags"] == {"level": "m"}
