"""`MqttUplink` end to end through the `FakeBroker` transport: acks, lanes, failures, stop, commands.

No broker and no network: every CONNACK, PUBACK, drop and command is scripted, so each test runs
in milliseconds and shows one rule. The same rules run against a real Mosquitto in
test_uplink_mqtt.py, test_uplink_lanes.py and test_uplink_tls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog.testing

from tests.support.uplink import StateLog, reading_batches
from water_edge.agent.uplink.commands import MAX_COMMAND_BYTES
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.drain import ACK_BATCH_ROWS, ACK_DELAY_S
from water_edge.agent.uplink.health import CommandStats
from water_edge.agent.uplink.json_encoding import CONTENT_TYPE
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.agent.uplink.testing import (
    NO_MATCHING_SUBSCRIBERS,
    NOT_AUTHORIZED,
    QUOTA_EXCEEDED,
    SUCCESS,
    FakeBroker,
    FakeTransport,
    Sent,
)
from water_edge.agent.uplink.transport import ConnectError, PublishProperties, Reason, TlsError
from water_edge.buffer.types import Batch, OutboxRow
from water_edge.core.reading import Reading

BASE = "water/s1/gw1"
STATUS = f"{BASE}/status"


def config(**overrides: Any) -> MqttConfig:
    settings: dict[str, Any] = {
        "host": "broker.test",
        "reconnect_min_s": 0.01,
        "reconnect_max_s": 0.02,
        "connect_timeout_s": 1.0,
    }
    return MqttConfig(**{**settings, **overrides})


@dataclass
class Rig:
    uplink: MqttUplink
    broker: FakeBroker
    box: MemoryOutbox
    states: StateLog


@contextlib.asynccontextmanager
async def running(
    box: MemoryOutbox,
    broker: FakeBroker | None = None,
    cfg: MqttConfig | None = None,
    also: Callable[[MqttUplink, str], None] | None = None,
    **kw: Any,
) -> AsyncIterator[Rig]:
    """An uplink task on a fake broker; stopped (and awaited) on the way out.

    Its states are logged in `rig.states`; `also(uplink, state)` is called with each state too.
    """
    broker = broker or FakeBroker()
    states = StateLog()

    def on_state(state: str) -> None:
        states(state)
        if also is not None:
            also(uplink, state)

    uplink = MqttUplink(cfg or config(), box, "s1", "gw1", transport=broker, on_state_change=on_state, **kw)
    task = asyncio.create_task(uplink.run(), name="uplink")
    await states.wait(lambda s: s == "connecting")  # running: a stop() from here on is honoured
    try:
        yield Rig(uplink, broker, box, states)
    finally:
        await uplink.stop(drain_timeout_s=0.5)
        await asyncio.wait_for(task, 5)


def filled(rows: int, streams: tuple[str, ...] = ("plc1",)) -> MemoryOutbox:
    box = MemoryOutbox()
    box.append_sync(reading_batches(rows, streams))
    return box


def seqs(messages: list[Sent]) -> list[int]:
    return [m.json()["seq"] for m in messages if not m.retain]


def hold_data(msg: Sent) -> Reason | None:
    """PUBACK status messages at once, hold every data PUBACK for the test to send."""
    return SUCCESS if msg.retain else None


def unacked_data(conn: FakeTransport) -> list[Sent]:
    return [m for m in conn.unacked.values() if not m.retain]


async def ack_each_window(broker: FakeBroker, box: MemoryOutbox) -> None:
    """Play a broker that holds PUBACKs until the uplink stops publishing, then sends them all."""

    def held() -> bool:
        return box.pending() == 0 or bool(broker.connections and unacked_data(broker.latest))

    while box.pending():
        await broker.wait_until(held)
        broker.latest.ack_all()


# ---------------------------------------------------------------------- delivery and acks


async def test_rows_go_out_in_order_with_status_around_them_and_are_deleted_on_puback() -> None:
    box = filled(10)
    async with running(box) as rig:
        await rig.broker.wait_until(lambda: box.pending() == 0)
    sent = rig.broker.sent()
    assert [(m.topic, m.retain, m.json()["state"]) for m in (sent[0], sent[-1])] == [
        (STATUS, True, "online"),
        (STATUS, True, "offline"),
    ]
    assert sent[-1].json()["reason"] == "stopped"
    data = rig.broker.data()
    assert seqs(data) == list(range(1, 11))
    assert {(m.topic, m.qos, m.properties) for m in data} == {
        (f"{BASE}/plc1", 1, PublishProperties(CONTENT_TYPE))
    }
    health = rig.uplink.health()
    assert (health.published, health.acked, health.readings_acked) == (10, 10, 30)
    assert health.last_ack_age_s is not None, "status says when the centre last acknowledged"
    assert health.state == "stopped"
    assert rig.broker.latest.disconnected, "a clean stop sends DISCONNECT (no Will)"


async def test_mqtt_311_sends_no_properties_and_the_will_and_credentials_reach_the_transport() -> None:
    box = filled(1)
    cfg = config(protocol="3.1.1", username="edge", password="s3cret-pw", keepalive_s=15)
    async with running(box, cfg=cfg) as rig:
        await rig.broker.wait_until(lambda: box.pending() == 0)
    (msg,) = rig.broker.data()
    assert msg.properties is None
    options = rig.broker.latest.options
    assert options is not None
    assert (options.client_id, options.username, options.password) == ("edge-s1-gw1", "edge", "s3cret-pw")
    assert (options.protocol, options.keepalive_s, options.max_inflight) == ("3.1.1", 15, 32)
    assert "s3cret" not in repr(options)
    will = options.will
    assert (will.topic, will.qos, will.retain) == (STATUS, 1, True)
    assert Sent(0, will.topic, will.payload, 1, True, None).json()["reason"] == "lost"


async def test_rows_are_deleted_only_on_a_success_puback() -> None:
    box = filled(3)
    broker = FakeBroker()
    broker.puback = hold_data
    async with running(box, broker) as rig:
        await broker.wait_until(lambda: len(broker.data()) == 3)
        conn = broker.latest
        assert box.pending() == 3, "published is not delivered"
        by_seq = {m.json()["seq"]: m.mid for m in broker.data()}
        conn.puback(by_seq[2])
        await broker.wait_until(lambda: box.row_ids() == [1, 3])
        conn.puback(by_seq[1], NO_MATCHING_SUBSCRIBERS)  # a success code: nobody subscribed yet
        await broker.wait_until(lambda: box.row_ids() == [3])
        assert rig.uplink.health().inflight == 1
        conn.ack_all()
        await broker.wait_until(lambda: box.pending() == 0)


async def test_pubacks_arriving_one_by_one_are_deleted_together_and_a_lone_row_at_once() -> None:
    rows = 300
    box = filled(rows)
    broker = FakeBroker()
    broker.puback = hold_data
    loop = asyncio.get_running_loop()
    async with running(box, broker) as rig:
        await broker.wait_until(lambda: bool(broker.connections and unacked_data(broker.latest)))
        calls_before, started = box.ack_calls, loop.time()
        while box.pending():
            # One PUBACK, then let the uplink run (publish into the freed slot, decide on deletes).
            conn = broker.latest
            held = unacked_data(conn)
            if held:
                conn.puback(held[0].mid)
            for _ in range(3):
                await asyncio.sleep(0)
            if not held:
                await broker.wait_until(lambda: bool(unacked_data(broker.latest)) or not box.pending())
        calls, elapsed = box.ack_calls - calls_before, loop.time() - started
        # A delete per PUBACK before: 300 outbox transactions. Now one per ACK_BATCH_ROWS rows, or
        # per ACK_DELAY_S of a slow stream, and one for the last rows, whose PUBACKs left nothing in flight.
        assert calls <= rows / ACK_BATCH_ROWS + elapsed / ACK_DELAY_S + 2, (calls, elapsed)

        box.append_sync(reading_batches(1, ("plc1",)))
        rig.uplink.notify()
        await broker.wait_until(lambda: bool(unacked_data(broker.latest)))
        lone = box.ack_calls
        broker.latest.puback(unacked_data(broker.latest)[0].mid)
        for _ in range(10):  # a few turns of the loop, far less than ACK_DELAY_S
            await asyncio.sleep(0)
        assert (box.pending(), box.ack_calls) == (0, lone + 1), "nothing else in flight: deleted at once"


async def test_rows_acknowledged_just_before_the_connection_drops_are_deleted_not_sent_again() -> None:
    box = filled(10)
    broker = FakeBroker()
    broker.puback = hold_data
    async with running(box, broker) as rig:
        await broker.wait_until(lambda: len(broker.data()) == 10)
        first = broker.latest
        for msg in unacked_data(first)[:4]:
            first.puback(msg.mid)  # fewer than a batch, with rows still in flight: their delete waits
        first.drop("connection lost: Keep alive timeout")
        await rig.states.wait(lambda s: s == "offline")
        await broker.wait_until(lambda: len(broker.connections) == 2 and len(seqs(broker.latest.sent)) == 6)
        broker.latest.ack_all()
        await broker.wait_until(lambda: box.pending() == 0)
    assert seqs(broker.connections[1].sent) == [5, 6, 7, 8, 9, 10]


async def test_a_failed_puback_keeps_the_row_sets_its_stream_aside_and_sends_it_again_later() -> None:
    box = filled(5)
    broker = FakeBroker()
    refused: list[int] = []

    def quota_once_for_seq_2(msg: Sent) -> Reason | None:
        if not msg.retain and msg.json()["seq"] == 2 and not refused:
            refused.append(msg.mid)
            return QUOTA_EXCEEDED
        return SUCCESS

    broker.puback = quota_once_for_seq_2
    with structlog.testing.capture_logs() as logs:
        async with running(box, broker) as rig:
            await broker.wait_until(lambda: box.pending() == 0)
            states = list(rig.states.states)
            health = rig.uplink.health()
    (only,) = broker.connections  # a refused row does not cost the connection
    # Row 2 was refused and kept; rows 3-5 went on; row 2 went again after the backoff, accepted.
    assert seqs(only.sent) == [1, 2, 3, 4, 5, 2]
    assert states == ["connecting", "online"]
    assert health.rejected == 1
    assert (health.refused_streams, health.held_back) == (0, 0)
    (rejected,) = [e for e in logs if e["event"] == "uplink.rejected"]
    assert (rejected["row"], rejected["reason"]) == (2, "Quota exceeded")


async def test_a_long_refused_stream_is_held_in_memory_up_to_a_bound_and_none_of_it_is_lost() -> None:
    """300 rows on a denied topic: 256 held in memory, 44 left only in the outbox. Once the broker
    takes the topic again the held ones go on the same connection and a clean reconnect leases
    the rest: every row arrives, none is deleted before its success PUBACK."""
    box = filled(600, ("plc1", "plc2"))
    broker = FakeBroker()
    deny = [True]
    broker.puback = lambda msg: NOT_AUTHORIZED if deny[0] and msg.topic.endswith("/plc2") else SUCCESS
    async with running(box, broker, config(lease_rows=1000)) as rig:
        # the last row (plc2) is refused after the last plc1 row's PUBACK: wait for both
        await broker.wait_until(
            lambda: (rig.uplink.health().acked, rig.uplink.health().held_back) == (300, 300)
        )
        health = rig.uplink.health()
        assert (health.refused_streams, health.held_back) == (1, 300)
        assert box.pending() == 300
        deny[0] = False
        await broker.wait_until(lambda: box.pending() == 0)
        after = rig.uplink.health()
    plc2 = {m.json()["seq"] for m in broker.data() if m.topic.endswith("/plc2")}
    assert plc2 == set(range(1, 301))
    assert len(broker.connections) == 2, "one clean reconnect for the rows not held in memory"
    assert (after.refused_streams, after.held_back) == (0, 0)


async def test_an_outbox_that_cannot_delete_keeps_the_rows_for_a_resend() -> None:
    box = filled(3)
    box.fail_acks = True
    async with running(box) as rig:
        await rig.broker.wait_until(lambda: box.ack_calls >= 1)
        health = rig.uplink.health()
    assert box.pending() == 3
    assert health.ack_errors >= 1
    assert health.last_error == "outbox ack failed: injected ack failure"
    assert health.state == "online", "the drain goes on: a resend is a duplicate, not a loss"


class PoisonedOutbox(MemoryOutbox):
    """Row 2's body is garbage whenever it is leased."""

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        rows = await super().lease(after_id, limit, upto_id)
        return [replace(r, body=b"\xff garbage") if r.id == 2 else r for r in rows]


