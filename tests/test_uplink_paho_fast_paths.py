"""The real transport's success-PUBACK shortcut around paho's per-packet work, against a real Mosquitto.

`PahoTransport` acknowledges success PUBACKs without paho's decoding. What a user relies on is
that this changes nothing delivered or acknowledged: every message arrives once, whole and in
order; every PUBACK reaches the listener once with the broker's own reason; a refused PUBLISH is
still reported as refused; messages coming in beside the PUBACKs, one of them longer than one
bounded read, still arrive whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tests.support.broker import Mosquitto, Publisher, Subscriber
from tests.support.testing import eventually
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.transport import Connack, ConnectOptions, Reason, Will

WINDOW = 20


@dataclass
class Heard:
    """A `TransportListener` that records what the connection reports."""

    acks: list[tuple[int, int, bool]] = field(default_factory=list)  # (mid, reason value, is_failure)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connack: asyncio.Event = field(default_factory=asyncio.Event)
    closed: list[str] = field(default_factory=list)

    def on_connack(self, connack: Connack) -> None:
        self.connack.set()

    def on_puback(self, mid: int, reason: Reason) -> None:
        self.acks.append((mid, reason.value, reason.is_failure))

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def on_unsuback(self, mid: int) -> None:
        pass

    def on_closed(self, reason: str) -> None:
        self.closed.append(reason)


@pytest.fixture
async def opened() -> AsyncIterator[list[PahoTransport]]:
    made: list[PahoTransport] = []
    yield made
    for transport in made:
        transport.abort()


async def connect(
    made: list[PahoTransport],
    broker: Mosquitto,
    protocol: Literal["5", "3.1.1"] = "5",
    max_packet_size: int = 64 * 1024,
) -> tuple[PahoTransport, Heard]:
    options = ConnectOptions(
        host=broker.host,
        port=broker.port,
        client_id=f"fast-paths-{len(made)}",
        protocol=protocol,
        keepalive_s=30,
        connect_timeout_s=5.0,
        will=Will("test/will", b"gone"),
        max_inflight=WINDOW,
        max_packet_size=max_packet_size,
    )
    transport, heard = PahoTransport(), Heard()
    made.append(transport)
    await transport.open(options, heard)
    await asyncio.wait_for(heard.connack.wait(), 5)
    return transport, heard


def fast_acks(transport: PahoTransport) -> int:
    return transport._connected().fast_acks


async def publish_windows(
    transport: PahoTransport, heard: Heard, topic: str, payloads: list[bytes]
) -> list[int]:
    """Publish in whole windows at once (as the uplink does), waiting for each window's PUBACKs."""
    mids: list[int] = []
    for start in range(0, len(payloads), WINDOW):
        for payload in payloads[start : start + WINDOW]:
            mids.append(transport.publish(topic, payload, qos=1))
        await eventually(lambda: len(heard.acks) == len(mids))
    return mids


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_window_at_a_time_arrives_whole_in_order_and_each_puback_is_reported_once(
    mosquitto: Mosquitto, opened: list[PahoTransport], protocol: Literal["5", "3.1.1"]
) -> None:
    payloads = [f"reading {i:04d} ".encode() * (1 + i % 7) for i in range(200)]
    with Subscriber(mosquitto.host, mosquitto.port, "plant/#") as sub:
        transport, heard = await connect(opened, mosquitto, protocol)
        mids = await publish_windows(transport, heard, "plant/flow", payloads)
        received = await sub.wait_for_async(len(payloads))

    assert [m.payload for m in received] == payloads
    assert sorted(mid for mid, _, _ in heard.acks) == sorted(mids)
    # With a subscriber the broker answers Success; every one took the shortcut.
    assert {(value, failure) for _, value, failure in heard.acks} == {(0x00, False)}
    assert fast_acks(transport) == len(payloads)


async def test_no_matching_subscribers_is_a_success_reported_as_the_broker_said(
    mosquitto: Mosquitto, opened: list[PahoTransport]
) -> None:
    transport, heard = await connect(opened, mosquitto)
    await publish_windows(transport, heard, "nobody/listens", [b"x"] * 45)

    # MQTT 5: 0x10 "No matching subscribers", a success the broker sends when nobody subscribes.
    assert {(value, failure) for _, value, failure in heard.acks} == {(0x10, False)}
    assert fast_acks(transport) == 45


async def test_a_refused_publish_is_still_reported_as_refused(
    opened: list[PahoTransport], tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic write allowed/#\ntopic read #\n")
    with Mosquitto(extra_config=f"acl_file {acl}\n") as broker:
        transport, heard = await connect(opened, broker)
        allowed = transport.publish("allowed/a", b"1", qos=1)
        denied = transport.publish("denied/b", b"2", qos=1)
        await eventually(lambda: len(heard.acks) == 2)
        fast = fast_acks(transport)

    # Not authorized, through paho's own decoding (paho then drops the connection, as the uplink
    # does on a refusal anyway).
    assert heard.acks == [(allowed, 0x10, False), (denied, 0x87, True)]
    assert fast == 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_messages_in_and_a_message_longer_than_one_read_arrive_whole(
    mosquitto: Mosquitto, opened: list[PahoTransport], protocol: Literal["5", "3.1.1"]
) -> None:
    transport, heard = await connect(opened, mosquitto, protocol, max_packet_size=1 << 20)
    transport.subscribe("cmd/#", qos=1)
    await asyncio.sleep(0.2)  # the SUBACK; nothing reports it
    small = [f"command {i}".encode() for i in range(300)]
    large = bytes(range(256)) * 1200  # 307,200 bytes: several 64 KiB reads
    with Publisher(mosquitto.host, mosquitto.port) as pub:
        for payload in small[:150]:
            pub.publish("cmd/a", payload, wait=False)
        pub.publish("cmd/large", large)
        for payload in small[150:]:
            pub.publish("cmd/b", payload, wait=False)
        await eventually(lambda: len(heard.messages) == 301)

    assert [p for _, p in heard.messages] == [*small[:150], large, *small[150:]]
    assert not heard.closed
