"""Broker failover on real sockets: two Mosquittos, the one in use is killed (-9) mid-stream.

The agent's side of failover needs no cluster: a killed broker's port refuses at once and the
uplink moves to the next server. The cluster's side (a session taken over on another node, nothing
acknowledged lost) is test_fleet_cluster.py against three RabbitMQ nodes.
"""

from __future__ import annotations

from tests.support.broker import Mosquitto, Subscriber
from tests.support.uplink import GATEWAY, SITE, StartUplink, reading_batches
from water_edge.agent.uplink.config import MqttConfig
from water_edge.buffer.async_outbox import AsyncOutbox

DATA = f"water/{SITE}/{GATEWAY}/plc1"


def data_seqs(sub: Subscriber) -> list[int]:
    return [m.json()["seq"] for m in sub.snapshot() if m.topic == DATA]


async def test_killing_the_broker_in_use_moves_the_agent_to_the_next_and_every_row_arrives(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with Mosquitto() as first, Mosquitto() as second:
        cfg = MqttConfig(
            servers=(f"mqtt://{first.host}:{first.port}", f"mqtt://{second.host}:{second.port}"),
            reconnect_min_s=0.2,
            reconnect_max_s=0.4,
            connect_timeout_s=2.0,
            max_inflight=8,
        )
        with (
            Subscriber(first.host, first.port, DATA) as on_first,
            Subscriber(second.host, second.port, DATA) as on_second,
        ):
            run = await start_uplink(cfg, outbox)
            await outbox.append(reading_batches(50))
            run.uplink.notify()
            await on_first.wait_until_async(lambda msgs: len(msgs) >= 50)
            assert run.uplink.health().broker == f"{first.host}:{first.port}"

            first.kill()
            await outbox.append(reading_batches(50, start_ns=2 * 10**18))
            run.uplink.notify()
            await on_second.wait_until_async(
                lambda msgs: {m.json()["seq"] for m in msgs} >= set(range(51, 101))
            )

            health = run.uplink.health()
            seen = set(data_seqs(on_first)) | set(data_seqs(on_second))
    assert seen == set(range(1, 101)), "every committed row arrived at least once"
    assert (health.broker, health.server_index, health.failovers) == (f"{second.host}:{second.port}", 1, 1)
    lines = health.status_lines()  # host:port on the first line (what a technician reads first)
    assert lines[0].startswith(f"online  {second.host}:{second.port}")
    assert "broker 2 of 2  failovers 1" in lines
