"""The Edge Node against what hosts and brokers really send, through a real Mosquitto.

STATE that is not Sparkplug 3.0, stale or malformed; NCMDs of the wrong datatype and in floods;
births bigger than the broker takes; signed commands as large as their handler allows; a damaged
bdSeq file. Each must leave the node publishing, within the spec, and say what happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.broker import Mosquitto
from tests.support.sparkplug import TAGS, PrimaryHost, edge_nodes, flows, kinds, rows, session_errors
from tests.support.sparkplug import edge_config as config
from tests.support.testing import eventually
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.sparkplug.catalog import DeviceSpec
from water_edge.agent.uplink.sparkplug.proto import DataType, Payload
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading

NCMD = "spBv1.0/site1/NCMD/gw1"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with edge_nodes(tmp_path, [DeviceSpec("plc1", TAGS)]) as make:
        yield make


def rebirth(**value: Any) -> Payload:
    payload = Payload()
    payload.metrics.add(
        name="Node Control/Rebirth", **(value or {"datatype": DataType.Boolean, "boolean_value": True})
    )
    return payload


async def test_state_that_is_not_sparkplug_3_or_is_stale_is_counted_and_logged(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    with PrimaryHost(mosquitto.host, mosquitto.port) as host, capture_logs() as logs:
        uplink, states = node(config(mosquitto), MemoryOutbox())
        await states.wait(lambda s: s == "online")
        await asyncio.sleep(0.5)  # the SUBSCRIBEs reach the broker
        # A Sparkplug 2.x host's plain text, broken JSON, a timestamp missing: the node waits,
        # and says why, instead of sitting "not born" with nothing to go on.
        for payload in (b"ONLINE", b'{"online": tru', b'{"online": true}'):
            host._client.publish(host.state_topic, payload, 1, True).wait_for_publish(5)
        await eventually(lambda: len([e for e in logs if e["event"] == "sparkplug.host_state_ignored"]) == 3)
        health = uplink.health()
        assert "STATE of Primary Host scada ignored: no online or timestamp" in (health.last_error or "")
        assert not health.sparkplug.born
        assert host.snapshot() == []
        ts = host.publish_state(True)
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        host.publish_state(False, ts - 1000)  # a late Will of an earlier host session
        await eventually(lambda: "ignored: stale" in (uplink.health().last_error or ""))
        assert uplink.health().sparkplug.born
        assert "NDEATH" not in kinds(host.snapshot())
    ignored = [e for e in logs if e["event"] == "sparkplug.host_state_ignored"]
    assert [e["why"] for e in ignored] == [
        "Sparkplug 2.x text (3.0 wants JSON)",
        "not JSON",
        "no online or timestamp",
        "stale",
    ]


async def test_a_rebirth_command_of_the_wrong_datatype_is_counted_invalid_not_lost_silently(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink, _ = node(config(mosquitto), MemoryOutbox())
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        host.command(NCMD, rebirth(datatype=DataType.Int32, int_value=1))
        host.command(NCMD, rebirth(datatype=DataType.String, string_value="true"))
        await eventually(lambda: uplink.health().sparkplug.commands_invalid == 2)
        assert uplink.health().sparkplug.births == 1


async def test_a_rebirth_flood_gives_a_few_births_data_goes_on_and_the_last_request_is_honoured(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    box = MemoryOutbox()
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink, _ = node(config(mosquitto), box, history_keep_s=0.3)
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        data = rebirth().SerializeToString()
        for i in range(10):  # 300 requests in a second, data flowing
            for _ in range(30):
                host._client.publish(NCMD, data, 0)
            last_request = time.monotonic()
            box.append_sync(rows(1, start=i))
            uplink.notify()
            await asyncio.sleep(0.1)
        flooded = await eventually(lambda: (h := uplink.health()).sparkplug.commands_rebirth == 300 and h)
        # One birth per request was 300 NBIRTH + DBIRTH sets in a second, a megabyte each with
        # 10,000 tags; now at most one a second, and the last request still gets its birth.
        assert flooded.sparkplug.births <= 4
        got = await asyncio.to_thread(
            host.wait, lambda ms: any(m.kind == "NBIRTH" and m.at > last_request for m in ms)
        )
        await asyncio.sleep(1.5)
        got = host.snapshot()
        assert sorted(set(flows(got))) == [float(i) for i in range(10)]
        assert kinds(got).count("NBIRTH") == uplink.health().sparkplug.births <= 5
        assert session_errors(got) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "protocol",
    [
        pytest.param({"protocol": "5"}, id="mqtt5-announced"),
        # MQTT 3.1.1 brokers announce no limit (cloud brokers publish theirs): the config says it.
        pytest.param({"protocol": "3.1.1", "broker_max_packet_size": "1MiB"}, id="mqtt311-configured"),
    ],
)
async def test_a_dbirth_over_the_brokers_maximum_packet_size_leaves_that_device_unborn_not_the_node_in_a_loop(
    node: Callable[..., Any], protocol: dict[str, str]
) -> None:
    # 15,000 tags with names as Ignition shows them: a DBIRTH of 1.1 MB, over the shipped
    # broker's 1 MiB. Mosquitto dropped the connection at every birth: NBIRTH, NDEATH, reconnect,
    # five times a second, and no data of any device ever went out.
    big = [
        (f"Pump Station {i // 100:03d}/Pump {i % 100:02d}/Discharge Pressure", "bar") for i in range(15_000)
    ]
    box = MemoryOutbox()
    box.append_sync(rows(3))
    box.append_sync(
        [Batch("big", readings=[Reading("big", big[0][0], 1_750_000_000 * 10**9, 1.5, unit="bar")])]
    )
    with (
        Mosquitto(extra_config="max_packet_size 1048576\n") as broker,
        PrimaryHost(broker.host, broker.port) as host,
    ):
        host.publish_state(True)
        uplink, _ = node(
            config(broker, **protocol),
            box,
            [DeviceSpec("plc1", TAGS), DeviceSpec("big", big)],
            history_keep_s=0.3,
        )
        got = await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 3)
        # The other devices' rows are delivered and released; the big device's row waits.
        await eventually(lambda: box.pending() == 1, 10, what="plc1's rows released")
        await asyncio.sleep(1.0)
        got = host.snapshot()
        health = uplink.health()
    assert health.reconnects == 0
    assert "NDEATH" not in kinds(got)
    assert "DBIRTH/big" not in kinds(got)
    assert "DDATA/big" not in kinds(got)
    assert health.encode_errors >= 1  # the big device's row, left in the outbox
    assert "Maximum Packet Size" in (health.last_error or "")
    assert session_errors(got) == []


class _SizedHandler:
    """A signed-command handler that takes up to 256 KiB, as `[security] max_command_bytes` can."""

    max_bytes = 256 * 1024

    def __init__(self) -> None:
        self.got: list[int] = []
        self.refused: list[int] = []

    async def __call__(self, suffix: str, payload: bytes) -> None:
        self.got.append(len(payload))

    async def refuse_oversize(self, suffix: str, size: int, digest: str) -> None:
        self.refused.append(size)


async def test_signed_commands_as_large_as_their_handler_takes_reach_it_in_sparkplug_mode(
    mosquitto: Mosquitto, node: Callable[..., Any]
) -> None:
    # The node announced a 64 KiB Maximum Packet Size whatever the handler took: Mosquitto dropped
    # a 100 KB model update without a word, and a too-large command was never refused or audited.
    handler = _SizedHandler()
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        host.publish_state(True)
        uplink, _ = node(config(mosquitto), MemoryOutbox(), on_command=handler)
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        topic = uplink.topics.commands.replace("#", "model_update")
        for size in (100_000, 300_000):
            host._client.publish(topic, b"x" * size, 1).wait_for_publish(5)
        await eventually(lambda: handler.got == [100_000] and handler.refused == [300_000], 10)


async def test_a_bdseq_file_out_of_range_is_logged_and_starts_again_at_0(
    mosquitto: Mosquitto, node: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "bdseq").write_text("300\n")
    with PrimaryHost(mosquitto.host, mosquitto.port) as host, capture_logs() as logs:
        host.publish_state(True)
        node(config(mosquitto), MemoryOutbox())
        got = await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
    assert got[0].metric("bdSeq").long_value == 0
    assert [e["path"] for e in logs if e["event"] == "sparkplug.bdseq_unreadable"] == [
        str(tmp_path / "bdseq")
    ]


async def test_the_edge_node_logs_in_with_its_password(node: Callable[..., Any]) -> None:
    # The password was never handed to the connection: a broker with users refused the node
    # ("Not authorized") at every attempt, in Sparkplug mode only.
    with (
        Mosquitto(users={"edge": "right", "sparkplug-host": "host"}) as broker,
        PrimaryHost(broker.host, broker.port, login=("sparkplug-host", "host")) as host,
    ):
        host.publish_state(True)
        uplink, _ = node(config(broker, username="edge", password="right"), MemoryOutbox())
        await asyncio.to_thread(host.wait, lambda ms: "DBIRTH/plc1" in kinds(ms))
        assert uplink.health().refused == 0
