"""Sparkplug rules that need failures on demand, with the uplink's FakeBroker (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.testing import eventually
from water_edge.agent.uplink.config import MqttConfig, SparkplugConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.sparkplug.catalog import Catalog, DeviceSpec
from water_edge.agent.uplink.sparkplug.payloads import QUALITY_CODES
from water_edge.agent.uplink.sparkplug.proto import Payload
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.agent.uplink.testing import FakeBroker, FakeTransport, Sent
from water_edge.buffer.types import Batch
from water_edge.core.reading import Event, Reading, bad

T0 = 1_750_000_000 * 10**9


def kind(msg: Sent) -> str:
    parts = msg.topic.split("/")
    return parts[2] if len(parts) < 5 else f"{parts[2]}/{parts[4]}"


def decoded(msg: Sent) -> Payload:
    return Payload.FromString(msg.payload)


@pytest.fixture
async def edge() -> AsyncIterator[tuple[SparkplugUplink, FakeBroker, MemoryOutbox]]:
    broker, box = FakeBroker(), MemoryOutbox()
    states: dict[str, bool] = {"plc1": True}
    values: dict[tuple[str, str], Reading] = {}
    uplink = SparkplugUplink(
        MqttConfig(host="x", encoding="sparkplug_b"), box, "s", "g",
        catalog=Catalog([DeviceSpec("plc1", [("flow", "m3/h")])]),
        values=lambda: values, device_states=lambda: states,
        transport=broker, history_keep_s=0.2,
    )  # fmt: skip
    uplink.test_values, uplink.test_states = values, states  # type: ignore[attr-defined]
    task = asyncio.create_task(uplink.run())
    yield uplink, broker, box
    await uplink.stop(drain_timeout_s=1.0)
    await asyncio.wait_for(task, 5)


def append(box: MemoryOutbox, uplink: SparkplugUplink, *batches: Batch) -> None:
    box.append_sync(list(batches))
    uplink.notify()


async def test_rule_10_a_device_dies_with_its_driver_and_is_born_again_with_its_first_readings(
    edge: Any,
) -> None:
    uplink, broker, box = edge
    await broker.wait_until(lambda: "DBIRTH/plc1" in [kind(m) for m in broker.sent()])
    stand_in = bad("plc1", "flow", T0 + 1, "no answer to 7 requests", "m3/h")
    uplink.test_values[("plc1", "flow")] = stand_in  # the filter's current value, as in the agent
    append(box, uplink, Batch("events", events=[Event("driver_down", "plc1", T0, "warning")]),
           Batch("plc1", readings=[stand_in]))  # fmt: skip
    await broker.wait_until(lambda: "DDEATH/plc1" in [kind(m) for m in broker.sent()])
    # The driver is back: its event, then its first readings (the filter still holds the stand-in).
    append(box, uplink, Batch("events", events=[Event("driver_up", "plc1", T0 + 5)]),
           Batch("plc1", readings=[Reading("plc1", "flow", T0 + 5, 7.5, unit="m3/h")]))  # fmt: skip
    await broker.wait_until(lambda: [kind(m) for m in broker.sent()].count("DBIRTH/plc1") == 2)
    await eventually(lambda: box.pending() == 0, what="every row released")
    sent = [kind(m) for m in broker.sent()]
    # The stand-in bad reading of the dead device was not published: the DDEATH says it. The new
    # DBIRTH carries the first good value, so no DDATA has to correct a bad one from the outage.
    assert sent == ["NBIRTH", "DBIRTH/plc1", "NDATA", "DDEATH/plc1", "NDATA", "DBIRTH/plc1"]
    assert uplink.health().sparkplug.suppressed_dead == 1
    reborn = decoded(broker.sent()[5]).metrics[0]
    assert (reborn.double_value, reborn.timestamp) == (7.5, (T0 + 5) // 10**6)
    assert reborn.properties.keys[:1] == ["Quality"]
    assert reborn.properties.values[0].int_value == QUALITY_CODES["good"]


async def test_rule_10_a_reading_taken_before_the_death_and_committed_after_it_births_nothing(
    edge: Any,
) -> None:
    # The walkthrough's OPC UA server killed: a good reading taken just before the loss reached the
    # outbox just after the driver_down (a flush commits its events first). It is no sign of life:
    # the device stays dead on the host until its driver is back, and is then born by new readings.
    uplink, broker, box = edge
    await broker.wait_until(lambda: "DBIRTH/plc1" in [kind(m) for m in broker.sent()])
    uplink.test_states["plc1"] = False
    before = Reading("plc1", "flow", T0 + 1, 4.7, unit="m3/h")
    append(box, uplink, Batch("events", events=[Event("driver_down", "plc1", T0 + 2, "warning")]),
           Batch("plc1", readings=[before]))  # fmt: skip
    stand_in = bad("plc1", "flow", T0 + 2, "connection lost", "m3/h")
    uplink.test_values[("plc1", "flow")] = stand_in
    append(box, uplink, Batch("plc1", readings=[stand_in]))
    await asyncio.sleep(0.5)  # both rows judged
    assert [kind(m) for m in broker.sent()] == ["NBIRTH", "DBIRTH/plc1", "NDATA", "DDEATH/plc1"]
    assert uplink.health().sparkplug.suppressed_dead == 2
    # Back: the event, then a poll whose row still holds a stand-in taken before the return.
    uplink.test_states["plc1"] = True
    append(box, uplink, Batch("events", events=[Event("driver_up", "plc1", T0 + 5)]),
           Batch("plc1", readings=[bad("plc1", "flow", T0 + 4, "connection lost", "m3/h"),
                                   Reading("plc1", "flow", T0 + 5, 7.5, unit="m3/h")]))  # fmt: skip
    await broker.wait_until(lambda: [kind(m) for m in broker.sent()].count("DBIRTH/plc1") == 2)
    await eventually(lambda: box.pending() == 0, what="every row released")
    sent = [kind(m) for m in broker.sent()]
    assert sent == ["NBIRTH", "DBIRTH/plc1", "NDATA", "DDEATH/plc1", "NDATA", "DBIRTH/plc1"]
    reborn = decoded(broker.sent()[5]).metrics[0]
    assert (reborn.double_value, reborn.timestamp) == (7.5, (T0 + 5) // 10**6)
    assert reborn.properties.values[0].int_value == QUALITY_CODES["good"]
    assert uplink.health().sparkplug.suppressed_dead == 3


async def test_rule_10_stand_ins_not_published_live_do_not_come_back_from_the_backlog(edge: Any) -> None:
    uplink, broker, box = edge
    await broker.wait_until(lambda: "DBIRTH/plc1" in [kind(m) for m in broker.sent()])
    broker.answer_unsubscribe = False  # no receipt: every published row stays in the outbox
    uplink.test_states["plc1"] = False
    stand_in = bad("plc1", "flow", T0 + 1, "no answer to 7 requests", "m3/h")
    uplink.test_values[("plc1", "flow")] = stand_in
    append(box, uplink, Batch("events", events=[Event("driver_down", "plc1", T0, "warning")]),
           Batch("plc1", readings=[stand_in]))  # fmt: skip
    await eventually(lambda: uplink.health().sparkplug.suppressed_dead == 1, what="the stand-in judged")
    # Nothing of the stand-in's row went out: it waits for no receipt (only the event's row does).
    await eventually(lambda: box.pending() == 1, what="the stand-in's row released")
    uplink.test_states["plc1"] = True
    append(box, uplink, Batch("events", events=[Event("driver_up", "plc1", T0 + 5)]),
           Batch("plc1", readings=[Reading("plc1", "flow", T0 + 5, 7.5, unit="m3/h")]))  # fmt: skip
    await broker.wait_until(lambda: [kind(m) for m in broker.sent()].count("DBIRTH/plc1") == 2)
    broker.answer_unsubscribe = True
    broker.latest.drop()  # the connection lost before any receipt: the rows go again as history
    await broker.wait_until(lambda: len(broker.connections) == 2 and box.pending() == 0, 10)
    again = broker.connections[1].sent
    assert [kind(m) for m in again] == ["NBIRTH", "DBIRTH/plc1", "NDATA", "NDATA", "DDATA/plc1"]
    history = [x for m in again[2:] for x in decoded(m).metrics]
    assert all(x.is_historical for x in history)
    assert [x.double_value for x in decoded(again[-1]).metrics] == [7.5]
    assert not decoded(again[-1]).metrics[0].HasField("properties")  # good, as all history here


async def test_quality_goes_into_the_quality_property_and_back_to_good(edge: Any) -> None:
    uplink, broker, box = edge
    await broker.wait_until(lambda: len(broker.sent()) >= 2)
    unsure = Reading("plc1", "flow", T0, None, "uncertain", "m3/h", "clock_step")
    append(box, uplink, Batch("plc1", readings=[unsure]),
           Batch("plc1", readings=[Reading("plc1", "flow", T0 + 1, 1.0, unit="m3/h")]),
           Batch("plc1", readings=[Reading("plc1", "flow", T0 + 2, 2.0, unit="m3/h")]))  # fmt: skip
    await broker.wait_until(lambda: len(broker.sent()) >= 5)
    data = [decoded(m).metrics[0] for m in broker.sent()[2:5]]
    assert data[0].is_null
    props = data[0].properties
    got = dict(zip(props.keys, [v.int_value or v.string_value for v in props.values], strict=True))
    assert got == {"Quality": QUALITY_CODES["uncertain"], "Reason": "clock_step"}
    assert data[1].properties.values[0].int_value == QUALITY_CODES["good"]  # back to good: said once
    assert not data[2].HasField("properties")


async def test_rows_stay_in_the_outbox_until_a_receipt_and_are_resent_historical_after_a_drop(
    edge: Any,
) -> None:
    uplink, broker, box = edge
    await broker.wait_until(lambda: len(broker.sent()) >= 2)
    broker.answer_unsubscribe = False  # the broker stopped reading: no receipt comes
    append(box, uplink, Batch("plc1", readings=[Reading("plc1", "flow", T0, 1.0, unit="m3/h")]))
    await broker.wait_until(lambda: "DDATA/plc1" in [kind(m) for m in broker.sent()])
    await broker.wait_until(lambda: bool(broker.latest.unsubscriptions))  # a probe went out
    assert box.pending() == 1  # published at QoS 0, not yet proven: kept
    first = broker.latest
    broker.answer_unsubscribe = True
    first.drop()
    await broker.wait_until(lambda: len(broker.connections) == 2 and box.pending() == 0, 10)
    again = [decoded(m) for m in broker.connections[1].sent if kind(m) == "DDATA/plc1"]
    assert [(x.metrics[0].double_value, x.metrics[0].is_historical) for x in again] == [(1.0, True)]
    assert decoded(broker.connections[1].sent[0]).metrics[0].long_value == 1  # bdSeq + 1 per CONNECT


async def test_rule_3_every_subscription_goes_out_before_the_first_birth() -> None:
    order: list[str] = []

    class Recording(FakeTransport):
        def __init__(self, broker: FakeBroker) -> None:
            super().__init__(broker)
            broker.connections.append(self)

        def subscribe(self, topic_filter: str, qos: int) -> None:
            order.append(f"SUBSCRIBE {topic_filter} qos{qos}")
            super().subscribe(topic_filter, qos)

        def publish(
            self, topic: str, payload: bytes, qos: int, retain: bool = False, properties: Any = None
        ) -> int:
            order.append(f"PUBLISH {topic}")
            return super().publish(topic, payload, qos, retain, properties)

    broker = FakeBroker()
    uplink = SparkplugUplink(
        MqttConfig(host="x", encoding="sparkplug_b", sparkplug=SparkplugConfig(primary_host_id="scada")),
        MemoryOutbox(), "s", "g", catalog=Catalog([DeviceSpec("plc1", [("flow", "")])]),
        transport=lambda: Recording(broker), on_command=_ignore,
    )  # fmt: skip
    task = asyncio.create_task(uplink.run())
    await eventually(lambda: len(order) >= 4)
    broker.latest.deliver("spBv1.0/STATE/scada", b'{"online": true, "timestamp": 1}')
    await eventually(lambda: any(o.startswith("PUBLISH") for o in order))
    first = next(i for i, o in enumerate(order) if o.startswith("PUBLISH"))
    assert sorted(order[:first]) == sorted(
        [
            "SUBSCRIBE spBv1.0/s/NCMD/g qos1",
            "SUBSCRIBE spBv1.0/s/DCMD/g/+ qos1",
            "SUBSCRIBE spBv1.0/STATE/scada qos1",
            "SUBSCRIBE water/s/g/cmd/# qos1",
        ]
    )
    assert order[first] == "PUBLISH spBv1.0/s/NBIRTH/g"
    await uplink.stop(drain_timeout_s=0.5)
    await task


async def _ignore(_suffix: str, _payload: bytes) -> None:
    return None


async def test_signed_commands_keep_their_own_topics_in_sparkplug_mode() -> None:
    handled: list[tuple[str, bytes]] = []

    async def handler(suffix: str, payload: bytes) -> None:
        handled.append((suffix, payload))

    broker = FakeBroker()
    uplink = SparkplugUplink(
        MqttConfig(host="x", encoding="sparkplug_b"), MemoryOutbox(), "s", "g",
        catalog=Catalog(), transport=broker, on_command=handler,
    )  # fmt: skip
    task = asyncio.create_task(uplink.run())
    await broker.wait_until(lambda: bool(broker.sent()))
    broker.latest.deliver("water/s/g/cmd/read_now", b"signed envelope")
    await eventually(lambda: handled == [("read_now", b"signed envelope")])
    await uplink.stop(drain_timeout_s=0.5)
    await task
