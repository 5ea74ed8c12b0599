"""The agent's Sparkplug B stream read by an independent implementation: pysparkplug as the host.

Every other Sparkplug test decodes with the project's own generated classes and its own reading of
the spec, so a misreading shared by the encoder and the tests would pass them all. Here the
decoding, the alias resolution, the STATE and the NCMD are pysparkplug's (an independent Sparkplug
B 3.0 library with its own payload codec), against a real Mosquitto, a real `edge-agent run` and
the firmware-sim PLC over Modbus TCP.

pysparkplug's `Client` cannot run here: pysparkplug 0.6.1 requires paho-mqtt < 2 and the agent
paho-mqtt >= 2.1 (its `Client()` fails under paho 2: `message_retry_set` is gone). So a plain
paho 2 client carries the bytes and pysparkplug does everything else, exactly as its `Client`
would: `Message.from_mqtt_message` with the birth of the same (group, node, device) for aliases
and datatypes, `Message`s of `State` and `NCmd` encoded by pysparkplug for what the host sends.
For the same reason pysparkplug is not in setup.cfg's `test` extra (pip cannot resolve the two):
`make setup` installs it without its dependencies (tests/requirements-nodeps.txt; by hand `pip
install --no-deps pysparkplug==0.6.1`); without it this module is skipped.

Two places where pysparkplug and the agent disagree, both decided against pysparkplug and worked
around here (docs/sparkplug.md, "What is checked, and how"):

- a negative Int8/Int16: the agent puts it in `int_value` (uint32) as a 32-bit two's complement,
  as Eclipse Tahu's reference encoder does (a Java byte or short widened to int), and as the agent
  does for Int32; pysparkplug 0.6.1 expects one of the type's own width and raises OverflowError
  (matteosox/pysparkplug#26, open). The test decodes those with the width masked, as Tahu's
  decoder does (`(short) getIntValue()`), and checks the bytes on the wire are Tahu's form;
- `NDeath.decode` keeps the payload timestamp only when there is none (`if not HasField`): the
  timestamp is read from the payload directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agent_proc import AgentProcess, running_agent
from tests.support.broker import Mosquitto
from tests.support.plant import Plant, running_plant
from tests.support.testing import AGENT_GATEWAY, write_agent_config

# Not an import: the module is skipped, and type-checks (as Any), where pysparkplug is absent.
INSTALL = "pip install --no-deps pysparkplug==0.6.1"
pysparkplug = pytest.importorskip("pysparkplug", reason=INSTALL)
pysparkplug_datatype = pytest.importorskip("pysparkplug._datatype", reason=INSTALL)
pysparkplug_protobuf = pytest.importorskip("pysparkplug._protobuf", reason=INSTALL)

pytestmark = pytest.mark.slow

SpDataType = pysparkplug.DataType
GROUP = "north"
HOST_ID = "scada"
NODE = AGENT_GATEWAY
REBIRTH = "Node Control/Rebirth"

# The firmware-sim PLC's station (docs/firmware-sim.md): one tag of each Modbus type, and the
# ambient temperature register (180: 18.0 degC in tenths, constant) read three ways: as it is, scaled,
# and byte-swapped, which makes it a fixed negative Int16 (0xB400 = -19456).
PLC_TAGS: list[dict[str, Any]] = [
    {"name": "station_name", "address": 0, "type": "string", "length": 8},
    {"name": "map_version", "address": 8, "type": "uint16"},
    {"name": "uptime", "address": 10, "type": "uint32", "unit": "s"},
    {"name": "ticks", "address": 12, "type": "uint64"},
    {"name": "tank_level", "address": 16, "type": "float64", "unit": "m"},
    {"name": "demand", "address": 20, "type": "float32", "unit": "m3/h"},
    {"name": "net_inflow", "address": 28, "type": "int32", "unit": "L/h"},
    {"name": "energy", "address": 36, "type": "int64", "unit": "Wh"},
    {"name": "p1_running", "address": 116, "type": "bit", "bit": 0},
    {"name": "ambient_raw", "address": 27, "type": "int16"},
    {"name": "ambient", "address": 27, "type": "int16", "scale": 0.1, "unit": "degC"},
    {"name": "ambient_swapped", "address": 27, "type": "int16", "byte_order": "little"},
]  # fmt: skip
PLC_DATATYPES = {
    "station_name": SpDataType.STRING,
    "map_version": SpDataType.UINT16,
    "uptime": SpDataType.UINT32,
    "ticks": SpDataType.UINT64,
    "tank_level": SpDataType.DOUBLE,
    "demand": SpDataType.FLOAT,
    "net_inflow": SpDataType.INT32,
    "energy": SpDataType.INT64,
    "p1_running": SpDataType.BOOLEAN,
    "ambient_raw": SpDataType.INT16,
    "ambient": SpDataType.DOUBLE,  # scaled: Double
    "ambient_swapped": SpDataType.INT16,
}
NODE_METRICS = {
    "bdSeq": SpDataType.INT64,
    REBIRTH: SpDataType.BOOLEAN,
    "Node Control/Next Server": SpDataType.BOOLEAN,
    "Node Info/Agent Version": SpDataType.STRING,
    "Events/Event": SpDataType.STRING,
}


def _tahu_int_decoder(bits: int) -> Callable[[int], int]:
    """Tahu's reading of an Int8/Int16 in the uint32 field: the low `bits`, signed."""

    def decode(value: int) -> int:
        value &= (1 << bits) - 1
        return value - (1 << bits) if value >= 1 << (bits - 1) else value

    return decode


