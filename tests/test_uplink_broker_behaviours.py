"""Broker behaviours the other uplink tests do not cover, each against a real Mosquitto the test
starts (or, where Mosquitto cannot behave so, a small raw-socket MQTT peer):

- an ACL that denies one stream's topic (MQTT 5 PUBACK 0x87 "Not authorized"): the denied rows
  stay in the outbox, counted and named in `last_error`, and every other stream keeps flowing on
  the same connection (it used to drop the connection at each refusal and crawl); once the quota
  has evicted every denied row, the stream is no longer reported refused;
- a small Receive Maximum (Mosquitto's `max_inflight_messages`): the window stays under it;
- a second gateway with the same client id (MQTT 5 DISCONNECT 0x8E "Session taken over"):
  counted, said plainly, and backed off instead of a reconnect loop of several per second;
- a broker that takes PUBLISHes and never answers PUBACK: the connection is dropped after
  `ack_timeout_s` and the rows, still in the outbox, are sent again on the next one;
- a broker that keeps no retained messages (Mosquitto's `retain_available false`): the data
  flows with the status topic and the Will not retained.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from pathlib import Path

from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.drain import Refusals
from water_edge.agent.uplink.health import RefusedStream
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.types import OutboxRow

PREFIX = f"water/{SITE}/{GATEWAY}"


def seqs_of(messages: list[Received], stream: str) -> list[int]:
    """The seqs of the copies of `stream`'s rows among what a subscriber received."""
    return [m.json()["seq"] for m in messages if m.topic == f"{PREFIX}/{stream}"]


def _acl(tmp_path: Path, denied_stream: str) -> Path:
    acl = tmp_path / "acl"
    acl.write_text(f"topic deny {PREFIX}/{denied_stream}\ntopic write {PREFIX}/#\ntopic read #\n")
    return acl


