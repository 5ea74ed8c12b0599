"""The uplink over a cellular field link: slow, long, stalling, forgetting flows, flapping.

A real Mosquitto behind `ImpairedLink` (tests/support/impaired_link.py), the uplink and a real
outbox; timings scaled down through the config (keep-alive 5 s, short timeouts and backoff). Each
test asserts what a user relies on: every row arrives, duplicates stay within the documented
window, the connection is not torn down by a link that is merely slow, reconnects stay bounded.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.impaired_link import ImpairedLink
from tests.support.sparkplug import TAGS, PrimaryHost, edge_config, edge_nodes, flows, rows
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink.config import SparkplugConfig
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.agent.uplink.sparkplug.catalog import DeviceSpec
from water_edge.agent.uplink.state import ConnState
from water_edge.buffer.async_outbox import AsyncOutbox

pytestmark = pytest.mark.slow

BASE = f"water/{SITE}/{GATEWAY}"
WINDOW = 20  # Mosquitto's Receive Maximum, below the default max_inflight of 32


async def rows_left(box: AsyncOutbox) -> int:
    return (await box.stats()).rows


def seqs(sub: Subscriber, stream: str | None = None) -> Counter[tuple[str, int]]:
    docs = [m.json() for m in sub.snapshot() if m.topic != f"{BASE}/status"]
    return Counter((d["stream"], d["seq"]) for d in docs if stream is None or d["stream"] == stream)


@pytest.fixture
async def link(mosquitto: Mosquitto) -> AsyncIterator[ImpairedLink]:
    proxy = ImpairedLink(mosquitto.host, mosquitto.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


class Appender:
    """Live rows, one stream, appended and announced as the pipeline does."""

    def __init__(self, box: AsyncOutbox, uplink: MqttUplink, stream: str = "plc1") -> None:
        self.box, self.uplink, self.stream, self.n = box, uplink, stream, 0

    async def add(self, n: int = 1) -> None:
        await self.box.append(reading_batches(n, (self.stream,), start_ns=10**18 + self.n * 10_000))
        self.n += n
        self.uplink.notify()

    async def trickle(self, stop: asyncio.Event, every_s: float = 0.1) -> None:
        while not stop.is_set():
            await self.add()
            await asyncio.sleep(every_s)


# --- 1. a backlog through a slow, long link --------------------------------------------------------


async def test_a_backlog_drains_at_the_links_pace_on_one_connection_live_rows_first(
    link: ImpairedLink, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """800 ms round trip, the upstream a token bucket: PUBACKs come as the link carries the
    rows, so ack_timeout_s (scaled down to 2 s) never fires and the drain is never restarted;
    rows committed during the drain overtake it. (With a 0.8 s round trip the window of 20, not
    the 20 KB/s, bounds the pace: 25 messages a second.)"""
    link.delay_s, link.up.rate, link.down.rate = 0.4, 20_000, 20_000
    await outbox.append(reading_batches(250, ("plc1", "meter7")))
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(link, keepalive_s=5, ack_timeout_s=2.0), outbox)
        live = Appender(outbox, run.uplink, "live")
        await eventually(lambda: run.uplink.health().acked >= 50, 20, "the drain under way")
        for _ in range(5):
            await live.add()
            await asyncio.sleep(0.3)
        await eventually(lambda: len(seqs(sub)) == 255, 60, lambda: f"{len(seqs(sub))} of 255 arrived")
        health = run.uplink.health()
        arrivals = [m.json() for m in sub.snapshot() if m.topic != f"{BASE}/status"]
    assert health.ack_timeouts == 0
    assert health.connections == 1
    assert health.state is ConnState.ONLINE
    assert max(seqs(sub).values()) == 1  # nothing sent twice
    last_live = max(i for i, d in enumerate(arrivals) if d["stream"] == "live")
    assert last_live < len(arrivals) - 50, "live rows waited behind the backlog"


async def test_a_message_slower_to_send_than_the_keepalive_arrives_and_is_not_sent_forever(
    link: ImpairedLink, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """A row of ~60 KB through 4 KB/s takes ~15 s, three keep-alives of 5 s. The broker's
    PINGRESP queues behind it; paho gave the connection up after two keep-alives, and the next
    connection sent the same row again from the start: it never arrived."""
    link.delay_s, link.up.rate, link.down.rate = 0.2, 4_000, 4_000
    await outbox.append(reading_batches(1, per_row=600))
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(link, keepalive_s=5, ack_timeout_s=120), outbox)

        async def done_or_looping() -> bool:
            return await rows_left(outbox) == 0 or run.uplink.health().connections > 2

        await eventually(done_or_looping, 60, "the rows delivered, or the connection dropped twice")
        health = run.uplink.health()
    assert health.connections == 1, f"dropped by the keep-alive: {health.last_error}"
    assert await rows_left(outbox) == 0
    assert list(seqs(sub).items()) == [(("plc1", 1), 1)]


# --- 2. a stall, 3. a flow the carrier's NAT forgot --------------------------------------------------


async def test_a_stalled_link_is_given_up_by_the_keepalive_and_nothing_is_lost(
    link: ImpairedLink, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """No RST, no FIN, nothing passes: only the keep-alive can tell (no rows in flight here
    long enough for ack_timeout_s, left at its default). After the link returns every row
    arrives, each duplicate within the in-flight window."""
    link.delay_s = 0.1
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(link, keepalive_s=5), outbox)
        rows_ = Appender(outbox, run.uplink)
        await rows_.add(5)
        await eventually(lambda: len(seqs(sub)) == 5, 10, "the first rows")
        stop = asyncio.Event()
        producing = asyncio.create_task(rows_.trickle(stop, 0.5))
        online = len(run.states.states)
        link.stall()
        await run.states.wait(lambda s: s is ConnState.OFFLINE, 20, since=online)
        noticed = run.uplink.health().last_error
        link.resume()
        stop.set()
        await producing
        await eventually(lambda: len(seqs(sub)) == rows_.n, 30, lambda: f"{len(seqs(sub))} of {rows_.n}")
        health = run.uplink.health()
    assert "Keep alive timeout" in (noticed or "")
    assert health.connections == 2
    assert sum(n - 1 for n in seqs(sub).values()) <= WINDOW


async def test_a_hung_broker_whose_kernel_still_acknowledges_is_given_up_by_the_keepalive(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """The keep-alive counts the peer's TCP acknowledgements of data that waits behind a slow
    link; a stopped broker's kernel acknowledges at once, nothing waits, and it is still noticed."""
    run = await start_uplink(mqtt_config(mosquitto, keepalive_s=5, ack_timeout_s=120), outbox)
    rows_ = Appender(outbox, run.uplink)
    await rows_.add()
    await run.states.wait(lambda s: s is ConnState.ONLINE, 10)
    seen = len(run.states.states)
    stop = asyncio.Event()
    producing = asyncio.create_task(rows_.trickle(stop, 0.5))
    mosquitto.pause()
    try:
        await run.states.wait(lambda s: s is ConnState.OFFLINE, 20, since=seen)
        noticed = run.uplink.health().last_error
    finally:
        mosquitto.resume()
        stop.set()
        await producing
    assert "Keep alive timeout" in (noticed or "")