async def test_an_undecodable_row_is_counted_and_left_and_the_rest_go_out() -> None:
    box = PoisonedOutbox()
    box.append_sync(reading_batches(3))
    async with running(box) as rig:
        await rig.broker.wait_until(lambda: box.row_ids() == [2])
        health = rig.uplink.health()
    assert seqs(rig.broker.data()) == [1, 3]
    assert health.encode_errors == 1
    assert health.last_error is not None
    assert health.state == "online"


async def test_the_window_never_exceeds_the_brokers_receive_maximum() -> None:
    box = filled(10)
    broker = FakeBroker()
    broker.receive_maximum = 3
    peak: list[int] = []

    def hold_and_measure(msg: Sent) -> Reason | None:
        peak.append(len(unacked_data(broker.latest)))
        return hold_data(msg)

    broker.puback = hold_and_measure
    async with running(box, broker) as rig:
        await ack_each_window(broker, box)
        assert max(peak) == 3
        assert rig.uplink.health().published == 10


async def test_live_rows_overtake_the_backlog_through_the_uplink() -> None:
    box = filled(40)
    broker = FakeBroker()
    broker.puback = hold_data
    async with running(box, broker, cfg=config(max_inflight=4, lease_rows=8)) as rig:
        await broker.wait_until(lambda: len(broker.data()) == 4)  # the backlog fills the window
        box.append_sync([Batch("live", readings=[Reading("live", "level", 1, 1.0)])])
        rig.uplink.notify()
        await ack_each_window(broker, box)
    topics = [m.topic for m in broker.data()]
    # As soon as the first window is acknowledged, the live row is the first to go.
    assert topics.index(f"{BASE}/live") == 4
    backlog = seqs([m for m in broker.data() if m.topic.endswith("/plc1")])
    assert backlog == list(range(1, 41)), "the backlog drains completely, in order, once each"
    health = rig.uplink.health()
    assert (health.published_live, health.published_backlog, health.backlog_upto_id) == (1, 40, 40)