async def test_a_topic_the_acl_denies_keeps_its_rows_and_the_other_streams_flow(
    outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    # 60 rows, every other one on plc2, a topic the broker's ACL denies (MQTT 5: PUBACK 0x87).
    await outbox.append(reading_batches(60, streams=("plc1", "plc2")))
    # Mosquitto closes the connection at the denial, right after its PUBACK 0x87 (Mosquitto 2.0.11
    # does so with the suite's `max_queued_messages 0`, as EMQX does with `deny_action = disconnect`;
    # the shipped config's ten million keeps the connection open); set_tcp_nodelay
    # sends that PUBACK at once instead of after our acknowledgement of the one before (Nagle),
    # which the close would otherwise throw away (docs/operations.md).
    broker = Mosquitto(extra_config=f"acl_file {_acl(tmp_path, 'plc2')}\nset_tcp_nodelay true\n")
    with broker, Subscriber(broker.host, broker.port, f"{PREFIX}/#") as sub:
        config = mqtt_config(broker, max_inflight=8, reconnect_min_s=0.5, reconnect_max_s=30)
        run = await start_uplink(config, outbox)
        started = time.monotonic()
        # Generous: the 30 allowed rows take well under a second on one connection, the refusal is
        # known at the first close (tests/test_uplink_last_packets.py), the second connection comes
        # within a second. (The wait was 45 s while the PUBACK 0x87 could stay unread at the close:
        # 4-5 closes before the refusal was known, the backoff reaching 15.5 s.)
        # And plc2's last row, the outbox's last, held back: when plc1's last row fills the window,
        # the drain takes (and skips) it only at its next round, after that row's acknowledgement.
        await eventually(
            lambda: (h := run.uplink.health()).acked >= 30 and h.held_back == 30,
            15,
            what=lambda: f"every plc1 row acknowledged, every plc2 row held back: {run.uplink.health()}",
        )
        health = run.uplink.health()
        elapsed = time.monotonic() - started

        def plc1_seqs(messages: list[Received]) -> set[int]:
            return {m.json()["seq"] for m in messages if m.topic == f"{PREFIX}/plc1"}

        # The broker acknowledges a row before its copy reaches the subscriber: under load the
        # last ones come a moment after the count.
        received = await sub.wait_until_async(lambda ms: len(plc1_seqs(ms)) >= 30, 10)
    assert sorted(plc1_seqs(received)) == list(range(1, 31))
    # This broker closes the connection after an ACL denial: one reconnect, then plc2 waits (its
    # next probe is 1 s later, then 2, 4... up to reconnect_max_s) while plc1 flows. A loaded machine
    # (the suite on two cores) takes longer over the 30 rows and sees the probes that fall in it;
    # one reconnect per denied row would be 30.
    probes = math.floor(math.log2(1 + elapsed))  # by `elapsed`: at 1, 3, 7, 15 s
    assert health.reconnects <= 2 + probes, (
        f"a refused topic does not cost the other streams their connection ({elapsed:.1f} s)"
    )
    assert health.state == "online"
    assert health.rejected >= 1  # PUBACKs with a failure code: the first refusal and each failed probe
    assert (health.refused_streams, health.held_back) == (1, 30)
    assert health.last_error is not None
    assert f"{PREFIX}/plc2" in health.last_error
    assert "Not authorized" in health.last_error
    assert "kept in the outbox" in health.last_error
    stats = await outbox.stats()
    assert stats.rows == 30, "every denied row is still in the outbox: nothing is lost"
    assert any("1 streams, 30 rows held back" in line for line in health.status_lines())


async def test_a_denied_stream_flows_again_once_the_acl_allows_it(
    outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    await outbox.append(reading_batches(20, streams=("plc1", "plc2")))
    acl = _acl(tmp_path, "plc2")
    broker = Mosquitto(extra_config=f"acl_file {acl}\n")
    with broker, Subscriber(broker.host, broker.port, f"{PREFIX}/#") as sub:
        config = mqtt_config(broker, max_inflight=8, reconnect_min_s=0.2, reconnect_max_s=2)
        run = await start_uplink(config, outbox)
        await eventually(lambda: run.uplink.health().acked >= 10, 15, what="the plc1 rows")
        acl.write_text(f"topic write {PREFIX}/#\ntopic read #\n")
        broker.reload()
        await eventually(lambda: run.uplink.health().acked >= 20, 20, what="the plc2 rows, at a probe")
        health = run.uplink.health()
        # The broker acknowledges a row before its copy reaches the subscriber.
        received = await sub.wait_until_async(lambda ms: len(set(seqs_of(ms, "plc2"))) >= 10, 10)
    plc2 = seqs_of(received, "plc2")
    assert sorted(set(plc2)) == list(range(1, 11))
    assert (await outbox.stats()).rows == 0
    assert (health.refused_streams, health.held_back) == (0, 0)


async def test_a_stream_refused_many_rows_at_once_is_tried_again_after_reconnect_min_s(
    outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    """Many of a stream's rows in flight together come back refused together: one refusal, not
    one per row. Its first retry is due `reconnect_min_s` later, so once the ACL is fixed the rows
    flow within seconds (they used to wait `reconnect_max_s`: the backoff doubled at every row)."""
    await outbox.append(reading_batches(40, streams=("plc1", "plc2")))
    # Mosquitto answers each denied row 0x87 and keeps the connection, as on site (the suite's
    # broker queues no messages, and then drops a connection at its first denied row).
    acl = _acl(tmp_path, "plc2")
    broker = Mosquitto(extra_config=f"acl_file {acl}\nmax_queued_messages 1000\n")
    with broker, Subscriber(broker.host, broker.port, f"{PREFIX}/#") as sub:
        config = mqtt_config(broker, max_inflight=32, reconnect_min_s=0.5, reconnect_max_s=60)
        run = await start_uplink(config, outbox)
        await eventually(lambda: run.uplink.health().acked >= 20, 15, what="every plc1 row")
        assert run.uplink.health().rejected >= 8, "plc2's rows were refused while in flight together"
        acl.write_text(f"topic write {PREFIX}/#\ntopic read #\n")
        broker.reload()
        fixed = time.monotonic()
        # The probes after the first refusal: 0.5 s, then 1, 2, 4 s apart. A refusal per row
        # in flight made the first one wait 60 s.
        await eventually(lambda: run.uplink.health().acked >= 40, 20, what="the plc2 rows, at a probe")
        waited = time.monotonic() - fixed
        # The broker acknowledges a row before its copy reaches the subscriber.
        received = await sub.wait_until_async(lambda ms: len(set(seqs_of(ms, "plc2"))) >= 20, 10)
    plc2 = set(seqs_of(received, "plc2"))
    assert plc2 == set(range(1, 21))
    assert waited < 10, f"the plc2 rows waited {waited:.1f} s after the ACL allowed them"


def test_the_backoff_of_a_refused_stream_doubles_once_per_refused_probe() -> None:
    refusals = Refusals(retry_min_s=0.5, retry_max_s=60)
    rows = [OutboxRow(i, "plc2", i, "telemetry", 0, 1, b"") for i in range(2, 13)]
    for row in rows:  # 11 rows in flight together, refused together
        refusals.refused(row, f"{PREFIX}/plc2", "Not authorized (0x87)", now=100.0)
    (park,) = refusals.parked.values()
    assert (park.delay, park.until) == (0.5, 100.5)
    assert [r.id for r in refusals.probes(100.4)] == []
    now, waits = 100.5, []
    for _ in range(9):
        (probe,) = refusals.probes(now)
        assert probe.id == 2, "the oldest row is the probe"
        refusals.refused(probe, f"{PREFIX}/plc2", "Not authorized (0x87)", now=now + 0.01)
        waits.append(park.until - now)
        now = park.until
    assert [round(w, 2) for w in waits] == [1.01, 2.01, 4.01, 8.01, 16.01, 32.01, 60.01, 60.01, 60.01]
    assert refusals.streams() == (RefusedStream("plc2", f"{PREFIX}/plc2", "Not authorized (0x87)", 11),)


async def test_a_denied_stream_whose_rows_were_evicted_is_no_longer_reported_refused(
    start_uplink: StartUplink, tmp_path: Path
) -> None:
    """The outbox's quota evicts the denied stream's rows (the oldest): with nothing left to probe
    with, the stream used to stay "refused, rows held back" in the status until a restart."""
    first = reading_batches(20, streams=("plc1", "plc2"))
    later = reading_batches(40, streams=("plc3",), start_ns=2 * 10**18)
    async with await AsyncOutbox.open(tmp_path / "probe.db", max_bytes=1 << 20) as sizing:
        await sizing.append(later)
        quota = (await sizing.stats()).bytes + 300  # the later rows and the eviction notice fit, no more
    broker = Mosquitto(extra_config=f"acl_file {_acl(tmp_path, 'plc2')}\n")
    async with await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=quota) as box:
        await box.append(first)
        with broker, Subscriber(broker.host, broker.port, f"{PREFIX}/#") as sub:
            config = mqtt_config(broker, max_inflight=8, reconnect_min_s=0.2, reconnect_max_s=1)
            run = await start_uplink(config, box)
            await eventually(lambda: run.uplink.health().refused_streams == 1, 15, what="plc2 refused")
            await eventually(lambda: run.uplink.health().acked >= 10, 15, what="the plc1 rows")
            await box.append(later)  # over the quota: the oldest rows, plc2's among them, are evicted
            assert "plc2" not in {r.stream for r in await box.lease(0, 1000)}, "every plc2 row evicted"
            await eventually(lambda: run.uplink.health().refused_streams == 0, 20, what="plc2 forgotten")
            await eventually(
                lambda: (
                    {m.json()["seq"] for m in sub.snapshot() if m.topic == f"{PREFIX}/plc3"}
                    == set(range(1, 41))
                ),
                15,
                what="every plc3 row",
            )
            health = run.uplink.health()
    assert health.held_back == 0
    assert not any("refused by the broker" in line for line in health.status_lines())


class SilentBroker:
    """A raw-socket MQTT peer that CONNACKs, PUBACKs retained (status) messages and PINGs, and never
    PUBACKs data: a broker stuck behind its socket, which Mosquitto cannot be made into."""

    def __init__(self, *, take_over: bool = False) -> None:
        self.take_over = take_over  # answer the status, then DISCONNECT 0x8E "Session taken over"
        self.connections = 0
        self.data: list[list[bytes]] = []  # the data PUBLISH payloads, per connection
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> SilentBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mine: list[bytes] = []
        self.data.append(mine)
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first >> 4
                if kind == 1:  # CONNECT (MQTT 5): CONNACK success, no properties
                    writer.write(bytes([0x20, 3, 0, 0, 0]))
                elif kind == 3:  # PUBLISH at QoS 1
                    (topic_len,) = struct.unpack("!H", body[:2])
                    mid = body[2 + topic_len : 4 + topic_len]
                    if first & 1:  # retained: the status; answered, or the uplink never goes online
                        writer.write(bytes([0x40, 2]) + mid)
                        if self.take_over:
                            writer.write(bytes([0xE0, 1, 0x8E]))
                    else:
                        mine.append(body)
                elif kind == 12:  # PINGREQ: the peer is alive, only its PUBACKs are stuck
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_broker_that_never_pubacks_is_given_up_and_the_rows_go_again(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    await outbox.append(reading_batches(5))
    async with SilentBroker() as peer:
        config = mqtt_config(_Where(peer.port), ack_timeout_s=2, keepalive_s=5)
        run = await start_uplink(config, outbox)
        # Before: the uplink sat online with 5 in flight for as long as the test waited.
        await eventually(
            lambda: len(peer.data) >= 2 and len(peer.data[1]) == 5, 20, what="a second connection"
        )
        health = run.uplink.health()
    assert len(peer.data[0]) == 5
    assert health.ack_timeouts >= 1
    assert (await outbox.stats()).rows == 5, "nothing unacknowledged is deleted"
    assert f"no-PUBACK timeouts {health.ack_timeouts}" in health.status_lines()[1]


class _Where:
    """Just the address `mqtt_config` reads from a broker."""

    def __init__(self, port: int) -> None:
        self.host = "127.0.0.1"
        self.port = port


async def test_two_gateways_with_one_client_id_back_off_and_say_so(
    outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    """A cloned SD card: two gateways, one client id; each connection takes the other's over.
    Mosquitto 2.0.11 just closes the old connection (newer brokers send DISCONNECT 0x8E, counted in
    `taken_over`). Before: each side reconnected within 0.1-0.2 s, some 10 connections a second
    between them, for ever, with only "connection lost: Unspecified error" to go by."""
    explained: list[str] = []
    async with await AsyncOutbox.open(tmp_path / "clone.db", max_bytes=64 * 1024 * 1024) as clone:
        with Mosquitto() as broker:
            config = mqtt_config(broker, reconnect_min_s=0.1, reconnect_max_s=4)
            first = await start_uplink(config, outbox)
            await first.states.wait(lambda s: s == "online")
            second = await start_uplink(config, clone)
            started = time.monotonic()
            while time.monotonic() - started < 8:
                for run in (first, second):
                    error = run.uplink.health().last_error or ""
                    if "another client uses this client id" in error:
                        explained.append(error)
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            a, b = first.uplink.health(), second.uplink.health()
    connections = a.connections + b.connections
    # With the backoff growing to 4 s on each side: a handful, where there were some 80.
    assert connections / elapsed < 2.0, f"{connections} connections in {elapsed:.1f} s"
    assert explained, "the reason is said while the uplink backs off"


async def test_a_session_taken_over_is_counted_and_named(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """Brokers that say so (MQTT 5 DISCONNECT 0x8E, as EMQX and HiveMQ do): counted, named, backed off."""
    async with SilentBroker(take_over=True) as peer:
        config = mqtt_config(_Where(peer.port), reconnect_min_s=0.1, reconnect_max_s=4)
        run = await start_uplink(config, outbox)
        await eventually(lambda: run.uplink.health().taken_over >= 2, 10, what="two take-overs")
        await asyncio.sleep(4)
        health = run.uplink.health()
    assert health.last_error is not None
    assert "session taken over: another client uses this client id" in health.last_error
    # Some 6 expected with the growing backoff; without it (0.1-0.2 s each time) some 30.
    assert health.taken_over <= 12, "backed off, not a reconnect loop"
    assert f"client id taken over {health.taken_over} times" in health.status_lines()[1]


async def test_the_window_stays_under_mosquittos_receive_maximum(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """Mosquitto announces `max_inflight_messages` as its Receive Maximum (MQTT 5 CONNACK); MQTT 5
    lets a broker drop a client that exceeds it (0x93). The uplink's window (32 here) shrinks to it.
    Already handled (session.py `on_connack`); this proves it against the real broker."""
    await outbox.append(reading_batches(300))
    with Mosquitto(extra_config="max_inflight_messages 10\n") as broker:
        run = await start_uplink(mqtt_config(broker, max_inflight=32), outbox)
        await eventually(lambda: run.uplink.health().acked == 300, 20, what="all 300 acknowledged")
        health = run.uplink.health()
        session = run.uplink._session
        window = None if session is None else session.window
    assert (health.reconnects, health.published) == (0, 300)
    assert window == 10


async def test_a_broker_that_keeps_no_retained_messages_still_gets_the_data_over_mqtt_5(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """A broker with `retain_available false` refuses a CONNECT whose Will is retained (MQTT 5
    CONNACK 0x9A "Retain not supported"). The agent's Will and status are retained: it was refused
    at every attempt and sent nothing, ever. It now connects again at once with neither retained."""
    await outbox.append(reading_batches(10))
    broker = Mosquitto(extra_config="retain_available false\n")
    with broker, Subscriber(broker.host, broker.port, f"{PREFIX}/#") as sub:
        run = await start_uplink(mqtt_config(broker), outbox)
        await eventually(lambda: run.uplink.health().acked >= 10, 15, what="every row acknowledged")
        health = run.uplink.health()
        # the subscriber's copy may come after the PUBACKs the uplink waited for
        status = await sub.wait_for_async(1, 10, topic=f"{PREFIX}/status")
    assert [m.json()["state"] for m in status] == ["online"]
    assert (health.state, health.refused, health.retained_status) == ("online", 1, False)
    assert "status topic not retained: the broker keeps no retained messages" in health.status_lines()


async def test_over_mqtt_3_a_broker_that_keeps_no_retained_messages_is_named_and_retain_false_works(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """MQTT 3.1.1 has no reason code for it: the broker closes the connection at CONNECT, without a
    CONNACK. After a few, `last_error` says what commonly does that; `retain = false` is the cure."""
    await outbox.append(reading_batches(10))
    broker = Mosquitto(extra_config="retain_available false\n")
    with broker:
        refused = await start_uplink(mqtt_config(broker, protocol="3.1.1", reconnect_max_s=0.5), outbox)
        await eventually(
            lambda: "keeps no retained messages" in (refused.uplink.health().last_error or ""),
            15,
            what="the closed CONNECTs explained",
        )
        assert refused.uplink.health().acked == 0
        await refused.uplink.stop()
        await refused.task
        run = await start_uplink(mqtt_config(broker, protocol="3.1.1", retain=False), outbox)
        await eventually(lambda: run.uplink.health().acked >= 10, 15, what="every row acknowledged")
    assert "[uplink] retain = false" in (refused.uplink.health().last_error or "")


async def test_a_broker_that_grants_qos_0_only_is_refused_with_why_the_agent_needs_qos_1(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    await outbox.append(reading_batches(3))
    with Mosquitto(extra_config="max_qos 0\n") as broker:
        run = await start_uplink(mqtt_config(broker), outbox)
        await eventually(lambda: run.uplink.health().refused >= 1, 10, what="the CONNECT refused")
        health = run.uplink.health()
    assert health.state == "refused"
    assert "QoS not supported: the broker grants QoS 0 only" in (health.last_error or "")
    assert health.acked == 0


async def test_a_broker_that_speaks_mqtt_3_only_is_named_with_the_setting_to_change(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """A broker from before MQTT 5 answers a version 5 CONNECT with 'unacceptable protocol version'
    (MQTT 3.1.1 return code 1) and closes: a raw-socket peer, as Mosquitto speaks MQTT 5."""

    async def mqtt_3_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(1)
            length, shift = 0, 0
            while (byte := (await reader.readexactly(1))[0]) & 0x80:
                length |= (byte & 0x7F) << shift
                shift += 7
            length |= byte << shift
            await reader.readexactly(length)
            writer.write(bytes([0x20, 2, 0, 1]))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(mqtt_3_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5)
        run = await start_uplink(config, outbox)
        await eventually(lambda: run.uplink.health().refused >= 1, 10, what="the CONNECT refused")
    finally:
        server.close()
    assert 'set [uplink] protocol = "3.1.1"' in (run.uplink.health().last_error or "")