async def test_a_black_holed_flow_is_left_for_a_new_one_losing_no_row(
    link: ImpairedLink, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """Carrier NAT dropped the idle flow: what the agent sends vanishes, nothing comes back, the
    socket stays open. With rows in flight, ack_timeout_s gives the connection up; the next
    connection gets a new mapping and sends the rows again."""
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(link, keepalive_s=30, ack_timeout_s=1.5), outbox)
        rows_ = Appender(outbox, run.uplink)
        await rows_.add(3)

        async def acknowledged() -> bool:
            return await rows_left(outbox) == 0

        await eventually(acknowledged, 10, "the first rows acknowledged")
        link.black_hole()
        await rows_.add(10)
        await eventually(lambda: run.uplink.health().connections == 2, 20, "a new connection")
        await rows_.add(5)
        await eventually(lambda: len(seqs(sub)) == rows_.n, 20, lambda: f"{len(seqs(sub))} of {rows_.n}")
        health = run.uplink.health()
    assert health.ack_timeouts == 1
    assert link.accepted == 2
    assert max(seqs(sub).values()) == 1  # what vanished never reached the broker: no duplicate


# --- 4. a flapping link ----------------------------------------------------------------------------------


async def test_a_link_cut_again_and_again_loses_nothing_and_leaks_no_descriptor(
    link: ImpairedLink, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """Twenty RSTs under a steady flow of rows: one connection per cut (no reconnect storm), the
    outbox consistent (every row arrives, duplicates within the window per cut) and the
    process's descriptors and tasks as many after as before."""
    link.delay_s = 0.05
    cuts = 20
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(
            mqtt_config(link, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.3), outbox
        )
        rows_ = Appender(outbox, run.uplink)
        await rows_.add(5)
        await eventually(lambda: len(seqs(sub)) == 5, 10, "the first rows")
        fds, tasks = len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())
        stop = asyncio.Event()
        producing = asyncio.create_task(rows_.trickle(stop, 0.05))
        for i in range(cuts):

            def connected(i: int = i) -> bool:
                return run.uplink.health().connections == i + 1

            await eventually(connected, 10, "online again")
            await asyncio.sleep(0.3)
            link.cut()
        stop.set()
        await producing
        await eventually(lambda: len(seqs(sub)) == rows_.n, 30, lambda: f"{len(seqs(sub))} of {rows_.n}")
        health = run.uplink.health()
        # One descriptor or task kept per reconnect would be 20 more; a connect or a broker
        # client's socket in passing is one or two either way.
        assert len(os.listdir("/proc/self/fd")) <= fds + 2
        assert len(asyncio.all_tasks()) <= tasks + 1
    assert health.connections == cuts + 1
    assert link.accepted == cuts + 1
    assert sum(n - 1 for n in seqs(sub).values()) <= WINDOW * (cuts + 1)


