"""A row whose message is larger than the broker's Maximum Packet Size (MQTT 5 CONNACK): published,
it got the connection dropped ('Packet too large'), and again at every reconnect, with every row
behind it waiting - the uplink never got past it. Now it is not sent: left in the outbox (which
ages it out), counted in `encode_errors`, named in the uplink's state; the rows after it flow, and
the centre sees the gap in its stream's seq."""

from __future__ import annotations

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, Running, StartUplink, mqtt_config, reading_batches
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading

LIMIT = 20_000


@pytest.mark.parametrize(
    ("broker_limit", "settings"),
    [
        pytest.param(LIMIT, {}, id="mqtt5-announced"),
        # MQTT 3.1.1 has no way to announce it: the config says what the broker takes.
        pytest.param(LIMIT, {"protocol": "3.1.1", "broker_max_packet_size": LIMIT}, id="mqtt311-configured"),
        # Configured below what an MQTT 5 broker announces (a bridge further on takes less): the smaller.
        pytest.param(10 * LIMIT, {"broker_max_packet_size": LIMIT}, id="mqtt5-configured-smaller"),
    ],
)
async def test_a_row_over_the_brokers_maximum_packet_size_is_left_and_the_rest_flows(
    outbox: AsyncOutbox, start_uplink: StartUplink, broker_limit: int, settings: dict[str, object]
) -> None:
    await outbox.append(reading_batches(2))
    await outbox.append([Batch("plc1", readings=[Reading("plc1", "name", 10**18, "x" * 50_000)])])
    await outbox.append(reading_batches(3, start_ns=2 * 10**18))
    broker = Mosquitto(extra_config=f"max_packet_size {broker_limit}\n")
    with broker, Subscriber(broker.host, broker.port, f"water/{SITE}/{GATEWAY}/#") as sub:
        run = await start_uplink(mqtt_config(broker, **settings), outbox)
        data = await sub.wait_for_async(5, 10, f"water/{SITE}/{GATEWAY}/plc1")
        await eventually(lambda: run.uplink.health().acked >= 5, 5, what="the five acknowledged")
        health = run.uplink.health()
    assert [m.json()["seq"] for m in data] == [1, 2, 4, 5, 6]  # 3 is the gap the centre reports
    assert health.state == "online"
    assert health.reconnects == 0
    assert health.encode_errors == 1
    assert health.last_error is not None
    assert "over the broker's Maximum Packet Size (20000): not sent, left in the outbox" in health.last_error

    async def only_the_oversized_left() -> bool:
        # The acknowledged rows are deleted by the outbox's next commit, a moment after `acked`.
        return (await outbox.stats()).rows == 1

    await eventually(only_the_oversized_left, 5, what="the acknowledged rows deleted, the oversized one left")


async def test_the_size_is_counted_as_the_broker_counts_it(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """A message that fills the limit as MQTT 5 counts a packet (the whole of it) goes; with the
    limit one byte lower it is left. Mosquitto itself takes up to 2 bytes more (it leaves part of
    the fixed header out): the count errs on the side the broker accepts."""
    from water_edge.agent.uplink.json_encoding import encode
    from water_edge.agent.uplink.transport import PublishProperties, publish_packet_size

    topic = f"water/{SITE}/{GATEWAY}/plc1"
    await outbox.append([Batch("plc1", readings=[Reading("plc1", "name", 10**18, "x" * 10_000)])])
    (row,) = await outbox.lease(0, 1)
    payload = encode(row, SITE, GATEWAY)  # under the row's epoch (its outbox's), as the uplink sends it
    size = publish_packet_size(topic, payload, PublishProperties("application/json"))
    for limit, sent in ((size - 1, False), (size, True)):
        broker = Mosquitto(extra_config=f"max_packet_size {limit}\n")
        with broker, Subscriber(broker.host, broker.port, f"water/{SITE}/{GATEWAY}/#") as sub:
            run = await start_uplink(mqtt_config(broker), outbox)
            if sent:
                (message,) = await sub.wait_for_async(1, 10, topic)
                assert message.json()["seq"] == 1
            else:

                def left(run: Running = run) -> bool:
                    return run.uplink.health().encode_errors == 1

                await eventually(left, 10, what="left")
            health = run.uplink.health()
            await run.uplink.stop()
        assert (health.published, health.reconnects) == (int(sent), 0), limit
