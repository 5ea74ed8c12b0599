"""What the births say of a tag: its unit, its datatype, its quality before a first read, and the
values a device comes back with after an outage.

Readings go the pipeline's way: through report by exception into the outbox, whose table of last
reported readings is the "current value" the births carry (as `agent.runtime` wires it); the
Edge Node runs against a real Mosquitto and a host decodes every message (`tests/support/sparkplug.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.sparkplug import T0, TAGS, Message, PrimaryHost, edge_nodes, kinds, session_errors
from tests.support.sparkplug import edge_config as config
from tests.support.testing import eventually
from water_edge.agent.pipeline import Pipeline
from water_edge.agent.uplink.config import RbeConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.rbe import ExceptionFilter, ReportByException
from water_edge.agent.uplink.sparkplug import datatypes
from water_edge.agent.uplink.sparkplug.catalog import DeviceSpec
from water_edge.agent.uplink.sparkplug.drain import REBIRTH_EVERY_S, RETURN_WAIT_S
from water_edge.agent.uplink.sparkplug.payloads import QUALITY_CODES
from water_edge.agent.uplink.sparkplug.proto import DataType, Payload
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.buffer.types import Batch
from water_edge.core.reading import Event, Reading, bad

GOOD, BAD = QUALITY_CODES["good"], QUALITY_CODES["bad"]


@dataclass
class Plant:
    """The agent's side of the uplink: report by exception in front of the outbox, the runners' states."""

    box: MemoryOutbox = field(default_factory=MemoryOutbox)
    up: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.filter = ExceptionFilter(RbeConfig())
        self.outbox = ReportByException(self.box, self.filter)

    def node(
        self, make: Callable[..., tuple[SparkplugUplink, Any]], broker: Mosquitto, devices: list[DeviceSpec]
    ) -> SparkplugUplink:
        uplink, _ = make(
            config(broker), self.box, devices, values=self.filter.current, device_states=lambda: self.up,
            history_keep_s=0.3,
        )  # fmt: skip
        self.uplink: SparkplugUplink = uplink
        return uplink

    async def feed(self, *batches: Batch) -> None:
        await self.outbox.append(batches)
        self.uplink.notify()


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with edge_nodes(tmp_path, []) as make:
        yield make


def props(metric: Payload.Metric) -> dict[str, object]:
    values = metric.properties.values
    return {
        key: value.int_value if value.type == DataType.Int32 else value.string_value
        for key, value in zip(metric.properties.keys, values, strict=True)
    }


def births(messages: list[Message], device: str) -> list[Message]:
    return [m for m in messages if m.kind == "DBIRTH" and m.device == device]


def suppressed(uplink: SparkplugUplink) -> int:
    sparkplug = uplink.health().sparkplug
    assert sparkplug is not None
    return sparkplug.suppressed_dead


def wait(host: PrimaryHost, predicate: Callable[[list[Message]], bool], within_s: float = 10.0) -> Any:
    return asyncio.to_thread(host.wait, predicate, within_s)


async def test_a_unit_the_driver_learns_after_startup_is_born_and_a_flapping_unit_is_reborn_once_a_second(
    mosquitto: Mosquitto, make: Callable[..., Any]
) -> None:
    # An OPC UA driver knows units only once connected (EngineeringUnits); the catalog was built
    # from its tags at startup, without them.
    plant = Plant(up={"opc1": True})
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        plant.node(make, mosquitto, [DeviceSpec("opc1", [("pressure", ""), ("level", "")])])
        await wait(host, lambda ms: len(births(ms, "opc1")) == 1)
        await plant.feed(
            Batch("opc1", readings=[Reading("opc1", "pressure", T0, 4.2, unit="bar"),
                                    Reading("opc1", "level", T0, 3.5, unit="m")])
        )  # fmt: skip
        got = await wait(host, lambda ms: len(births(ms, "opc1")) == 2)
        reborn = births(got, "opc1")[1]
        pressure = reborn.metric("pressure")
        assert props(pressure)["engUnit"] == "bar"
        assert props(reborn.metric("level"))["engUnit"] == "m"
        # The birth carries the readings that brought the units, as the current values.
        assert (pressure.double_value, props(pressure)["Quality"]) == (4.2, GOOD)
        assert kinds(got).count("NBIRTH") == 1  # the device is born again, not the whole node

        # A unit that keeps changing: the device is born again at most once a second, its data goes on.
        n, started, sent = len(got), time.monotonic(), 0
        while time.monotonic() - started < 3.0:
            unit = ("bar", "kPa")[sent % 2]
            await plant.feed(
                Batch("opc1", readings=[Reading("opc1", "pressure", T0 + (1 + sent) * 10**6, 4.0, unit=unit)])
            )
            sent += 1
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        last_unit = ("bar", "kPa")[(sent - 1) % 2]
        got = await wait(
            host,
            lambda ms: any(
                m.kind == "DBIRTH" and props(m.metric("pressure"))["engUnit"] == last_unit
                and m.metric("pressure").timestamp == (T0 + sent * 10**6) // 10**6
                for m in ms[n:]
            ),
        )  # fmt: skip
        reborn_n = len(births(got[n:], "opc1"))
        assert 1 <= reborn_n <= elapsed / REBIRTH_EVERY_S + 2, f"{reborn_n} DBIRTHs in {elapsed:.1f} s"
        # Every pressure reading reached the host, in a DBIRTH or a DDATA.
        alias = births(got, "opc1")[0].metric("pressure").alias
        stamps = {x.timestamp for m in got[n:] if m.device == "opc1" for x in m.payload.metrics
                  if x.alias == alias and (m.kind == "DDATA" or x.name == "pressure")}  # fmt: skip
        assert {(T0 + (1 + i) * 10**6) // 10**6 for i in range(sent)} <= stamps
        assert session_errors(got) == []


async def test_integer_tags_are_born_int64_from_their_first_value_and_stay_so(
    mosquitto: Mosquitto, make: Callable[..., Any]
) -> None:
    # A meter's status word and lost-telegram count: no declared type (M-Bus, wM-Bus), so the
    # first value read decides (docs/sparkplug.md), though the Double placeholder could hold it.
    plant = Plant(up={"m1": True})
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        tags = [("status", ""), ("telegrams_lost", ""), ("volume", "m3")]
        uplink = plant.node(make, mosquitto, [DeviceSpec("m1", tags)])
        first = (await wait(host, lambda ms: len(births(ms, "m1")) == 1))[-1]
        assert first.metric("status").datatype == DataType.Double  # never read: the placeholder
        await plant.feed(
            Batch("m1", readings=[Reading("m1", "status", T0, 0), Reading("m1", "telegrams_lost", T0, 3),
                                  Reading("m1", "volume", T0, 12.5, unit="m3")])
        )  # fmt: skip
        got = await wait(host, lambda ms: len(births(ms, "m1")) == 2)
        reborn = births(got, "m1")[1]
        assert reborn.metric("status").datatype == DataType.Int64
        assert reborn.metric("telegrams_lost").datatype == DataType.Int64
        assert reborn.metric("volume").datatype == DataType.Double
        values = [datatypes.get(reborn.metric(tag)) for tag, _ in tags]
        assert values == [0, 3, 12.5]
        # Later values are DDATA of the Int64 metric; a rebirth on command keeps the datatype.
        await plant.feed(Batch("m1", readings=[Reading("m1", "telegrams_lost", T0 + 10**9, 4)]))
        got = await wait(host, lambda ms: any(m.kind == "DDATA" and m.device == "m1" for m in ms))
        data = next(m for m in got if m.kind == "DDATA" and m.device == "m1").payload.metrics[0]
        assert (data.alias, data.long_value) == (reborn.metric("telegrams_lost").alias, 4)
        rebirth = Payload()
        rebirth.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=True)
        host.command("spBv1.0/site1/NCMD/gw1", rebirth)
        got = await wait(host, lambda ms: len(births(ms, "m1")) == 3)
        assert births(got, "m1")[2].metric("telegrams_lost").datatype == DataType.Int64
        assert datatypes.get(births(got, "m1")[2].metric("telegrams_lost")) == 4
        sparkplug = uplink.health().sparkplug
        assert sparkplug is not None
        # The node's births: the first and the command's; the type learned births the device alone.
        assert (sparkplug.births, sparkplug.device_births) == (2, 1)
        assert session_errors(got) == []


async def test_a_tag_never_read_is_born_null_and_bad_and_its_first_value_says_good(
    mosquitto: Mosquitto, make: Callable[..., Any]
) -> None:
    plant = Plant(up={"plc1": True})
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        plant.node(make, mosquitto, [DeviceSpec("plc1", TAGS)])
        birth = (await wait(host, lambda ms: len(births(ms, "plc1")) == 1))[-1]
        for x in birth.payload.metrics:
            assert x.is_null
            quality = {key: value for key, value in props(x).items() if key != "engUnit"}
            assert quality == {"Quality": BAD, "Reason": "not read yet"}
        # Its first value comes as DDATA (a Double holds it: no rebirth) and says good again.
        await plant.feed(Batch("plc1", readings=[Reading("plc1", "flow", T0, 1.5, unit="m3/h")]))
        got = await wait(host, lambda ms: "DDATA/plc1" in kinds(ms))
        data = next(m for m in got if m.kind == "DDATA").payload.metrics[0]
        assert (data.alias, data.double_value) == (birth.metric("flow").alias, 1.5)
        assert props(data) == {"Quality": GOOD}
        assert session_errors(got) == []


async def test_a_device_back_from_an_outage_is_born_with_its_first_good_values_not_the_outages(
    mosquitto: Mosquitto, make: Callable[..., Any]
) -> None:
    plant = Plant(up={"plc1": True})
    tags = [("flow", "m3/h"), ("level", "m")]

    def poll(ts: int, flow: float, level: float) -> Batch:
        return Batch("plc1", readings=[Reading("plc1", "flow", ts, flow, unit="m3/h"),
                                       Reading("plc1", "level", ts, level, unit="m")])  # fmt: skip

    def stand_ins(ts: int) -> Batch:
        why = "no answer to 7 requests"
        return Batch("plc1", readings=[bad("plc1", tag, ts, why, unit) for tag, unit in tags])

    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        plant.node(make, mosquitto, [DeviceSpec("plc1", tags)])
        await wait(host, lambda ms: len(births(ms, "plc1")) == 1)
        await plant.feed(poll(T0, 10.0, 2.0))
        await wait(host, lambda ms: "DDATA/plc1" in kinds(ms))
        # The outage, as the runner reports it: the event, then bad stand-ins at every poll.
        plant.up["plc1"] = False
        await plant.feed(Batch("events", events=[Event("driver_down", "plc1", T0 + 10**9, "warning")]),
                         stand_ins(T0 + 10**9))  # fmt: skip
        await plant.feed(stand_ins(T0 + 2 * 10**9))
        n = len(await wait(host, lambda ms: "DDEATH/plc1" in kinds(ms)))
        # Back: the runner commits the event, and then its first poll's readings.
        back = T0 + 3 * 10**9
        plant.up["plc1"] = True
        await plant.feed(Batch("events", events=[Event("driver_up", "plc1", back)]))
        await wait(host, lambda ms: "NDATA" in kinds(ms[n:]))
        await plant.feed(poll(back, 11.0, 2.5))
        got = await wait(host, lambda ms: len(births(ms, "plc1")) == 2)
        await eventually(lambda: plant.box.pending() == 0, 10, what="every row released")
        await plant.feed(poll(back + 10**9, 12.0, 2.5))
        got = await wait(host, lambda ms: kinds(ms[n:]).count("DDATA/plc1") == 1)
    reborn = births(got, "plc1")[1]
    for name, value in (("flow", 11.0), ("level", 2.5)):
        x = reborn.metric(name)
        assert (x.double_value, x.timestamp, props(x)["Quality"]) == (value, back // 10**6, GOOD), name
        assert "Reason" not in props(x)
    # After the DDEATH nothing of the device is bad: no DDATA had to replace an outage value.
    after = [x for m in got[n:] if m.device == "plc1" for x in m.payload.metrics]
    assert all(props(x).get("Quality", GOOD) == GOOD for x in after)
    assert kinds(got[n:]) == ["NDATA", "DBIRTH/plc1", "DDATA/plc1"]
    assert session_errors(got) == []


async def test_a_device_back_whose_first_readings_never_come_is_born_all_the_same(
    mosquitto: Mosquitto, make: Callable[..., Any]
) -> None:
    plant = Plant(up={"plc1": True})
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        plant.node(make, mosquitto, [DeviceSpec("plc1", TAGS)])
        await wait(host, lambda ms: len(births(ms, "plc1")) == 1)
        plant.up["plc1"] = False
        await plant.feed(Batch("events", events=[Event("driver_down", "plc1", T0, "warning")]))
        await wait(host, lambda ms: "DDEATH/plc1" in kinds(ms))
        plant.up["plc1"] = True
        await plant.feed(Batch("events", events=[Event("driver_up", "plc1", T0 + 10**9)]))
        started = time.monotonic()
        got = await wait(host, lambda ms: len(births(ms, "plc1")) == 2, RETURN_WAIT_S + 5)
        assert time.monotonic() - started >= RETURN_WAIT_S - 0.5  # it waited for readings first
        assert session_errors(got) == []


async def test_a_reading_taken_before_a_death_is_published_before_it_and_does_not_bring_the_device_back(
    mosquitto: Mosquitto, make: Callable[..., Any]
) -> None:
    # The walkthrough's OPC UA server killed (2 of 6 kills): the subscription's last good value
    # waited in the pipeline; the driver_down woke a flush, which committed its events first. The
    # host got DDEATH, then DBIRTH with that stale value 0.05 ms later, then DDATA of bad
    # stand-ins, and no DBIRTH when the server really came back. The pipeline now commits in the
    # order things came (the value before the death), and the drain births a dead device only
    # after its driver_up (test_sparkplug_unit: a row out of order births nothing either).
    plant = Plant(up={"ua": True})
    tags = [("pressure", "bar"), ("name", "")]
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink = plant.node(make, mosquitto, [DeviceSpec("ua", tags)])
        pipeline = Pipeline(plant.outbox, uplink.notify, flush_interval_s=3600)  # flushed by hand here
        await pipeline.submit("ua", [Reading("ua", "pressure", T0, 4.77, unit="bar"),
                                     Reading("ua", "name", T0, "PS-NORTH")])  # fmt: skip
        await pipeline.flush()
        await wait(host, lambda ms: "DDATA/ua" in kinds(ms))
        # The runner's order: a reading, the loss (event), the stand-ins; flushed as they come.
        await pipeline.submit("ua", [Reading("ua", "pressure", T0 + 10**9, 4.78, unit="bar")])
        plant.up["ua"] = False
        lost = T0 + 10**9 + 160 * 10**6
        await pipeline.submit_event(Event("driver_down", "ua", lost, "warning", detail={"reason": "lost"}))
        await pipeline.flush()
        await pipeline.submit("ua", [bad("ua", tag, lost, "connection lost", unit) for tag, unit in tags])
        await pipeline.flush()
        await wait(host, lambda ms: "DDEATH/ua" in kinds(ms))
        await asyncio.sleep(0.5)
        got = host.snapshot()
        sent = kinds(got)
        assert sent[sent.index("DDEATH/ua") - 2 :] == ["DDATA/ua", "NDATA", "DDEATH/ua"]
        (last_value,) = got[sent.index("DDEATH/ua") - 2].payload.metrics  # by alias in DDATA
        assert (last_value.double_value, last_value.timestamp) == (4.78, (T0 + 10**9) // 10**6)
        assert suppressed(uplink) == 2  # the two stand-ins
        # Back 20 s later: driver_up, then the subscription's first values.
        back = lost + 20 * 10**9
        plant.up["ua"] = True
        await pipeline.submit_event(Event("driver_up", "ua", back))
        await pipeline.submit("ua", [Reading("ua", "pressure", back, 4.76, unit="bar"),
                                     Reading("ua", "name", back, "PS-NORTH")])  # fmt: skip
        await pipeline.flush()
        got = await wait(host, lambda ms: len(births(ms, "ua")) == 2)
        await asyncio.sleep(0.3)
        got = host.snapshot()
    sent = kinds(got)
    assert sent[sent.index("DDEATH/ua") - 2 :] == ["DDATA/ua", "NDATA", "DDEATH/ua", "NDATA", "DBIRTH/ua"]
    reborn = births(got, "ua")[1].metric("pressure")
    assert (reborn.double_value, reborn.timestamp, props(reborn)["Quality"]) == (4.76, back // 10**6, GOOD)
    assert session_errors(got) == []