async def test_stop_with_rows_in_flight_leaves_them_in_the_outbox() -> None:
    box = filled(5)
    broker = FakeBroker()
    broker.puback = hold_data
    async with running(box, broker) as rig:
        await broker.wait_until(lambda: len(broker.data()) == 5)
        await rig.uplink.stop(drain_timeout_s=0.05)
        health = rig.uplink.health()
    assert box.pending() == 5
    assert (health.acked, health.inflight, health.state) == (0, 0, "stopped"), "the status PUBACK is no row's"
    assert rig.states.states[-2:] == ["stopping", "stopped"]
    offline = broker.sent()[-1]
    assert (offline.topic, offline.json()["reason"]) == (STATUS, "stopped")
    assert broker.latest.disconnected


# ---------------------------------------------------------------------- connection state


async def test_a_refused_connect_keeps_the_brokers_reason_and_publishes_nothing() -> None:
    box = filled(2)
    broker = FakeBroker()
    broker.connack = NOT_AUTHORIZED
    async with running(box, broker) as rig:
        await rig.states.wait(lambda s: s == "refused")
        health = rig.uplink.health()
        await rig.states.wait(lambda s: s == "connecting", since=len(rig.states.states) - 1)
    assert (health.state, health.last_error, health.connected) == ("refused", "Not authorized", False)
    assert health.last_error_ns is not None
    assert health.refused >= 1
    assert broker.sent() == [], "not even the status"
    assert box.pending() == 2


