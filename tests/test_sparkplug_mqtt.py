"""The Sparkplug B Edge Node against a real Mosquitto and a simulated Primary Host.

Every message is decoded with the official schema (`tests/support/sparkplug.py`) and the whole
stream replayed as a host would (`session_errors`): seq order, births before data, aliases,
bdSeq of the deaths. The numbers in the test names are the rules of issue 17 (docs/sparkplug.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.sparkplug import (
    T0,
    TAGS,
    PrimaryHost,
    caught_up,
    edge_nodes,
    flows,
    kinds,
    rows,
    session_errors,
)
from tests.support.sparkplug import edge_config as config
from tests.support.testing import eventually, write_agent_config
from water_edge.agent.uplink.config import MqttConfig, SparkplugConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.sparkplug import datatypes
from water_edge.agent.uplink.sparkplug.catalog import Catalog, DeviceSpec
from water_edge.agent.uplink.sparkplug.proto import DataType, Payload
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.types import Batch
from water_edge.core.reading import Event, Reading, bad


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with edge_nodes(tmp_path, [DeviceSpec("plc1", TAGS, {"running": DataType.Boolean})]) as make:
        yield make


async def test_rules_1_to_8_a_session_waits_for_the_host_then_births_and_data(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    box = MemoryOutbox()
    box.append_sync(rows(3))
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        uplink, states = node(config(mosquitto), box, history_keep_s=0.3)
        await states.wait(lambda s: s == "online")
        # Rule 4: connected, subscribed, and silent while the host has said nothing. The sleep is
        # the window in which nothing may be published.
        await asyncio.sleep(0.5)
        assert host.snapshot() == []
        host.publish_state(True)
        got = await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 3)
        # Rule 1: clean start, keep-alive as configured (mosquitto logs p5 = MQTT 5, c1 = clean).
        assert "(p5, c1, k5" in mosquitto.log()
        # Rule 5: NBIRTH first, seq 0, then the DBIRTH; the backlog went out historical.
        assert kinds(got)[:2] == ["NBIRTH", "DBIRTH/plc1"]
        nbirth, dbirth = got[0], got[1]
        assert nbirth.metric("bdSeq").long_value == 0
        assert nbirth.metric("Node Control/Rebirth").datatype == DataType.Boolean
        assert {x.name for x in dbirth.payload.metrics} == {"flow", "level", "running"}
        assert dbirth.metric("running").datatype == DataType.Boolean
        assert flows(got, historical=True) == [0.0, 1.0, 2.0]
        # Rule 7: live data after the birth, not historical, by alias only.
        box.append_sync(rows(2, start=3))
        uplink.notify()
        got = await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 5)
        assert flows(got, historical=False) == [3.0, 4.0]
        # Rule 6: seq over 255 wraps to 0 (300 more messages).
        box.append_sync(rows(300, start=5))
        uplink.notify()
        got = await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 305)
        assert any(m.payload.seq == 0 for m in got[2:])
        # The QoS 0 rows are released by the rolling history once a probe's receipt covers them.
        await eventually(lambda: box.pending() == 0, 10, what="every row released")
        assert session_errors(got) == []


async def test_rule_10_a_device_down_at_the_birth_gets_no_data_while_dead_and_its_history_a_birth(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    box = MemoryOutbox()
    box.append_sync(rows(3))  # before the outage ended the device answered...
    dead = [Reading("plc1", "flow", T0 + (3 + i) * 10**6, None, "bad", "m3/h", "timeout") for i in range(3)]
    box.append_sync([Batch("plc1", readings=[r]) for r in dead])  # ...then it stopped
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink, _ = node(config(mosquitto), box, device_states=lambda: {"plc1": False}, history_keep_s=0.3)
        await eventually(lambda: box.pending() == 0, 10, what="every row released")
        got = await caught_up(host, uplink)
    # Born, then dead at once (its driver is down); its good history is framed by a birth and a
    # death of its own, and its bad stand-ins are not sent at all: the host would take any DDATA
    # of a device it holds dead for a broken session and ask for a rebirth.
    assert kinds(got)[:3] == ["NBIRTH", "DBIRTH/plc1", "DDEATH/plc1"]
    assert flows(got, historical=True) == [0.0, 1.0, 2.0]
    assert uplink.health().sparkplug.suppressed_dead == 3
    assert kinds(got)[-1] == "DDEATH/plc1"
    assert session_errors(got) == []


async def test_rule_10_an_outage_in_the_backlog_sends_its_events_and_good_history_not_its_stand_ins(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    # The walkthrough's kill -9 and restart: the outbox still held an outage of a device that is up
    # now. Its stand-ins went out as historical DDATA, Quality bad, though the DDEATH said it live.
    box = MemoryOutbox()
    box.append_sync(rows(2))
    why = "connection lost: transport lost"
    down = [Batch("plc1", readings=[bad("plc1", tag, T0 + (2 + i) * 10**6, why, unit) for tag, unit in TAGS])
            for i in range(2)]  # fmt: skip
    lost = Event("driver_down", "plc1", T0 + 2 * 10**6, "warning")
    box.append_sync([Batch("events", events=[lost]), *down])
    box.append_sync([Batch("events", events=[Event("driver_up", "plc1", T0 + 4 * 10**6)]), *rows(2, start=4)])
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink, _ = node(config(mosquitto), box, device_states=lambda: {"plc1": True}, history_keep_s=0.3)
        await eventually(lambda: box.pending() == 0, 10, what="every row released")
        got = await caught_up(host, uplink)
    assert kinds(got)[:2] == ["NBIRTH", "DBIRTH/plc1"]
    assert kinds(got)[2:] == ["DDATA/plc1"] * 2 + ["NDATA"] * 2 + ["DDATA/plc1"] * 2
    assert flows(got, historical=True) == [0.0, 1.0, 4.0, 5.0]
    history = [x for m in got[2:] for x in m.payload.metrics]
    assert all(x.is_historical and not x.HasField("properties") for x in history)  # all good
    assert uplink.health().sparkplug.suppressed_dead == 2 * len(TAGS)
    assert session_errors(got) == []


async def test_rule_9_rebirth_on_command_keeps_bdseq_and_connection_and_unknown_commands_are_counted(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    box = MemoryOutbox()
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink, _ = node(config(mosquitto), box)
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        rebirth = Payload()
        rebirth.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=True)
        host.command("spBv1.0/site1/NCMD/gw1", rebirth)
        unknown = Payload()
        unknown.metrics.add(name="no such metric", datatype=DataType.Boolean, boolean_value=True)
        host.command("spBv1.0/site1/DCMD/gw1/plc1", unknown)
        got = await asyncio.to_thread(host.wait, lambda ms: kinds(ms).count("NBIRTH") == 2)
        got = await asyncio.to_thread(host.wait, lambda ms: kinds(ms).count("DBIRTH/plc1") == 2)
        births = [m for m in got if m.kind == "NBIRTH"]
        assert births[0].metric("bdSeq").long_value == births[1].metric("bdSeq").long_value
        assert "NDEATH" not in kinds(got)
        health = await eventually(lambda: (h := uplink.health()).sparkplug.commands_unknown == 1 and h)
        assert health.reconnects == 0
        assert health.sparkplug.rebirths == 1
        assert session_errors(got) == []


async def test_rule_4_offline_state_means_ndeath_and_the_next_server_and_a_stale_state_is_ignored(
    node: Callable[..., Any],
) -> None:
    with Mosquitto() as broker, Mosquitto() as other, PrimaryHost(broker.host, broker.port) as host:
        servers = (f"mqtt://{broker.host}:{broker.port}", f"mqtt://{other.host}:{other.port}")
        ts = host.publish_state(True)
        uplink, _ = node(
            MqttConfig(
                servers=servers,
                encoding="sparkplug_b",
                reconnect_min_s=0.1,
                reconnect_max_s=0.3,
                keepalive_s=5,
                sparkplug=SparkplugConfig(primary_host_id="scada"),
            ),
            MemoryOutbox(),
        )
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        host.publish_state(False, ts - 1000)  # older than the last seen: ignored
        host.publish_state(True, ts + 1)  # the same host session again, newer: a rebirth
        await asyncio.to_thread(host.wait, lambda ms: kinds(ms).count("NBIRTH") == 2)
        assert uplink.health().server_index == 0
        host.publish_state(False, ts + 2)
        got = await asyncio.to_thread(host.wait, lambda ms: "NDEATH" in kinds(ms))
        death = next(m for m in got if m.kind == "NDEATH")
        assert death.metric("bdSeq").long_value == got[0].metric("bdSeq").long_value
        await eventually(lambda: uplink.health().server_index == 1, 10, what="moved to the next server")
        assert session_errors(got) == []


async def test_rule_2_and_10_the_will_carries_the_birth_bdseq_which_goes_on_across_restarts(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "bdseq").write_text("254\n")
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        for expected in (255, 0):
            uplink = SparkplugUplink(
                config(mosquitto), MemoryOutbox(), "site1", "gw1",
                catalog=Catalog([DeviceSpec("plc1", TAGS)]), bdseq_path=tmp_path / "bdseq",
            )  # fmt: skip
            task = asyncio.create_task(uplink.run())
            n = len(host.snapshot())
            got = await asyncio.to_thread(host.wait, lambda ms, n=n: "DBIRTH/plc1" in kinds(ms[n:]))
            assert got[n].metric("bdSeq").long_value == expected
            if expected == 255:
                # Lost without DISCONNECT: the broker publishes the Will, the NDEATH of that bdSeq.
                uplink._drop_connection()  # the test stands in for a dead network
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            else:
                await uplink.stop()  # rule 10: an explicit NDEATH before DISCONNECT
                await task
            got = await asyncio.to_thread(host.wait, lambda ms, n=n: "NDEATH" in kinds(ms[n:]))
            death = next(m for m in got[n:] if m.kind == "NDEATH")
            assert death.metric("bdSeq").long_value == expected
            assert death.qos == 1
            assert not death.retain
        assert session_errors(host.snapshot()) == []


async def outage_and_disconnects(tmp_path: Path, *, outage_s: float, cycles: int, period_s: float) -> None:
    """Readings at 50 rows/s; the broker down for `outage_s`; then `cycles` forced disconnects
    `period_s` apart. Every reading arrives (live or historical); duplicates stay in the window."""
    async with await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=2**28, synchronous="normal") as box:
        with Mosquitto() as broker, PrimaryHost(broker.host, broker.port) as host:
            host.publish_state(True)
            keep_s = 1.0
            uplink = SparkplugUplink(
                config(broker, sparkplug=SparkplugConfig(primary_host_id="scada", backlog_rows_per_s=2000)),
                box, "site1", "gw1", catalog=Catalog([DeviceSpec("plc1", TAGS)]),
                bdseq_path=tmp_path / "bdseq", history_keep_s=keep_s,
            )  # fmt: skip
            task = asyncio.create_task(uplink.run())
            written = 0

            async def produce(seconds: float) -> None:
                nonlocal written
                until = time.monotonic() + seconds
                while time.monotonic() < until:
                    await box.append(rows(5, start=written))
                    written += 5
                    uplink.notify()
                    await asyncio.sleep(0.1)  # the pace of the readings

            await produce(1.0)
            broker.stop()
            await produce(outage_s)  # the outage: everything waits in the outbox
            broker.start()  # the host reconnects and says online again, as a real host does
            for _ in range(cycles):
                await produce(period_s)
                broker.stop()  # a forced disconnect: the connection drops, rows in the history stay
                broker.start()
            await produce(1.0)

            async def released() -> bool:
                return (await box.stats()).rows == 0

            await eventually(released, 60, every_s=0.2, what="every row released")
            await uplink.stop()
            await task
            # Released on the broker's receipt: the host's copies of the last rows come a moment later.
            got = await asyncio.to_thread(host.wait, lambda ms: len(set(flows(ms))) >= written, 30)
    seen = Counter(flows(got))
    assert set(seen) == {float(i) for i in range(written)}, "a reading is missing"
    duplicates = sum(n - 1 for n in seen.values())
    print(f"readings {written}, delivered {sum(seen.values())}, duplicates {duplicates}, drops {cycles + 1}")
    # The documented window (durability.md): each drop re-sends what the history held, the rows
    # of the last keep_s plus one probe interval (keep_s / 3 here), at 50 rows/s; 1 s of slack
    # for a receipt delayed on a busy machine.
    assert duplicates <= (cycles + 1) * 50 * (keep_s + keep_s / 3 + 1.0)
    assert [e for e in session_errors(got) if "before NBIRTH" not in e] == []


@pytest.mark.timeout(90)
async def test_durability_a_broker_outage_and_forced_disconnects_lose_no_reading(tmp_path: Path) -> None:
    await outage_and_disconnects(tmp_path, outage_s=3.0, cycles=3, period_s=2.0)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_soak_ten_minute_outage_and_a_forced_disconnect_every_minute(tmp_path: Path) -> None:
    await outage_and_disconnects(tmp_path, outage_s=600.0, cycles=10, period_s=60.0)


def test_modbus_types_give_the_birth_datatypes() -> None:
    from water_edge.drivers.modbus.config import ModbusTcpConfig

    cfg = ModbusTcpConfig.model_validate(
        {
            "name": "plc1",
            "kind": "modbus_tcp",
            "host": "127.0.0.1",
            "tags": [
                {"name": "a", "address": 0, "type": "int16"},
                {"name": "b", "address": 1, "type": "float32"},
                {"name": "c", "address": 3, "type": "uint16", "scale": 0.1},
                {"name": "d", "table": "coil", "address": 0, "type": "bool"},
            ],
        }
    )
    assert datatypes.declared(cfg) == {
        "a": DataType.Int16,
        "b": DataType.Float,
        "c": DataType.Double,
        "d": DataType.Boolean,
    }


def test_the_agent_as_an_edge_node_births_its_devices_and_sends_changes_only(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`edge-agent run` with encoding = "sparkplug_b": the wiring (catalog from the config, current
    values from report by exception, bdSeq under the state dir, status) in the real process."""
    config = write_agent_config(
        tmp_path,
        broker_port=mosquitto.port,
        devices=[
            {
                "name": "plc1",
                "kind": "fake",
                "poll_interval_ms": 100,
                "tags": [
                    {"name": "const", "unit": "bar", "offset": 4.0},
                    {"name": "wave", "amplitude": 1.0, "period_s": 5},
                ],
            },
        ],
        uplink={"encoding": "sparkplug_b", "keepalive_s": 5},
        extra='[uplink.sparkplug]\nprimary_host_id = "scada"\ngroup_id = "north"\n',
    )
    with PrimaryHost(mosquitto.host, mosquitto.port) as host, running_agent(config) as agent:
        host.publish_state(True)
        got = host.wait(lambda ms: len([m for m in ms if m.kind == "DDATA"]) >= 10, 20)
        assert kinds(got)[:2] == ["NBIRTH", "DBIRTH/plc1"]
        assert got[0].topic == "spBv1.0/north/NBIRTH/gw-test"
        birth = {x.name: x for x in got[1].payload.metrics}
        assert set(birth) == {"const", "wave"}
        const_alias = birth["const"].alias
        data = [x for m in got if m.kind == "DDATA" for x in m.payload.metrics]
        # Report by exception: the constant tag is sent at most once, the wave every poll.
        assert sum(x.alias == const_alias for x in data) <= 1
        assert sum(x.alias == birth["wave"].alias for x in data) >= 9
        assert session_errors(got) == []
        status = agent.wait_status(
            lambda s: bool(s["uplink"]["sparkplug"]) and s["uplink"]["sparkplug"]["born"]
        )
        assert status["uplink"]["sparkplug"]["edge_node_id"] == "gw-test"
        assert (tmp_path / "state" / "sparkplug-bdseq").read_text().strip() == "0"
        agent.stop()
        got = host.wait(lambda ms: "NDEATH" in kinds(ms), 10)
        assert next(m for m in got if m.kind == "NDEATH").metric("bdSeq").long_value == 0


