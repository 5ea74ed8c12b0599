"""Broker failover (`[uplink] servers`): the URIs, the config rules, the rotation, and the uplink on a
scripted three-node "cluster" of fake connections.

No network: a node that is down refuses the connection at once, as a killed broker's port does.
The same rules run against a real three-node RabbitMQ cluster in test_fleet_cluster.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.uplink import reading_batches
from water_edge.agent.config.load import load_config
from water_edge.agent.uplink.config import MqttConfig, TlsConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.agent.uplink.servers import Rotation, Server, parse_server
from water_edge.agent.uplink.testing import SUCCESS, FakeBroker, FakeTransport, Sent
from water_edge.agent.uplink.transport import ConnectError, ConnectOptions, Reason, TransportListener
from water_edge.core.errors import ConfigError

# ---------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "server"),
    [
        ("mqtt://node1", Server("node1", 1883, tls=False)),
        ("mqtts://node1.example", Server("node1.example", 8883, tls=True)),
        ("tcp://10.0.0.5:18830", Server("10.0.0.5", 18830, tls=False)),
        ("ssl://broker:9883", Server("broker", 9883, tls=True)),
        ("MQTT://[::1]:1884", Server("::1", 1884, tls=False)),
        (" mqtt://n2:1883/ ", Server("n2", 1883, tls=False)),
    ],
)
def test_server_uris_give_host_port_and_tls(uri: str, server: Server) -> None:
    assert parse_server(uri) == server


def test_a_server_prints_as_an_address_and_an_uri() -> None:
    assert parse_server("mqtts://[::1]").address == "[::1]:8883"
    assert parse_server("tcp://n1:1999").uri == "mqtt://n1:1999"


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("http://node1:1883", "unknown scheme 'http'"),
        ("node1:1883", "unknown scheme 'node1'"),
        ("mqtt://:1883", "no host"),
        ("mqtt://node1:99999", "Port out of range"),
        ("mqtt://node1:0", "port 0"),
        ("mqtt://node1/water", "no path"),
        ("mqtt://edge:pw@node1", "credentials"),
        ("mqtt://[nonsense]:1883", "IPv6"),
        ("mqtt://bad host:1883", "without spaces"),
        ("mqtt://10.0.0.256", "four numbers 0..255"),
    ],
)
def test_bad_server_uris_say_what_is_expected(uri: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="expected mqtt://host") as err:
        parse_server(uri)
    assert complaint.lower() in str(err.value).lower()


# ---------------------------------------------------------------------- config


def test_a_server_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="servers: mqtt://n1:1883 is listed twice"):
        MqttConfig(servers=("mqtt://n1", "mqtt://n2", "tcp://n1:1883"))


def test_host_and_port_are_a_one_server_list() -> None:
    cfg = MqttConfig(host="broker", port=1999)
    assert cfg.server_list() == (Server("broker", 1999, tls=False),)
    tls = MqttConfig(host="broker", port=8883, tls=TlsConfig(ca_file=Path("/ca.pem")))
    assert tls.server_list() == (Server("broker", 8883, tls=True),)


def test_servers_keep_their_order() -> None:
    cfg = MqttConfig(servers=("mqtt://n2", "mqtt://n3:1884", "mqtt://n1"))
    assert [s.address for s in cfg.server_list()] == ["n2:1883", "n3:1884", "n1:1883"]
    assert cfg.brokers_text() == "n2:1883, n3:1884, n1:1883"


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"servers": ["mqtt://n1"], "host": "n1"}, "either servers"),
        ({"servers": ["mqtt://n1"], "port": 1884}, "either servers"),
        ({}, "no broker"),
        ({"servers": ["mqtts://n1"]}, "need [uplink.tls]"),
        (
            {"servers": ["mqtts://n1", "mqtt://n2"], "tls": {"ca_file": "/ca.pem"}},
            "every server must be mqtts",
        ),
    ],
)
def test_contradictory_broker_settings_are_refused(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint.replace("[", r"\[")):
        MqttConfig(**settings)


def test_a_bad_server_in_the_file_names_the_file_the_key_and_the_expectation(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'schema_version = 1\n[gateway]\nsite = "s1"\nid = "gw1"\n'
        '[uplink]\nservers = ["mqtt://n1:1883", "amqp://n2:5672"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: uplink.servers[1]: expected mqtt://host[:port] or mqtts://host[:port]" in str(err.value)


# ---------------------------------------------------------------------- the rotation rule

A, B, C = (Server(name, 1883, tls=False) for name in "abc")


def step(rot: Rotation) -> tuple[bool, Server]:
    """One failed attempt: whether to try another server at once, and which one is next."""
    return rot.failed(), rot.current


def test_a_round_goes_through_the_list_then_starts_again_at_the_first() -> None:
    rot = Rotation((A, B, C))
    assert rot.current == A
    assert step(rot) == (True, B)
    assert step(rot) == (True, C)
    assert not rot.failed(), "after the whole list failed the uplink backs off"
    assert rot.current == A


def test_it_sticks_to_the_server_that_worked_and_starts_its_rounds_there() -> None:
    rot = Rotation((A, B, C))
    rot.failed()
    rot.worked()  # B
    assert (rot.current, rot.failovers) == (B, 1)
    rot.lost()
    assert rot.current == B, "a lost connection is retried on the same server first"
    assert step(rot) == (True, C)
    assert step(rot) == (True, A)
    assert step(rot) == (False, B)


def test_a_single_server_backs_off_after_each_failure() -> None:
    rot = Rotation((A,))
    assert not rot.failed()
    rot.worked()
    assert rot.failovers == 0


# ---------------------------------------------------------------------- the uplink on a fake cluster


class FakeCluster(FakeBroker):
    """Fake connections to three nodes; a node in `down` refuses at once (connection refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.down: set[str] = set()

    def __call__(self) -> FakeTransport:
        transport = _NodeTransport(self)
        self.connections.append(transport)
        return transport

    def on(self, host: str) -> list[FakeTransport]:
        return [c for c in self.connections if c.options is not None and c.options.host == host]


class _NodeTransport(FakeTransport):
    cluster: FakeCluster

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(cluster)
        self.cluster = cluster

    async def open(self, options: ConnectOptions, listener: TransportListener) -> None:
        if options.host in self.cluster.down:
            self.options = options
            self.closed = True
            self.cluster.changed()
            raise ConnectError(f"connect: [Errno 111] Connection refused ({options.host})")
        await super().open(options, listener)


def hold_data(msg: Sent) -> Reason | None:
    """PUBACK the status at once, hold every data PUBACK (a node about to die)."""
    return SUCCESS if msg.retain else None


def cluster_config(**overrides: Any) -> MqttConfig:
    # A backoff far longer than the tests wait: moving to the next node must not wait for it.
    settings: dict[str, Any] = {
        "servers": ["mqtt://n1:1883", "mqtt://n2:1883", "mqtt://n3:1883"],
        "reconnect_min_s": 30.0,
        "reconnect_max_s": 60.0,
        "connect_timeout_s": 1.0,
    }
    return MqttConfig(**{**settings, **overrides})


async def start(
    box: MemoryOutbox, cluster: FakeCluster, cfg: MqttConfig
) -> tuple[MqttUplink, asyncio.Task[None]]:
    uplink = MqttUplink(cfg, box, "s1", "gw1", transport=cluster)
    return uplink, asyncio.create_task(uplink.run(), name="uplink")


async def finish(uplink: MqttUplink, task: asyncio.Task[None]) -> None:
    await uplink.stop(drain_timeout_s=0.5)
    await asyncio.wait_for(task, 5)


async def test_a_dead_first_node_is_skipped_at_once_and_everything_goes_to_the_next() -> None:
    box = MemoryOutbox()
    box.append_sync(reading_batches(20))
    cluster = FakeCluster()
    cluster.down = {"n1"}
    uplink, task = await start(box, cluster, cluster_config())
    try:
        await cluster.wait_until(lambda: box.pending() == 0, within_s=3.0)
        health = uplink.health()
        assert (health.broker, health.server_index, health.servers) == ("n2:1883", 1, 3)
        assert health.status_lines()[0].startswith("online  n2:1883  for ")
        assert health.status_lines()[2] == "broker 2 of 3  failovers 1"
    finally:
        await finish(uplink, task)
    assert [c.options.host for c in cluster.connections if c.options] == ["n1", "n2"]
    assert [m.json()["seq"] for m in cluster.data()] == list(range(1, 21))


async def test_the_node_in_use_dies_the_uplink_moves_on_sticks_there_and_loses_nothing() -> None:
    box = MemoryOutbox()
    box.append_sync(reading_batches(5))
    cluster = FakeCluster()
    # One backoff step after the loss (short here), then no waiting between nodes.
    cfg = cluster_config(reconnect_min_s=0.05, reconnect_max_s=0.05)
    uplink, task = await start(box, cluster, cfg)
    try:
        await cluster.wait_until(lambda: box.pending() == 0)
        # n1 dies with messages in flight: their PUBACKs never come.
        cluster.puback = hold_data
        box.append_sync(reading_batches(3, start_ns=2 * 10**18))
        uplink.notify()
        await cluster.wait_until(lambda: len(cluster.on("n1")[-1].unacked) >= 3)
        cluster.down.add("n1")
        cluster.puback = lambda _msg: SUCCESS
        cluster.on("n1")[-1].drop("connection lost: Connection reset by peer")
        await cluster.wait_until(lambda: box.pending() == 0)
        assert uplink.health().broker == "n2:1883"

        # n1 comes back: the gateway stays where it is (sticky); a blip on n2 retries n2 first.
        cluster.down.clear()
        cluster.on("n2")[-1].drop()
        await cluster.wait_until(lambda: len(cluster.on("n2")) == 2 and uplink.health().connected)
        box.append_sync(reading_batches(2, start_ns=3 * 10**18))
        uplink.notify()
        await cluster.wait_until(lambda: box.pending() == 0)
        health = uplink.health()
    finally:
        await finish(uplink, task)
    assert [c.options.host for c in cluster.connections if c.options] == ["n1", "n1", "n2", "n2"]
    assert (health.broker, health.failovers) == ("n2:1883", 1)
    # Every row arrived; the ones in flight on n1 again on n2 (at least once, never skipped).
    delivered = [m.json()["seq"] for m in cluster.data()]
    assert sorted(set(delivered)) == list(range(1, 11))
    assert [m.json()["seq"] for m in cluster.on("n2")[0].sent if not m.retain][:3] == [6, 7, 8]


async def test_every_node_gets_the_same_identity_and_a_clean_start() -> None:
    box = MemoryOutbox()
    box.append_sync(reading_batches(1))
    cluster = FakeCluster()
    cluster.down = {"n1", "n2"}
    uplink, task = await start(box, cluster, cluster_config(username="edge", password="pw"))
    try:
        await cluster.wait_until(lambda: box.pending() == 0)
    finally:
        await finish(uplink, task)
    options = [c.options for c in cluster.connections if c.options]
    assert [o.host for o in options] == ["n1", "n2", "n3"]
    assert {(o.client_id, o.username, o.will.topic) for o in options} == {
        ("edge-s1-gw1", "edge", "water/s1/gw1/status")
    }


async def test_when_every_node_is_down_it_backs_off_once_per_round_not_per_node() -> None:
    box = MemoryOutbox()
    cluster = FakeCluster()
    cluster.down = {"n1", "n2", "n3"}
    uplink, task = await start(box, cluster, cluster_config(reconnect_min_s=0.2, reconnect_max_s=0.2))
    try:
        await cluster.wait_until(lambda: len(cluster.connections) >= 4)
        first_round = [c.options.host for c in cluster.connections[:3] if c.options]
        health = uplink.health()
        assert health.state == "offline"
        assert "Connection refused" in (health.last_error or "")
    finally:
        await finish(uplink, task)
    assert first_round == ["n1", "n2", "n3"]
    fourth = cluster.connections[3].options
    assert fourth is not None
    assert fourth.host == "n1", "the next round starts at the first node again"


async def test_mqtts_servers_use_the_tls_settings(tmp_path: Path) -> None:
    box = MemoryOutbox()
    box.append_sync(reading_batches(1))
    cluster = FakeCluster()
    tls = TlsConfig(ca_file=tmp_path / "ca.pem")
    cfg = cluster_config(servers=["mqtts://n1", "mqtts://n2:9883"], tls=tls)
    cluster.down = {"n1"}
    uplink, task = await start(box, cluster, cfg)
    try:
        await cluster.wait_until(lambda: box.pending() == 0)
    finally:
        await finish(uplink, task)
    assert [(c.options.host, c.options.port, c.options.tls) for c in cluster.connections if c.options] == [
        ("n1", 8883, tls),
        ("n2", 9883, tls),
    ]
