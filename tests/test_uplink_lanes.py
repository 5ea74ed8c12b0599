"""Live data never waits behind a backlog, and the command channel hook, against a real Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.broker import Mosquitto, Publisher, Subscriber
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config
from water_edge.agent.uplink.commands import COMMAND_QUEUE, MAX_COMMAND_BYTES
from water_edge.agent.uplink.health import CommandStats
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading

BASE = f"water/{SITE}/{GATEWAY}"
BACKLOG = 6_000


def one_reading_rows(n: int, stream: str, ts0: int) -> list[Batch]:
    return [Batch(stream, readings=[Reading(stream, "level", ts0 + i, float(i))]) for i in range(n)]


async def test_live_rows_overtake_a_long_backlog_and_everything_arrives(
    tmp_path: Path, mosquitto: Mosquitto, start_uplink: StartUplink
) -> None:
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=1 << 30, synchronous="normal") as box:
        await box.append(one_reading_rows(BACKLOG, "plc1", 10**18))
        with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/+") as sub:
            run = await start_uplink(mqtt_config(mosquitto, max_inflight=32), box)
            await eventually(lambda: run.uplink.health().acked >= 500, 30)
            await box.append(one_reading_rows(1, "plc1", 2 * 10**18))  # live: seq BACKLOG + 1
            run.uplink.notify()
            await sub.wait_until_async(
                lambda ms: sum(1 for m in ms if not m.topic.endswith("/status")) >= BACKLOG + 1,
                within_s=60,
            )
            health = run.uplink.health()
            # Stopped while its outbox is open: the fixture's teardown came after the outbox closed,
            # and an uplink still leasing then failed the test at teardown (seen under load).
            await run.uplink.stop(drain_timeout_s=1.0)
            await asyncio.wait_for(run.task, 10)
    seqs = [m.json()["seq"] for m in sub.snapshot() if not m.topic.endswith("/status")]
    live_at = seqs.index(BACKLOG + 1)
    assert live_at < seqs.index(BACKLOG), "the live row went out before the backlog finished"
    assert live_at < BACKLOG // 2
    assert sorted(set(seqs)) == list(range(1, BACKLOG + 2)), "every row arrived"
    backlog_order = [s for s in seqs if s <= BACKLOG]
    assert backlog_order == sorted(backlog_order), "the backlog lane is in seq order"
    assert health.published_live >= 1
    assert health.published_backlog >= BACKLOG


async def test_commands_reach_the_handler_and_survive_a_broker_restart(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    got: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    async def handler(suffix: str, payload: bytes) -> None:
        got.append((suffix, payload))
        arrived.set()

    with Mosquitto(persistence=False) as broker:
        run = await start_uplink(mqtt_config(broker), outbox, on_command=handler)
        # Online means the SUBSCRIBE is in place: it goes out before the online status, whose
        # PUBACK the uplink waits for, and the broker handles one client's packets in order.
        await run.states.wait(lambda s: s == "online")
        with Publisher(broker.host, broker.port) as operator:
            operator.publish(f"{BASE}/cmd/config/reload", b'{"id": 1}')
            operator.publish(f"{BASE}/cmdx", b"not a command topic")
            async with asyncio.timeout(10):
                await arrived.wait()
        broker.stop()
        await run.states.wait(lambda s: s == "offline")
        broker.start()
        await run.states.wait(lambda s: s == "online", since=len(run.states.states) - 1)
        arrived.clear()
        with Publisher(broker.host, broker.port) as operator:
            operator.publish(f"{BASE}/cmd/reboot", b"{}")
            async with asyncio.timeout(10):
                await arrived.wait()
    assert got == [("config/reload", b'{"id": 1}'), ("reboot", b"{}")]
    assert command_stats(run.uplink).handled == 2


async def test_a_busy_handler_drops_and_counts_and_oversized_commands_are_rejected(
    outbox: AsyncOutbox, mosquitto: Mosquitto, start_uplink: StartUplink
) -> None:
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(suffix: str, _payload: bytes) -> None:
        await release.wait()
        handled.append(suffix)

    run = await start_uplink(mqtt_config(mosquitto), outbox, on_command=slow)
    await run.states.wait(lambda s: s == "online")
    total = COMMAND_QUEUE + 14
    with Publisher(mosquitto.host, mosquitto.port) as operator:
        for i in range(total):
            operator.publish(f"{BASE}/cmd/n{i}", b"x", wait=False)
        operator.publish(f"{BASE}/cmd/big", b"x" * (MAX_COMMAND_BYTES + 1))
        await eventually(lambda: command_stats(run.uplink).received >= total + 1, 10)
    stats = command_stats(run.uplink)
    assert stats.rejected == 1
    assert stats.dropped >= total - COMMAND_QUEUE - 1
    assert run.uplink.health().state == "online", "a stuck handler never stalls the uplink"
    release.set()
    await eventually(lambda: len(handled) >= total - stats.dropped, 10)
    assert handled == sorted(handled, key=lambda s: int(s[1:])), "kept commands run in order"
    assert "big" not in handled


def command_stats(uplink: MqttUplink) -> CommandStats:
    stats = uplink.health().commands
    assert stats is not None, "the uplink was given a command handler"
    return stats