async def test_an_integer_past_int64_is_born_uint64_and_read_back_exact_without_rebirths(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    # An OPC UA UInt64 (a counter, a serial number) at its top: the Python int has no declared
    # type. As Int64 it went out as -1, and each row asked for another rebirth.
    top = 2**64 - 1
    box = MemoryOutbox()
    box.append_sync(
        [Batch("plc1", readings=[Reading("plc1", "counter", T0 + i * 10**6, top - i)]) for i in range(3)]
    )
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        # A row leaves the outbox once out of the history: 0.3 s here, 7.5 s (1.5 x keep-alive) as shipped.
        uplink, states = node(config(mosquitto), box, history_keep_s=0.3)
        await states.wait(lambda s: s == "online")
        await eventually(lambda: box.pending() == 0, 10, what="every row released")
        box.append_sync([Batch("plc1", readings=[Reading("plc1", "counter", T0 + 10**9, top)])])
        uplink.notify()
        got = await asyncio.to_thread(
            host.wait, lambda ms: sum(len(m.payload.metrics) for m in ms if m.kind == "DDATA") >= 4
        )
    births = [m for m in got if m.kind == "DBIRTH"]
    # The birth from the config, then one for the metric no config declared: no more after it.
    assert len(births) == 2, kinds(got)
    counter = births[1].metric("counter")
    assert counter.datatype == DataType.UInt64
    values = [datatypes.get(x) for m in got if m.kind == "DDATA" for x in m.payload.metrics]
    assert sorted(values) == [top - 2, top - 1, top, top]  # type: ignore[type-var]
    assert session_errors(got) == []


async def test_a_meter_heard_for_the_first_time_births_its_device_alone(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    """A wM-Bus receiver learns each meter's tags as it first hears it (hundreds over the first
    minutes). Each new metric re-sent NBIRTH and every device's DBIRTH, the whole node each time;
    a host needs only the device's new DBIRTH, with all its metrics, before the new metric's data."""
    box = MemoryOutbox()
    box.append_sync(rows(1))
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        devices = [DeviceSpec("plc1", TAGS, {"running": DataType.Boolean}), DeviceSpec("air", [])]
        uplink, states = node(config(mosquitto), box, devices, history_keep_s=0.3)  # as above
        await states.wait(lambda s: s == "online")
        await eventually(lambda: box.pending() == 0, 10, what="the first row released")
        for i, meter in enumerate(("m1", "m2")):
            ts = T0 + (i + 1) * 10**9
            box.append_sync(
                [Batch("air", readings=[Reading("air", f"{meter}.volume", ts, 10.0 + i, unit="m3")])]
            )
            uplink.notify()
        got = await asyncio.to_thread(
            host.wait, lambda ms: sum(1 for m in ms if m.device == "air" and m.kind == "DBIRTH") >= 3
        )
        box.append_sync(
            [Batch("air", readings=[Reading("air", "m2.volume", T0 + 3 * 10**9, 12.5, unit="m3")])]
        )
        uplink.notify()
        got = await asyncio.to_thread(
            host.wait, lambda ms: any(m.kind == "DDATA" and m.device == "air" for m in ms)
        )
    assert kinds(got).count("NBIRTH") == 1, kinds(got)
    assert kinds(got).count("DBIRTH/plc1") == 1, kinds(got)
    births = [m for m in got if m.kind == "DBIRTH" and m.device == "air"]
    assert [sorted(x.name for x in b.payload.metrics) for b in births] == [
        [],
        ["m1.volume"],
        ["m1.volume", "m2.volume"],
    ]
    assert births[2].metric("m2.volume").double_value == 11.0  # the birth carries the row's value
    data = [
        datatypes.get(x) for m in got if m.kind == "DDATA" and m.device == "air" for x in m.payload.metrics
    ]
    assert data == [12.5]  # the values the births carried are not sent again
    assert uplink.health().sparkplug.rebirths == 0
    assert session_errors(got) == []


async def test_on_a_broker_that_keeps_no_retained_messages_the_node_says_why_it_waits_for_the_host(
    node: Callable[..., Any],
) -> None:
    """The host's retained STATE is how a node that connects after it learns it is online. A broker
    that keeps no retained messages (not a Sparkplug one) left the node 'not born' with no word of
    why; it says so now, and births when the host publishes its STATE again."""
    box = MemoryOutbox()
    box.append_sync(rows(2))
    with (
        Mosquitto(extra_config="retain_available false\n") as broker,
        PrimaryHost(broker.host, broker.port) as host,
    ):
        uplink, states = node(config(broker), box, history_keep_s=0.3)
        await states.wait(lambda s: s == "online")
        await eventually(
            lambda: uplink.health().sparkplug.broker_retains is False, 10, what="the CONNACK read"
        )
        health = uplink.health()
        assert health.sparkplug.born is False
        assert any("the broker keeps no retained messages" in line for line in health.status_lines())
        # Not retained: it reaches only those subscribed when it is sent (the broker's log says when).
        await eventually(
            lambda: "spBv1.0/STATE/scada (QoS 1)" in broker.log(), 10, what="the node subscribed"
        )
        host.publish_state(True, retain=False)
        got = await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 2)
    assert kinds(got)[:2] == ["NBIRTH", "DBIRTH/plc1"]