# --- 5. Sparkplug B: QoS 0 and the rolling history over the same link ------------------------------------


async def test_sparkplug_a_backlog_slower_than_the_link_is_not_dropped_by_the_keepalive(
    tmp_path: Path,
) -> None:
    """backlog_rows_per_s above what the link carries: QoS 0 DATA queues in the socket, and the
    history's receipts and the PINGRESP behind it. The connection was given up by the
    keep-alive every ~10 s, the history published again after each birth: the outbox never
    emptied. Now the one connection carries it all, each reading once."""
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=2**28, synchronous="normal") as box:
        with Mosquitto() as broker, PrimaryHost(broker.host, broker.port) as host:
            host.publish_state(True)
            link = ImpairedLink(broker.host, broker.port, delay_s=0.2, up_bps=1_500, down_bps=1_500)
            await link.start()
            await box.append(rows(400))
            spark = SparkplugConfig(primary_host_id="scada", backlog_rows_per_s=400)
            # A keep-alive of 10 s: the 400 rows take ~25 s to carry, so the old code's PINGRESP,
            # queued behind them, missed it; the proxy's acknowledgements of a held backlog come
            # a window at a time, seconds apart, which a 5 s keep-alive did not always outlast.
            config = edge_config(broker, port=link.port, sparkplug=spark, keepalive_s=10)
            async with edge_nodes(tmp_path, [DeviceSpec("plc1", TAGS)]) as make:
                uplink, _ = make(config, box, history_keep_s=1.0)

                async def done_or_looping() -> bool:
                    return await rows_left(box) == 0 or uplink.health().connections > 2

                await eventually(done_or_looping, 60, "released, or the connection dropped twice")
                health = uplink.health()
                assert health.connections == 1, f"dropped: {health.last_error}"
                # Released on the broker's receipt: the host's copies of the last rows come a moment later.
                got = await asyncio.to_thread(host.wait, lambda ms: len(set(flows(ms))) >= 400, 30)
            await link.stop()
    seen = Counter(flows(got))
    assert set(seen) == {float(i) for i in range(400)}
    assert max(seen.values()) == 1