async def test_tls_and_connect_failures_set_their_state_then_the_uplink_retries() -> None:
    box = filled(1)
    broker = FakeBroker()
    broker.open_errors.extend(
        [
            TlsError("self-signed certificate in certificate chain"),
            ConnectError("connect: [Errno 111] refused"),
        ]
    )
    seen: list[tuple[str, str | None]] = []

    def with_reason(uplink: MqttUplink, state: str) -> None:
        seen.append((state, uplink.health().last_error))

    async with running(box, broker, also=with_reason) as rig:
        await broker.wait_until(lambda: box.pending() == 0)
        health = rig.uplink.health()
    assert [s for s, _ in seen][:6] == [
        "connecting",
        "tls-error",
        "connecting",
        "offline",
        "connecting",
        "online",
    ]
    assert seen[1] == ("tls-error", "self-signed certificate in certificate chain")
    assert seen[3] == ("offline", "connect: [Errno 111] refused")
    assert health.reconnects == 2


async def test_no_connack_in_time_is_offline() -> None:
    broker = FakeBroker()
    broker.connack = None
    async with running(MemoryOutbox(), broker, cfg=config(connect_timeout_s=0.05)) as rig:
        await rig.states.wait(lambda s: s == "offline")
        assert rig.uplink.health().last_error == "no CONNACK from broker"
        assert broker.connections[0].aborted, "given up without DISCONNECT"


