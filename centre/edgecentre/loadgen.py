"""A fleet's traffic without a fleet: N simulated gateways publishing the documented payload.

Each gateway sends one data message per `interval_s` with `tags` readings (stream `plc1`, seq +1
per message, QoS 1), spread evenly over the interval so a fleet does not publish in step. An
outage (`outage_at_s`, `outage_s`) makes every gateway keep its messages instead; when it ends,
each gateway sends its whole backlog at once and then goes on live: the burst a centre sees when a
region's LTE comes back. Gateways are multiplexed over `connections` MQTT clients (a thousand paho
clients with a thread each would measure the generator, not the centre); the broker's cost per
connection is therefore not part of what this measures.

`run()` returns what was offered and acknowledged, and how far the generator itself fell behind
its schedule (if it did, the figure is the generator's limit, not the centre's).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


@dataclass(frozen=True, slots=True)
class FleetSpec:
    host: str
    port: int
    gateways: int = 100
    tags: int = 100
    interval_s: float = 1.0
    duration_s: float = 10.0
    connections: int = 4
    site_prefix: str = "site"
    prefix: str = "water"
    outage_at_s: float | None = None
    outage_s: float = 0.0
    protocol: MQTTProtocolVersion = paho.MQTTv311


@dataclass
class FleetResult:
    messages: int = 0
    readings: int = 0
    acked: int = 0
    behind_s: float = 0.0  # worst lateness of the generator against its own schedule
    last_seq: dict[tuple[str, str], int] = field(default_factory=dict)


def gateway_names(spec: FleetSpec) -> list[tuple[str, str]]:
    """(site, gateway) of every simulated gateway: 50 gateways per site."""
    return [(f"{spec.site_prefix}{i // 50:03d}", f"gw{i:05d}") for i in range(spec.gateways)]


def payload(site: str, gateway: str, seq: int, ts_ns: int, tags: int, *, epoch: int = 1) -> bytes:
    readings = [
        {
            "tag": f"t{j:03d}",
            "ts": ts_ns,
            "value": (seq * 31 + j) % 1000 / 10,
            "quality": "good",
            "unit": "bar",
            "source": "plc1",
        }
        for j in range(tags)
    ]
    doc = {
        "v": 2,
        "epoch": epoch,
        "stream": "plc1",
        "seq": seq,
        "site": site,
        "gateway": gateway,
        "sent_ns": time.time_ns(),
        "readings": readings,
    }
    return orjson.dumps(doc)


class _Lane(threading.Thread):
    """One MQTT connection publishing for a slice of the fleet."""

    def __init__(
        self, spec: FleetSpec, names: list[tuple[str, str]], offset: float, start_at: float, index: int
    ) -> None:
        super().__init__(name=f"loadgen-{index}", daemon=True)
        self.spec, self.names, self.offset, self.start_at = spec, names, offset, start_at
        self.result = FleetResult()
        self._acked = 0
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"loadgen-{index}-{time.time_ns()}", protocol=spec.protocol
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish

    def _on_publish(self, *_a: object) -> None:
        with self._lock:
            self._acked += 1

    def run(self) -> None:
        spec = self.spec
        self.client.connect(spec.host, spec.port, keepalive=30)
        self.client.loop_start()
        n = len(self.names)
        seqs = dict.fromkeys(self.names, 0)
        ticks = int(spec.duration_s / spec.interval_s)
        held: list[tuple[str, str, int, int]] = []
        res = self.result
        for tick in range(ticks):
            tick_t = self.start_at + tick * spec.interval_s
            in_outage = (
                spec.outage_at_s is not None
                and spec.outage_at_s <= tick * spec.interval_s < spec.outage_at_s + spec.outage_s
            )
            if not in_outage and held:
                for site, gw, seq, ts in held:  # the backlog, at once
                    self._send(site, gw, seq, ts)
                held = []
            for k, (site, gw) in enumerate(self.names):
                due = tick_t + self.offset + spec.interval_s * k / n
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                else:
                    res.behind_s = max(res.behind_s, now - due)
                seqs[(site, gw)] += 1
                ts = time.time_ns()
                if in_outage:
                    held.append((site, gw, seqs[(site, gw)], ts))
                else:
                    self._send(site, gw, seqs[(site, gw)], ts)
        for site, gw, seq, ts in held:
            self._send(site, gw, seq, ts)
        res.last_seq = dict(seqs)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self._lock:
                if self._acked >= res.messages:
                    break
            time.sleep(0.05)
        with self._lock:
            res.acked = self._acked
        self.client.disconnect()
        self.client.loop_stop()

    def _send(self, site: str, gw: str, seq: int, ts: int) -> None:
        body = payload(site, gw, seq, ts, self.spec.tags)
        self.client.publish(f"{self.spec.prefix}/{site}/{gw}/plc1", body, qos=1)
        self.result.messages += 1
        self.result.readings += self.spec.tags


def run(spec: FleetSpec) -> FleetResult:
    """Play the fleet for `duration_s`; returns when every message was acknowledged (or 60 s after)."""
    names = gateway_names(spec)
    lanes_n = max(1, min(spec.connections, len(names)))
    start_at = time.monotonic() + 0.5
    lanes = [
        _Lane(
            spec,
            names[i::lanes_n],
            spec.interval_s * i / (lanes_n * max(1, len(names[i::lanes_n]))),
            start_at,
            i,
        )
        for i in range(lanes_n)
    ]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()
    out = FleetResult()
    for lane in lanes:
        out.messages += lane.result.messages
        out.readings += lane.result.readings
        out.acked += lane.result.acked
        out.behind_s = max(out.behind_s, lane.result.behind_s)
        out.last_seq.update(lane.result.last_seq)
    return out