async def test_sparkplug_the_rolling_history_survives_a_black_holed_flow_and_a_stall(tmp_path: Path) -> None:
    """QoS 0 DATA into a flow the NAT forgot, then into a stalled link: nothing is released
    without the broker's receipt, so every reading arrives after the next birth."""
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=2**28, synchronous="normal") as box:
        with Mosquitto() as broker, PrimaryHost(broker.host, broker.port) as host:
            host.publish_state(True)
            link = ImpairedLink(broker.host, broker.port, delay_s=0.1)
            await link.start()
            async with edge_nodes(tmp_path, [DeviceSpec("plc1", TAGS)]) as make:
                uplink, states = make(edge_config(broker, port=link.port), box, history_keep_s=1.0)
                written = 0

                async def produce(n: int) -> None:
                    nonlocal written
                    for _ in range(n):
                        await box.append(rows(2, start=written))
                        written += 2
                        uplink.notify()
                        await asyncio.sleep(0.1)

                await produce(10)
                for impair in (link.black_hole, link.stall):
                    seen = len(states.states)
                    impair()
                    await produce(10)
                    await states.wait(lambda s: s is not ConnState.ONLINE, 20, since=seen)
                    link.resume()
                    await produce(10)

                async def released() -> bool:
                    return await rows_left(box) == 0

                await eventually(released, 30, "every row released")
            await link.stop()
            # Released on the broker's receipt: the host's copies of the last rows come a moment later.
            got = await asyncio.to_thread(host.wait, lambda ms: len(set(flows(ms))) >= written, 30)
    seen_ = Counter(flows(got))
    assert set(seen_) == {float(i) for i in range(written)}, "a reading is missing"


async def test_sparkplug_a_live_row_overtakes_a_backlog_faster_than_the_link(tmp_path: Path) -> None:
    """backlog_rows_per_s (400 a second, ~28 KB/s) far above what the link carries (1.5 KB/s): the
    backlog lane waits while what it published has not left the host, so a live row committed
    once the backlog is arriving goes out behind a few KB and the link's own buffer, not behind
    the backlog (before, it arrived after every backlog row published by then: 374 of 500)."""
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=2**28, synchronous="normal") as box:
        with Mosquitto() as broker, PrimaryHost(broker.host, broker.port) as host:
            host.publish_state(True)
            link = ImpairedLink(broker.host, broker.port, delay_s=0.2, up_bps=1_500, down_bps=1_500)
            await link.start()
            await box.append(rows(500))
            spark = SparkplugConfig(primary_host_id="scada", backlog_rows_per_s=400)
            async with edge_nodes(tmp_path, [DeviceSpec("plc1", TAGS)]) as make:
                uplink, _ = make(
                    edge_config(broker, port=link.port, sparkplug=spark), box, history_keep_s=1.0
                )
                await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 10, 30)
                await box.append(rows(1, start=10_000))  # live: committed after the birth
                uplink.notify()
                await asyncio.to_thread(host.wait, lambda ms: 10_000.0 in flows(ms), 60)
                arrived = flows(host.snapshot())
                held = uplink.health().sparkplug
            await link.stop()
    before = arrived.index(10_000.0)
    assert set(arrived[:before]) <= {float(i) for i in range(500)}
    assert before < 250, f"the live row came after {before} backlog readings"  # of 500
    assert held is not None
    assert held.backlog_holds >= 1


async def test_sparkplug_a_backlog_on_a_fast_link_is_never_held(tmp_path: Path) -> None:
    """The flow control holds the backlog only for a link that does not take it: straight to the
    broker, a backlog in leases of 64 rows at 2000 rows a second goes out without a hold, each
    reading once, on one connection."""
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=2**28, synchronous="normal") as box:
        with Mosquitto() as broker, PrimaryHost(broker.host, broker.port) as host:
            host.publish_state(True)
            await box.append(rows(1_000))
            spark = SparkplugConfig(primary_host_id="scada", backlog_rows_per_s=2_000)
            async with edge_nodes(tmp_path, [DeviceSpec("plc1", TAGS)]) as make:
                uplink, _ = make(edge_config(broker, sparkplug=spark), box, history_keep_s=1.0)
                await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 1_000, 30)
                health = uplink.health()
    assert health.sparkplug is not None
    assert (health.sparkplug.backlog_holds, health.sparkplug.backlog_held_s) == (0, 0.0)
    assert health.sparkplug.historical_rows == 1_000
    assert health.connections == 1
    assert Counter(flows(host.snapshot(), historical=True)) == Counter(float(i) for i in range(1_000))