async def test_a_lost_connection_goes_offline_and_resends_its_in_flight_rows_after_reconnect() -> None:
    box = filled(3)
    broker = FakeBroker()
    broker.puback = hold_data
    async with running(box, broker) as rig:
        await broker.wait_until(lambda: len(broker.data()) == 3)
        assert rig.uplink.health().connected
        broker.latest.drop("connection lost: Keep alive timeout")
        await rig.states.wait(lambda s: s == "offline")
        health = rig.uplink.health()
        assert (health.connected, health.last_error) == (False, "connection lost: Keep alive timeout")
        await broker.wait_until(lambda: len(broker.connections) == 2 and len(broker.latest.sent) == 4)
        broker.latest.ack_all()
        await broker.wait_until(lambda: box.pending() == 0)
    assert seqs(broker.connections[1].sent) == [1, 2, 3], "the outbox is the only resend source"
    assert broker.connections[0].aborted


async def test_a_publish_on_a_connection_that_went_away_silently_reconnects_and_sends_the_rows() -> None:
    """paho raises on publish when its socket is gone before the disconnect callback came: that is
    the end of the session, and its rows go out on the next connection."""
    box = MemoryOutbox()
    cfg = config(reconnect_min_s=0.05, reconnect_max_s=0.05)
    async with running(box, cfg=cfg) as rig:
        await rig.states.wait(lambda s: s == "online")
        rig.broker.latest.closed = True  # gone, and nobody said so
        box.append_sync(reading_batches(3, ("plc1",)))
        rig.uplink.notify()
        await rig.broker.wait_until(lambda: box.pending() == 0, within_s=10)
        assert len(rig.broker.connections) == 2
        assert seqs(rig.broker.latest.sent) == [1, 2, 3]


async def test_the_online_status_must_be_acknowledged() -> None:
    box = filled(2)
    broker = FakeBroker()
    broker.puback = lambda msg: NOT_AUTHORIZED if msg.retain else SUCCESS
    async with running(box, broker) as rig:
        await rig.states.wait(lambda s: s == "offline")
        health = rig.uplink.health()
    # A site-bound ACL refuses a config whose site or id is not the certificate's right here: say so.
    assert health.last_error == (
        f"online status not acknowledged: Not authorized (the broker's ACL does not let this gateway "
        f"publish {rig.uplink.topics.status}: do [gateway] site and id match the certificate's? "
        "edge-agent check-config says)"
    )
    assert (health.rejected, health.published) == (0, 0), "a status PUBACK is not a row's"
    assert broker.data() == []


async def test_the_uplink_stays_alive_for_the_watchdog_while_it_backs_off() -> None:
    broker = FakeBroker()
    broker.connack = NOT_AUTHORIZED
    cfg = config(reconnect_min_s=0.2, reconnect_max_s=0.2)
    async with running(MemoryOutbox(), broker, cfg=cfg, beat_s=0.01) as rig:
        await rig.states.wait(lambda s: s == "refused")
        before = rig.uplink.heartbeat
        await broker.wait_until(lambda: rig.uplink.heartbeat >= before + 5, within_s=1)


async def test_the_uplink_stays_alive_for_the_watchdog_while_it_is_online_with_nothing_to_send() -> None:
    async with running(MemoryOutbox(), beat_s=0.01) as rig:
        await rig.states.wait(lambda s: s == "online")
        before = rig.uplink.heartbeat
        await rig.broker.wait_until(lambda: rig.uplink.heartbeat >= before + 5, within_s=1)
        assert rig.uplink.health().connected


# ---------------------------------------------------------------------- commands


async def test_commands_are_subscribed_checked_and_handed_to_the_handler() -> None:
    got: list[tuple[str, bytes]] = []

    async def handler(suffix: str, payload: bytes) -> None:
        got.append((suffix, payload))

    async with running(MemoryOutbox(), on_command=handler) as rig:
        await rig.states.wait(lambda s: s == "online")
        conn = rig.broker.latest
        assert conn.subscriptions == [(f"{BASE}/cmd/#", 1)]
        conn.deliver(f"{BASE}/cmd/config/reload", b'{"id": 1}')
        conn.deliver(f"{BASE}/cmdx", b"not a command topic")
        conn.deliver(f"{BASE}/cmd/big", b"x" * (MAX_COMMAND_BYTES + 1))
        inbox = rig.uplink.commands
        assert inbox is not None
        await rig.broker.wait_until(lambda: inbox.handled == 1)
        stats = rig.uplink.health().commands
    assert got == [("config/reload", b'{"id": 1}')]
    assert stats == CommandStats(received=3, handled=1, rejected=2)


async def test_without_a_handler_nothing_is_subscribed() -> None:
    async with running(MemoryOutbox()) as rig:
        await rig.states.wait(lambda s: s == "online")
        assert rig.broker.latest.subscriptions == []
        assert rig.uplink.health().commands is None
