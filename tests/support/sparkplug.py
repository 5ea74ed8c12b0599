"""A simulated Sparkplug Primary Host for tests: STATE on demand, every message decoded and checked.

`PrimaryHost` is a paho client of its own (its thread) on the test broker: it subscribes to the
whole `spBv1.0/#` namespace, publishes its retained STATE (`online()`, `offline()`, with a
timestamp), sends NCMDs, and decodes every message with the official schema (the generated
classes). `session_errors(messages)` replays them as a host would and lists every rule of the
session that the stream breaks (seq order, births before data, aliases, bdSeq of the deaths).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from water_edge.agent.uplink.config import MqttConfig, SparkplugConfig
from water_edge.agent.uplink.sparkplug.catalog import Catalog, DeviceSpec
from water_edge.agent.uplink.sparkplug.proto import Payload
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading

if TYPE_CHECKING:
    from tests.support.broker import Mosquitto


@dataclass
class Message:
    topic: str
    payload: Payload
    qos: int
    retain: bool
    at: float  # monotonic arrival time

    @property
    def kind(self) -> str:
        return self.topic.split("/")[2]

    @property
    def device(self) -> str | None:
        parts = self.topic.split("/")
        return parts[4] if len(parts) > 4 else None

    def metric(self, name: str) -> Payload.Metric:
        for metric in self.payload.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)


T0 = 1_750_000_000 * 10**9
TAGS = [("flow", "m3/h"), ("level", "m"), ("running", "")]


def rows(n: int, start: int = 0) -> list[Batch]:
    """n rows of plc1 readings: flow = row number (so every reading can be found again)."""
    return [
        Batch(
            "plc1",
            readings=[Reading("plc1", "flow", T0 + (start + i) * 10**6, float(start + i), unit="m3/h")],
        )
        for i in range(n)
    ]


def flows(messages: list[Message], *, historical: bool | None = None) -> list[float]:
    """Every flow value the host got in DDATA (alias of flow resolved from the births)."""
    alias = None
    out = []
    for m in messages:
        if m.kind == "DBIRTH":
            alias = next(x.alias for x in m.payload.metrics if x.name == "flow")
        if m.kind == "DDATA":
            out += [
                x.double_value
                for x in m.payload.metrics
                if x.alias == alias and (historical is None or x.is_historical == historical)
            ]
    return out


class PrimaryHost:
    """A Primary Host application: STATE publisher and Sparkplug decoder (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        host_id: str = "scada",
        *,
        tls: tuple[Path, Path, Path] | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        """`tls` = (CA file, certificate, key): connect with a client certificate (a secure broker);
        `login` = (username, password) for a broker with users."""
        self.host_id = host_id
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"host-{host_id}")
        if tls is not None:
            ca, cert, key = tls
            self._client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        if login is not None:
            self._client.username_pw_set(*login)
        self.online = False  # as a real host: once online, it says so again on every reconnect
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._ready.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # paho annotates int; floats work
        self._host, self._port = host, port

    def start(self) -> PrimaryHost:
        self._client.connect(self._host, self._port)
        self._client.loop_start()
        if not self._ready.wait(5):
            raise TimeoutError("the primary host did not subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, *_a: Any) -> None:
        client.subscribe("spBv1.0/#", qos=1)
        if self.online:
            payload = orjson.dumps({"online": True, "timestamp": time.time_ns() // 1_000_000})
            client.publish(self.state_topic, payload, 1, True)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.startswith("spBv1.0/STATE/") or msg.topic.split("/")[2] in ("NCMD", "DCMD"):
            return  # the host's own messages
        message = Message(
            msg.topic, Payload.FromString(bytes(msg.payload)), msg.qos, bool(msg.retain), time.monotonic()
        )
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    @property
    def state_topic(self) -> str:
        return f"spBv1.0/STATE/{self.host_id}"

    def publish_state(self, online: bool, timestamp_ms: int | None = None, *, retain: bool = True) -> int:
        """The STATE, QoS 1, retained (unless the broker keeps none); returns its timestamp."""
        ts = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
        self.online = online
        info = self._client.publish(
            self.state_topic, orjson.dumps({"online": online, "timestamp": ts}), 1, retain
        )
        info.wait_for_publish(5)
        return ts

    def command(self, topic: str, payload: Payload) -> None:
        self._client.publish(topic, payload.SerializeToString(), 0).wait_for_publish(5)

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def wait(self, predicate: Any, within_s: float = 10.0) -> list[Message]:
        """Block until `predicate(messages)` holds; returns the messages."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), within_s):
                kinds = [m.kind for m in self.messages][-20:]
                raise TimeoutError(f"condition not met; {len(self.messages)} messages, last kinds {kinds}")
            return list(self.messages)

    def __enter__(self) -> PrimaryHost:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


async def caught_up(host: PrimaryHost, uplink: SparkplugUplink, within_s: float = 15.0) -> list[Message]:
    """The host's messages once it holds the last one the node published (fewer than 256 on one
    connection, the node idle). A QoS 0 row is released on the broker's receipt, which says nothing
    of the copy on its way to the host: under load that copy comes a moment later."""
    spark = uplink.health().sparkplug
    assert spark is not None
    assert spark.seq is not None, "a node that published on a connection"
    last = (spark.seq - 1) % 256
    return await asyncio.to_thread(
        host.wait, lambda ms: any(m.kind != "NDEATH" and m.payload.seq == last for m in ms), within_s
    )


def kinds(messages: list[Message]) -> list[str]:
    return [m.kind if m.device is None else f"{m.kind}/{m.device}" for m in messages]


def session_errors(messages: list[Message]) -> list[str]:
    """Every Sparkplug session rule the stream of one Edge Node breaks, as a host would see it."""
    errors: list[str] = []
    expected_seq: int | None = None
    bdseq: int | None = None
    aliases: dict[int, str] = {}
    born_devices: set[str] = set()
    for i, m in enumerate(messages):
        p, kind = m.payload, m.kind
        where = f"#{i} {m.topic}"
        if kind == "NDEATH":
            names = [x.name for x in p.metrics]
            if names != ["bdSeq"] or p.HasField("seq"):
                errors.append(f"{where}: NDEATH must carry bdSeq only, no seq")
            elif bdseq is not None and p.metrics[0].long_value != bdseq:
                errors.append(f"{where}: NDEATH bdSeq {p.metrics[0].long_value} != NBIRTH's {bdseq}")
            expected_seq = None
            continue
        if m.retain:
            errors.append(f"{where}: retained")
        if not p.HasField("seq") or not p.HasField("timestamp"):
            errors.append(f"{where}: no seq or no timestamp")
        if kind == "NBIRTH":
            if p.seq != 0:
                errors.append(f"{where}: NBIRTH seq {p.seq}")
            bdseq = m.metric("bdSeq").long_value
            if m.metric("Node Control/Rebirth").boolean_value is not False:
                errors.append(f"{where}: Rebirth must be false in NBIRTH")
            born_devices.clear()
        elif expected_seq is None:
            errors.append(f"{where}: {kind} before NBIRTH")
        elif p.seq != expected_seq:
            errors.append(f"{where}: seq {p.seq}, expected {expected_seq}")
        expected_seq = (p.seq + 1) % 256
        if kind in ("NBIRTH", "DBIRTH"):
            if m.qos != 0:
                errors.append(f"{where}: birth at QoS {m.qos}")
            for x in p.metrics:
                if not x.name or not x.HasField("datatype") or not x.HasField("timestamp"):
                    errors.append(f"{where}: birth metric without name, datatype or timestamp")
                if not x.is_null and x.WhichOneof("value") is None:
                    errors.append(f"{where}: birth metric {x.name} with neither value nor is_null")
                if x.name != "bdSeq":
                    if x.alias in aliases and aliases[x.alias] != f"{m.device}/{x.name}":
                        errors.append(f"{where}: alias {x.alias} reused")
                    aliases[x.alias] = f"{m.device}/{x.name}"
            if kind == "DBIRTH" and m.device is not None:
                born_devices.add(m.device)
        elif kind in ("NDATA", "DDATA"):
            if m.qos != 0:
                errors.append(f"{where}: DATA at QoS {m.qos}")
            # MQTT Engine takes DDATA of a device it holds offline, historical or not, for a
            # broken session and asks for a rebirth ("DDATA before BIRTH").
            if kind == "DDATA" and m.device not in born_devices:
                errors.append(f"{where}: DDATA of a device not born (or dead)")
            stamps = [x.timestamp for x in p.metrics]
            if stamps != sorted(stamps):
                errors.append(f"{where}: metrics not in time order")
            for x in p.metrics:
                if x.name or x.HasField("datatype") or x.alias not in aliases:
                    errors.append(f"{where}: DATA metric must be a born alias only")
        elif kind == "DDEATH" and m.device is not None:
            born_devices.discard(m.device)
    return errors


def edge_config(broker: Mosquitto, **kw: Any) -> MqttConfig:
    """Sparkplug B settings for an Edge Node of site1/gw1 on a test broker (short backoff)."""
    base: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "encoding": "sparkplug_b",
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.3,
        "keepalive_s": 5,
        "sparkplug": SparkplugConfig(primary_host_id="scada", backlog_rows_per_s=200),
    }
    base.update(kw)
    return MqttConfig(**base)


@contextlib.asynccontextmanager
async def edge_nodes(tmp_path: Path, devices: list[DeviceSpec]) -> AsyncIterator[Callable[..., Any]]:
    """`make(config, box, devices=None, **kw)` runs an Edge Node of site1/gw1 (its catalog
    `devices`, else these); every node made is stopped when the block ends."""
    from tests.support.uplink import StateLog

    made: list[tuple[SparkplugUplink, asyncio.Task[None]]] = []

    def make(
        config: MqttConfig, box: Any, devices_: list[DeviceSpec] | None = None, **kw: Any
    ) -> tuple[SparkplugUplink, StateLog]:
        states = StateLog()
        uplink = SparkplugUplink(
            config,
            box,
            "site1",
            "gw1",
            catalog=Catalog(devices_ or devices),
            bdseq_path=tmp_path / "bdseq",
            on_state_change=states,
            **kw,
        )
        made.append((uplink, asyncio.create_task(uplink.run())))
        return uplink, states

    try:
        yield make
    finally:
        for uplink, task in made:
            await uplink.stop(drain_timeout_s=1.0)
            await asyncio.wait_for(task, 10)