@pytest.fixture(autouse=True)
def _tahu_small_ints(monkeypatch: pytest.MonkeyPatch) -> None:
    """pysparkplug#26: its Int8/Int16 decoder refuses the 32-bit two's complement of Tahu's encoder."""
    decoders = dict(pysparkplug_datatype._decoders)
    decoders[SpDataType.INT8] = _tahu_int_decoder(8)
    decoders[SpDataType.INT16] = _tahu_int_decoder(16)
    monkeypatch.setattr(pysparkplug_datatype, "_decoders", decoders)


@dataclass
class Seen:
    """One message as pysparkplug decoded it."""

    topic: Any  # pysparkplug.Topic
    payload: Any  # pysparkplug's NBirth, DBirth, NData, DData, NDeath, DDeath
    qos: int
    retain: bool
    raw: bytes

    @property
    def kind(self) -> str:
        return str(self.topic.message_type)

    @property
    def device(self) -> str | None:
        return self.topic.device_id  # type: ignore[no-any-return]

    @property
    def label(self) -> str:
        return self.kind if self.device is None else f"{self.kind}/{self.device}"

    def metrics(self) -> dict[str, Any]:
        return {m.name: m for m in self.payload.metrics}


class PysparkplugHost:
    """A Primary Host whose every Sparkplug decision is pysparkplug's; paho 2 only moves bytes."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: list[Seen] = []
        self.errors: list[str] = []  # messages pysparkplug could not decode
        self._births: dict[tuple[str | None, str | None, str | None], Any] = {}
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pysparkplug-{HOST_ID}")
        self._client.on_connect = lambda client, *_a: client.subscribe(f"spBv1.0/{GROUP}/#", qos=1)
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._broker = broker

    def __enter__(self) -> PysparkplugHost:
        self._client.connect(self._broker.host, self._broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "the host did not subscribe"
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        # pysparkplug's Client._handle_message: the birth of the same (group, node, device) decodes
        # the aliases and datatypes of what follows it.
        topic = pysparkplug.Topic.from_str(msg.topic)
        if topic.message_type in (pysparkplug.MessageType.NCMD, pysparkplug.MessageType.DCMD):
            return  # the host's own commands
        key = (topic.group_id, topic.edge_node_id, topic.device_id)
        try:
            message = pysparkplug.Message.from_mqtt_message(msg, birth=self._births.get(key))
        except Exception as exc:  # recorded: the test fails on it with the topic
            with self._cond:
                self.errors.append(f"{msg.topic}: {type(exc).__name__}: {exc}")
                self._cond.notify_all()
            return
        if isinstance(message.payload, pysparkplug.NBirth | pysparkplug.DBirth):
            self._births[key] = message.payload
        with self._cond:
            self.seen.append(
                Seen(message.topic, message.payload, msg.qos, bool(msg.retain), bytes(msg.payload))
            )
            self._cond.notify_all()

    def send(self, message: Any) -> None:
        """Publish a pysparkplug `Message` as its `Client.publish` does (include_dtypes=False)."""
        info = self._client.publish(
            str(message.topic), message.payload.encode(), int(message.qos), message.retain
        )
        info.wait_for_publish(10)

    def state(self, online: bool, timestamp: int) -> None:
        """The host's STATE (Sparkplug 3.0): JSON by pysparkplug's `State`, QoS 1, retained."""
        topic = pysparkplug.Topic(message_type=pysparkplug.MessageType.STATE, sparkplug_host_id=HOST_ID)
        state = pysparkplug.State(timestamp=timestamp, online=online)
        self.send(pysparkplug.Message(topic, state, pysparkplug.QoS.AT_LEAST_ONCE, retain=True))

    def rebirth(self) -> None:
        """NCMD `Node Control/Rebirth = true`, built and encoded by pysparkplug (QoS 0)."""
        now = pysparkplug.get_current_timestamp()
        metric = pysparkplug.Metric(timestamp=now, name=REBIRTH, datatype=SpDataType.BOOLEAN, value=True)
        topic = pysparkplug.Topic(
            group_id=GROUP, message_type=pysparkplug.MessageType.NCMD, edge_node_id=NODE
        )
        ncmd = pysparkplug.NCmd(timestamp=now, metrics=(metric,))
        self.send(pysparkplug.Message(topic, ncmd, pysparkplug.QoS.AT_MOST_ONCE, retain=False))

    def wait(self, predicate: Callable[[list[Seen]], bool], within_s: float = 30.0) -> list[Seen]:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self.errors) or predicate(self.seen), within_s):
                every = [s.label for s in self.seen]
                births_and_deaths = [(i, label) for i, label in enumerate(every) if "DATA" not in label]
                raise TimeoutError(  # which births and deaths came, and where: a data flood hides them
                    f"condition not met; {len(every)} messages, births and deaths {births_and_deaths}, "
                    f"last {every[-20:]}"
                )
            assert self.errors == [], self.errors
            return list(self.seen)


def labels(seen: list[Seen]) -> list[str]:
    return [s.label for s in seen]


def count(seen: list[Seen], label: str) -> int:
    return labels(seen).count(label)


def after(seen: list[Seen], index: int, label: str) -> int:
    return labels(seen[index:]).count(label)


def nth(seen: list[Seen], label: str, n: int) -> tuple[int, Seen]:
    """The index and message of the n-th (0-based) message with this label."""
    found = [(i, s) for i, s in enumerate(seen) if s.label == label]
    return found[n]


def bdseq(birth_or_death: Seen) -> int:
    if birth_or_death.kind == "NDEATH":
        metric = birth_or_death.payload.bd_seq_metric
    else:
        metric = birth_or_death.metrics()["bdSeq"]
    assert (metric.name, metric.datatype) == ("bdSeq", SpDataType.INT64)
    return int(metric.value)


def seq_errors(seen: list[Seen]) -> list[str]:
    """The seq rule as the host checks it: NBIRTH 0, then +1 on every message of the node (DDEATH
    too), 255 -> 0; NDEATH has none."""
    errors: list[str] = []
    expected: int | None = None
    for i, s in enumerate(seen):
        if s.kind == "NDEATH":
            expected = None
            continue
        if s.kind == "NBIRTH":
            if s.payload.seq != 0:
                errors.append(f"#{i} NBIRTH seq {s.payload.seq}")
        elif expected is None:
            errors.append(f"#{i} {s.label} before any NBIRTH")
        elif s.payload.seq != expected:
            errors.append(f"#{i} {s.label}: seq {s.payload.seq}, expected {expected}")
        expected = (s.payload.seq + 1) % 256
    return errors


def plc_config(tmp_path: Path, broker: Mosquitto, plant: Plant) -> Path:
    return write_agent_config(
        tmp_path,
        broker_port=broker.port,
        devices=[
            {
                "name": "ps1",
                "kind": "modbus_tcp",
                "host": plant.host,
                "port": plant.port,
                "poll_interval_ms": 200,
                "timeout_ms": 1000,
                "tags": PLC_TAGS,
            },
            # A fast sine, flushed every 20 ms: enough DDATA for seq to wrap within seconds.
            {
                "name": "sine",
                "kind": "fake",
                "poll_interval_ms": 20,
                "tags": [{"name": "wave", "amplitude": 1.0, "period_s": 3}],
            },
        ],
        buffer={"flush_interval_ms": 20},
        uplink={"encoding": "sparkplug_b", "keepalive_s": 5},
        extra=f'[uplink.sparkplug]\nprimary_host_id = "{HOST_ID}"\ngroup_id = "{GROUP}"\n',
    )


@pytest.fixture
def plant() -> Iterator[Plant]:
    with running_plant(seed=3) as plant:
        yield plant


def wait_connected(agent: AgentProcess) -> None:
    """The Edge Node is connected and subscribed, waiting for its host (not born)."""
    agent.wait_status(
        lambda s: (
            s["uplink"]["state"] == "online"
            and bool(s["uplink"]["sparkplug"])
            and not s["uplink"]["sparkplug"]["born"]
        ),
        30,
    )


def host_view(seen: list[Seen], device: str) -> dict[str, Any]:
    """The value of each metric of `device` as the host holds it: its DBIRTH, then DDATA."""
    values: dict[str, Any] = {}
    for s in seen:
        if s.device == device and s.kind in ("DBIRTH", "DDATA"):
            for m in s.payload.metrics:
                if not m.is_historical:
                    values[m.name] = None if m.is_null else m.value
    return values


def test_pysparkplug_decodes_the_births_data_and_seq_and_its_rebirth_command_rebirths_the_node(
    mosquitto: Mosquitto, plant: Plant, tmp_path: Path
) -> None:
    started_ms = pysparkplug.get_current_timestamp()
    with PysparkplugHost(mosquitto) as host, running_agent(plc_config(tmp_path, mosquitto, plant)) as agent:
        wait_connected(agent)
        assert host.seen == []  # nothing before the host's STATE
        host.state(True, pysparkplug.get_current_timestamp())
        got = host.wait(lambda ss: count(ss, "DBIRTH/ps1") == 1 and count(ss, "DBIRTH/sine") == 1)

        # NBIRTH: first, seq 0, the node metrics with their datatypes, bdSeq with no alias.
        nbirth = got[0]
        assert nbirth.label == "NBIRTH"
        assert nbirth.qos == 0
        assert not nbirth.retain
        assert nbirth.payload.seq == 0
        node = nbirth.metrics()
        assert {name: m.datatype for name, m in node.items()} == NODE_METRICS
        assert bdseq(nbirth) == 0
        assert node["bdSeq"].alias is None
        assert node[REBIRTH].value is False
        assert node["Node Info/Agent Version"].value
        aliases = {m.alias: f"node/{name}" for name, m in node.items() if m.alias is not None}
        assert len(aliases) == len(NODE_METRICS) - 1

        # DBIRTH of the PLC: every tag, its datatype as the Modbus type says, an alias unique
        # across the node; the sine's DBIRTH alike.
        dbirth = next(s for s in got if s.label == "DBIRTH/ps1")
        assert {name: m.datatype for name, m in dbirth.metrics().items()} == PLC_DATATYPES
        for s in (dbirth, next(s for s in got if s.label == "DBIRTH/sine")):
            for m in s.payload.metrics:
                assert m.alias is not None, (s.label, m)
                assert m.alias not in aliases, (s.label, m)
                aliases[m.alias] = f"{s.device}/{m.name}"

        # Values as pysparkplug decodes them, once the PLC has been read (birth or first DDATA).
        def plc_read(ss: list[Seen]) -> bool:
            view = host_view(ss, "ps1")
            return len(view) == len(PLC_TAGS) and None not in view.values()

        got = host.wait(plc_read)
        view = host_view(got, "ps1")
        assert view["station_name"] == "PS-NORTH"
        assert view["map_version"] == 2
        assert view["ambient_raw"] == 180
        assert view["ambient"] == pytest.approx(18.0)
        assert view["ambient_swapped"] == -19456  # 0x00B4 byte-swapped: a negative Int16
        assert isinstance(view["p1_running"], bool)
        assert isinstance(view["demand"], float)
        assert isinstance(view["tank_level"], float)
        for name in ("uptime", "ticks", "energy", "net_inflow"):
            assert type(view[name]) is int, (name, view[name])
        # The wire form of the negative Int16: Tahu's 32-bit two's complement in int_value
        # (pysparkplug's own protobuf classes read the bytes).
        swapped_alias = dbirth.metrics()["ambient_swapped"].alias
        wire = [
            m.int_value
            for s in got
            if s.device == "ps1"
            for m in pysparkplug_protobuf.Payload.FromString(s.raw).metrics
            if m.alias == swapped_alias and m.WhichOneof("value") == "int_value"
        ]
        assert wire
        assert set(wire) == {(-19456) & 0xFFFFFFFF}

        # DDATA: by alias, resolved by pysparkplug to the birth's names and datatypes; seq goes
        # on across N and D messages and wraps 255 -> 0.
        got = host.wait(lambda ss: len(ss) >= 300, 60)
        ddata = [s for s in got if s.kind == "DDATA"]
        assert ddata
        for s in ddata:
            born = next(b for b in got if b.label == f"DBIRTH/{s.device}").metrics()
            for m in s.payload.metrics:
                assert m.alias is not None
                assert aliases[m.alias] == f"{s.device}/{m.name}"
                assert m.datatype == born[m.name].datatype
                assert s.qos == 0
                assert not s.retain
        assert seq_errors(got) == []
        assert any(s.payload.seq == 0 and s.kind != "NBIRTH" for s in got), "seq did not wrap"
        now_ms = pysparkplug.get_current_timestamp()
        for s in got:
            assert started_ms - 5_000 <= s.payload.timestamp <= now_ms + 1_000, s.label
            for m in s.payload.metrics:
                assert started_ms - 5_000 <= m.timestamp <= now_ms + 1_000, (s.label, m.name)

        # NCMD Node Control/Rebirth from pysparkplug: a new NBIRTH with seq 0 and the same
        # bdSeq, without reconnecting, both DBIRTHs again, and data goes on.
        n = len(got)
        host.rebirth()
        got = host.wait(
            lambda ss: after(ss, n, "NBIRTH") == 1
            and after(ss, n, "DBIRTH/ps1") == 1
            and after(ss, n, "DBIRTH/sine") == 1
            and after(ss, n, "DDATA/sine") >= 20
        )  # fmt: skip
        _i, reborn = nth(got, "NBIRTH", 1)
        assert reborn.payload.seq == 0
        assert bdseq(reborn) == bdseq(nbirth)
        assert after(got, n, "NDEATH") == 0
        assert {m.alias for m in reborn.payload.metrics} == {m.alias for m in nbirth.payload.metrics}
        assert seq_errors(got) == []
        reborn_plc = nth(got, "DBIRTH/ps1", 1)[1]
        assert {name: m.alias for name, m in reborn_plc.metrics().items()} == {
            name: m.alias for name, m in dbirth.metrics().items()
        }
        status = agent.wait_status(lambda s: s["uplink"]["sparkplug"]["commands_rebirth"] == 1)
        assert status["uplink"]["sparkplug"]["bdseq"] == 0


def test_pysparkplug_state_offline_and_newer_online_and_the_will_of_a_killed_agent(
    mosquitto: Mosquitto, plant: Plant, tmp_path: Path
) -> None:
    with PysparkplugHost(mosquitto) as host, running_agent(plc_config(tmp_path, mosquitto, plant)) as agent:
        wait_connected(agent)
        t0 = pysparkplug.get_current_timestamp()
        host.state(True, t0)
        got = host.wait(lambda ss: count(ss, "DBIRTH/ps1") == 1)
        first = bdseq(got[0])

        # A newer online STATE while born (the host restarted): the node births again, same bdSeq.
        host.state(True, t0 + 1000)
        got = host.wait(lambda ss: count(ss, "NBIRTH") == 2 and count(ss, "DBIRTH/ps1") == 2)
        assert bdseq(nth(got, "NBIRTH", 1)[1]) == first

        # An offline STATE older than the newest seen (a stale Will) is ignored: the node stays
        # born, and obeys a rebirth request sent after it.
        host.state(False, t0 + 500)
        host.rebirth()
        got = host.wait(lambda ss: count(ss, "NBIRTH") == 3)
        assert count(got, "NDEATH") == 0

        # A valid offline STATE: NDEATH (QoS 1) with the bdSeq of the birth it ends, then the node
        # leaves, comes back on a new connection and waits, silent, for the host.
        host.state(False, t0 + 2000)
        got = host.wait(lambda ss: count(ss, "NDEATH") == 1)
        _, death = nth(got, "NDEATH", 0)
        assert death.qos == 1
        assert bdseq(death) == first
        assert pysparkplug_protobuf.Payload.FromString(death.raw).HasField("timestamp")
        assert not pysparkplug_protobuf.Payload.FromString(death.raw).HasField("seq")
        status = agent.wait_status(
            lambda s: (
                s["uplink"]["state"] == "online"
                and bool(s["uplink"]["sparkplug"])
                and s["uplink"]["sparkplug"]["bdseq"] != first
            ),
            30,
        )
        assert status["uplink"]["sparkplug"]["born"] is False
        n = len(host.seen)
        # The host back, in a newer session: births on the new connection's bdSeq.
        host.state(True, t0 + 3000)
        got = host.wait(lambda ss: after(ss, n, "NBIRTH") == 1 and after(ss, n, "DBIRTH/ps1") == 1)
        assert labels(got[n:])[0] == "NBIRTH"  # nothing before the birth
        born_again = bdseq(nth(got, "NBIRTH", 3)[1])
        assert born_again == (first + 1) % 256
        assert seq_errors(got) == []

        # The PLC gone: DDEATH of its device, in the node's seq, decoded by pysparkplug.
        plant.kill()
        got = host.wait(lambda ss: after(ss, n, "DDEATH/ps1") == 1)
        _, ddeath = nth(got, "DDEATH/ps1", 0)
        assert ddeath.payload.timestamp >= t0
        assert seq_errors(got) == []

        # Killed, with no goodbye: the broker publishes the Will, which pysparkplug decodes as
        # the NDEATH of the birth it ends.
        agent.kill()
        got = host.wait(lambda ss: count(ss, "NDEATH") == 2)
        _, will = nth(got, "NDEATH", 1)
        assert will.qos == 1
        assert not will.retain
        assert bdseq(will) == born_again
