"""The MQTT uplink against a real Mosquitto: delivery, ordering, PUBACK-only deletes, outages, status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest

from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.testing import eventually
from tests.support.uplink import (
    GATEWAY,
    SITE,
    StartUplink,
    event_batch,
    mqtt_config,
    reading_batches,
)
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.transport import ConnectOptions, Reason, TransportListener
from water_edge.buffer.async_outbox import AsyncOutbox

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "payload.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
BASE = f"water/{SITE}/{GATEWAY}"
STATUS = f"{BASE}/status"


def data_messages(messages: list[Received]) -> list[dict[str, object]]:
    return [m.json() for m in messages if m.topic != STATUS]


def by_stream(docs: list[dict[str, object]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for d in docs:
        out[str(d["stream"])].append(int(d["seq"]))  # type: ignore[call-overload]
    return out


def first_arrivals(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


async def rows_left(box: AsyncOutbox) -> int:
    return (await box.stats()).rows


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_every_row_arrives_in_order_and_matches_the_schema(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink, protocol: str
) -> None:
    streams = ("plc1", "meter7")
    await outbox.append(reading_batches(60, streams))
    await outbox.append([event_batch()])
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(mosquitto, protocol=protocol), outbox)
        await sub.wait_for_async(61 + 1)
        await run.uplink.stop()
        await sub.wait_until_async(lambda ms: bool(ms) and ms[-1].topic == STATUS)
    docs = data_messages(sub.snapshot())
    assert len(docs) == 61
    for doc in docs:
        VALIDATOR.validate(doc)
        assert doc["site"] == SITE
        assert doc["gateway"] == GATEWAY
    seqs = by_stream(docs)
    assert seqs == {"plc1": list(range(1, 31)), "meter7": list(range(1, 31)), "events": [1]}
    topics = {m.topic for m in sub.snapshot()}
    assert topics == {f"{BASE}/plc1", f"{BASE}/meter7", f"{BASE}/events", STATUS}
    reading = docs[0]["readings"][0]  # type: ignore[index]
    assert reading == {
        "tag": "tag0",
        "ts": 10**18,
        "value": 0.0,
        "quality": "good",
        "unit": "bar",
        "source": "plc1",
    }
    bad = docs[0]["readings"][-1]  # type: ignore[index]
    assert bad["quality"] == "bad"
    assert bad["reason"] == "timeout"
    events = next(d for d in docs if d["stream"] == "events")["events"]
    assert events[0] == {  # type: ignore[index]
        "kind": "leak",
        "source": "hydrophone1",
        "ts": 10**18,
        "severity": "alarm",
        "score": 0.93,
        "detail": {"position_m": 120.5},
    }
    assert await rows_left(outbox) == 0
    health = run.uplink.health()
    assert health.acked == 61
    assert health.readings_acked == 60 * 3 + 2
    assert health.state == "stopped"


async def test_notify_wakes_an_idle_uplink(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/plc1") as sub:
        run = await start_uplink(mqtt_config(mosquitto), outbox)
        await run.states.wait(lambda s: s == "online")
        for batch in reading_batches(5):
            await outbox.append([batch])
            run.uplink.notify()
        await sub.wait_for_async(5)
    assert by_stream(data_messages(sub.snapshot())) == {"plc1": [1, 2, 3, 4, 5]}


class CountingPaho(PahoTransport):
    """The real transport, also counting the PUBLISHes handed to paho and not yet acknowledged."""

    made: ClassVar[list[CountingPaho]] = []

    def __init__(self) -> None:
        super().__init__()
        self.unacked: set[int] = set()
        self.peak = 0
        CountingPaho.made.append(self)

    async def open(self, options: ConnectOptions, listener: TransportListener) -> None:
        unacked = self.unacked

        class Counting:
            on_connack = listener.on_connack
            on_message = listener.on_message
            on_closed = listener.on_closed
            on_unsuback = listener.on_unsuback

            def on_puback(self, mid: int, reason: Reason) -> None:
                unacked.discard(mid)
                listener.on_puback(mid, reason)

        await super().open(options, Counting())

    def publish(self, *args: Any, **kwargs: Any) -> int:
        mid = super().publish(*args, **kwargs)
        self.unacked.add(mid)
        self.peak = max(self.peak, len(self.unacked))
        return mid


async def test_window_bounds_inflight_and_rows_stay_until_puback(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    await outbox.append(reading_batches(50))
    sub = Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/plc1").start()
    CountingPaho.made.clear()
    config = mqtt_config(mosquitto, max_inflight=5, lease_rows=7)
    run = await start_uplink(config, outbox, transport=CountingPaho)
    await run.states.wait(lambda s: s == "online")
    mosquitto.pause()  # the broker stops reading: no PUBACK can arrive
    try:
        await eventually(lambda: run.uplink.health().inflight == 5)  # the window fills, and stays full
        health = run.uplink.health()
        assert health.published - health.acked == 5
        assert await rows_left(outbox) == 50 - health.acked
    finally:
        mosquitto.resume()
    try:
        await sub.wait_for_async(50)
    finally:
        sub.stop()
    # What paho holds unacknowledged (its own resend queue) never exceeded our window.
    assert [t.peak for t in CountingPaho.made] == [5]
    await run.uplink.stop()
    assert await rows_left(outbox) == 0


async def test_outage_loses_nothing_and_resends_in_order(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    window = 8
    streams = ("a", "b")
    with Mosquitto(persistence=True) as broker:
        # A persistent subscriber session: the broker keeps what arrives while it reconnects.
        sub = Subscriber(broker.host, broker.port, f"{BASE}/+", session="test-sub").start()
        try:
            await outbox.append(reading_batches(40, streams))
            run = await start_uplink(mqtt_config(broker, max_inflight=window), outbox)
            await sub.wait_for_async(41)  # 40 rows and the online status

            broker.pause()  # PUBACKs stop: the next window of messages is in flight, unacked
            await outbox.append(reading_batches(60, streams)[40:])
            run.uplink.notify()
            await eventually(lambda: run.uplink.health().inflight == window)
            broker.stop()
            await run.states.wait(lambda s: s == "offline")

            await outbox.append(reading_batches(100, streams)[60:])  # appended during the outage
            run.uplink.notify()
            assert await rows_left(outbox) > 0
            broker.start()
            await run.states.wait(lambda s: s == "online", since=len(run.states.states) - 1)

            def complete(ms: list[Received]) -> bool:
                seqs = by_stream(data_messages(ms))
                return all(set(seqs[s]) >= set(range(1, 51)) for s in streams)

            await sub.wait_until_async(complete, within_s=20)
            await run.uplink.stop()
        finally:
            sub.stop()
    received = sub.snapshot()
    seqs = by_stream(data_messages(received))
    for stream in streams:
        assert first_arrivals(seqs[stream]) == list(range(1, 51))
    # Copies the uplink published: the broker's own redelivery to the subscriber repeats a copy
    # byte for byte, whereas each uplink publish carries its own sent_ns.
    copies = {m.payload for m in received if m.topic != STATUS}
    assert len(copies) - 100 <= window * run.uplink.health().reconnects
    assert await rows_left(outbox) == 0


async def test_ack_failure_keeps_rows_for_a_later_resend(
    mosquitto: Mosquitto, start_uplink: StartUplink
) -> None:
    box = MemoryOutbox()
    box.append_sync(reading_batches(3))
    box.fail_acks = True
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/plc1") as sub:
        run = await start_uplink(mqtt_config(mosquitto), box)
        await sub.wait_for_async(3)
        await run.uplink.stop()
    assert box.pending() == 3
    assert run.uplink.health().ack_errors >= 1
    last_error = run.uplink.health().last_error
    assert last_error is not None
    assert "injected ack failure" in last_error


async def test_retained_status_online_then_offline_on_stop(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    run = await start_uplink(mqtt_config(mosquitto), outbox)
    await run.states.wait(lambda s: s == "online")
    with Subscriber(mosquitto.host, mosquitto.port, STATUS) as sub:
        (online,) = await sub.wait_for_async(1)
    assert online.retain
    assert online.json()["state"] == "online"
    await run.uplink.stop()
    with Subscriber(mosquitto.host, mosquitto.port, STATUS) as sub:
        (offline,) = await sub.wait_for_async(1)
    assert offline.retain
    assert offline.json()["state"] == "offline"
    assert offline.json()["reason"] == "stopped"


CHILD = f"""
import asyncio, sys
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.mqtt import MqttUplink

cfg = MqttConfig(host="127.0.0.1", port=int(sys.argv[1]))
asyncio.run(MqttUplink(cfg, MemoryOutbox(), "{SITE}", "{GATEWAY}").run())
"""


async def test_last_will_marks_a_killed_agent_offline(mosquitto: Mosquitto) -> None:
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with Subscriber(mosquitto.host, mosquitto.port, STATUS) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(mosquitto.port), env=env, cwd=root
        )
        try:
            await sub.wait_until_async(lambda ms: any(m.json()["state"] == "online" for m in ms), within_s=20)
            child.send_signal(signal.SIGKILL)
            await child.wait()
            msgs = await sub.wait_until_async(lambda ms: ms[-1].json()["state"] == "offline", within_s=10)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    will = msgs[-1].json()
    assert will["reason"] == "lost"
    assert will["site"] == SITE


async def test_refused_credentials_give_state_refused_and_keep_rows(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with Mosquitto(users={"edge": "right"}) as broker:
        await outbox.append(reading_batches(3))
        run = await start_uplink(mqtt_config(broker, username="edge", password="wrong"), outbox)
        await run.states.wait(lambda s: s == "refused")
        reason = run.uplink.health().last_error  # the broker's reason code, kept beside the state
        await run.states.wait(lambda s: s == "connecting", since=len(run.states.states) - 1)
        await run.uplink.stop()
        health = run.uplink.health()
    assert reason in ("Not authorized", "Bad user name or password")
    assert health.refused >= 1
    assert health.reconnects >= 1
    assert health.published == 0
    assert await rows_left(outbox) == 3


async def test_right_credentials_connect(outbox: AsyncOutbox, start_uplink: StartUplink) -> None:
    with Mosquitto(users={"edge": "right"}) as broker:
        await outbox.append(reading_batches(2))
        run = await start_uplink(mqtt_config(broker, username="edge", password="right"), outbox)
        await run.states.wait(lambda s: s == "online")
        await run.uplink.stop()
    assert run.uplink.health().acked == 2


async def test_unreachable_broker_backs_off_without_crashing(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    broker = Mosquitto()  # configured, never started: connection refused at TCP level
    try:
        run = await start_uplink(mqtt_config(broker), outbox)
        await run.states.wait(lambda s: s == "offline")
        await run.states.wait(lambda s: s == "connecting", since=2)
        await run.uplink.stop()
        health = run.uplink.health()
    finally:
        broker.close()
    assert health.reconnects >= 1
    assert "refused" in (health.last_error or "").lower()
    assert health.state == "stopped"


async def test_an_undecodable_row_is_skipped_not_deleted_and_does_not_block(
    mosquitto: Mosquitto, start_uplink: StartUplink
) -> None:
    box = MemoryOutbox()
    box.append_sync(reading_batches(3))
    poisoned = box._rows[2]
    box._rows[2] = type(poisoned)(
        **{**{f: getattr(poisoned, f) for f in poisoned.__slots__}, "body": b"\xff garbage"}
    )
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/plc1") as sub:
        run = await start_uplink(mqtt_config(mosquitto), box)
        msgs = await sub.wait_for_async(2)
        await run.uplink.stop()
    assert [m.json()["seq"] for m in msgs] == [1, 3]
    assert box.row_ids() == [2]
    assert run.uplink.health().encode_errors == 1


async def test_stop_still_sends_what_was_appended_just_before(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(mosquitto), outbox)
        await run.states.wait(lambda s: s == "online")
        await outbox.append([event_batch()])
        run.uplink.notify()
        await run.uplink.stop()
        msgs = await sub.wait_until_async(lambda ms: len(ms) >= 3 and ms[-1].topic == STATUS)
    assert [m.json()["state"] for m in msgs if m.topic == STATUS] == ["online", "offline"]
    assert by_stream(data_messages(msgs)) == {"events": [1]}
    assert await rows_left(outbox) == 0
