"""The whole agent under load: N Modbus tags from firmware-sim every second to a local Mosquitto.

Starts the real plant (`edge-sim run --bench-tags N`), a real Mosquitto and `edge-agent run` as
separate processes; a subscriber in this process checks every message. Reports the agent's CPU
(share of one core) and peak RSS over the measurement window, loss (missing seqs, missing
readings per tag, bad readings), read-to-broker latency percentiles, start-to-first-reading, and
the median and longest of ten status requests after the window (the agent's loop serves them).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.figures import figure, run_alone
from tests.support.agent_proc import start_agent
from tests.support.broker import Mosquitto
from tests.support.plant import running_plant
from tests.support.testing import write_agent_config
from water_edge.agent.config import load_config
from water_edge.buffer.stats import read_stats
from water_edge.sim.benchmap import agent_config_toml

WARMUP_S = 10.0
MEASURE_S = 30.0
STATUS_REQUESTS = 10


class Counter:
    """Subscriber that tallies readings per tag, seq per stream and read-to-arrival latency."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.lock = threading.Lock()
        self.first_reading_at: float | None = None
        self.seqs: dict[str, list[int]] = {}
        self.per_tag: dict[str, int] = {}
        self.bad = 0
        self.latencies_ms: list[float] = []
        self.measuring = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        arrived_ns = time.time_ns()
        if msg.topic.endswith("/status"):
            return
        body = orjson.loads(msg.payload)
        with self.lock:
            self.seqs.setdefault(body["stream"], []).append(body["seq"])
            readings = body.get("readings")
            if not readings:
                return
            if self.first_reading_at is None:
                self.first_reading_at = time.monotonic()
            for r in readings:
                self.per_tag[r["tag"]] = self.per_tag.get(r["tag"], 0) + 1
                if r["quality"] != "good":
                    self.bad += 1
            if self.measuring:
                self.latencies_ms.extend((arrived_ns - r["ts"]) / 1e6 for r in readings)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(tmpdir: Path, n_tags: int = 10_000) -> list[dict[str, Any]]:
    with Mosquitto() as broker, running_plant(bench_tags=n_tags, workdir=tmpdir) as plant:
        devices = agent_config_toml(n_tags, plant.host, plant.port)
        config = write_agent_config(
            tmpdir,
            broker_port=broker.port,
            devices=devices,
            site="bench",
            gateway="gw",
            uplink={"reconnect_max_s": 1.0},
            extra='[log]\nlevel = "warning"',
        )
        counter = Counter(broker.host, broker.port, "water/bench/gw/#")
        loaded = load_config(config)  # the harness's own parsing (~0.4 s at 10k tags) is not timed
        started = time.monotonic()
        agent = start_agent(config, loaded)
        try:
            proc = psutil.Process(agent.process.pid)
            while counter.first_reading_at is None and time.monotonic() - started < 30:
                time.sleep(0.01)
            first_reading_s = (counter.first_reading_at or float("nan")) - started
            time.sleep(max(0.0, WARMUP_S - (time.monotonic() - started)))
            counter.measuring = True
            cpu0, wall0 = proc.cpu_times(), time.monotonic()
            peak_rss = 0
            while time.monotonic() - wall0 < MEASURE_S:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                time.sleep(0.5)
            cpu1, wall1 = proc.cpu_times(), time.monotonic()
            counter.measuring = False
            status_ms = []  # what `edge-agent status` costs the agent's loop at this many tags
            for _ in range(STATUS_REQUESTS):
                asked = time.perf_counter()
                status = agent.status()
                status_ms.append(1000 * (time.perf_counter() - asked))
                time.sleep(0.2)
            exit_code = agent.stop()
        finally:
            agent.kill()
        time.sleep(1.0)
        counter.close()
        leftover = read_stats(agent.outbox).readings

    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cpu_pct = 100 * cpu_s / (wall1 - wall0)
    seqs = counter.seqs.get("bench", [])
    missing_seqs = (max(seqs) - len(set(seqs))) if seqs else 0
    counts = list(counter.per_tag.values())
    tag_spread = (max(counts) - min(counts)) if counts else 0
    driver = status["drivers"][0]
    key = f"agent.{n_tags}_tags"
    return [
        figure(f"{key}.cpu", cpu_pct, "% of one core", "<= 15"),
        figure(f"{key}.rss_peak", peak_rss / 2**20, "MiB", "<= 100"),
        figure(f"{key}.latency_p50", _percentile(counter.latencies_ms, 0.5), "ms", "reference"),
        figure(f"{key}.latency_p99", _percentile(counter.latencies_ms, 0.99), "ms", "<= 1500"),
        figure(f"{key}.readings_delivered", sum(counts), "readings", "reference"),
        figure(f"{key}.tags_seen", len(counts), "tags", f"== {n_tags}"),
        figure(f"{key}.missing_seqs", missing_seqs, "messages", "== 0"),
        figure(f"{key}.per_tag_count_spread", tag_spread, "readings", "== 0"),
        figure(f"{key}.bad_readings", counter.bad, "readings", "== 0"),
        figure(f"{key}.left_in_outbox", leftover, "readings", "== 0"),
        figure(f"{key}.poll_overruns", driver["overruns"], "polls", "== 0"),
        figure(f"{key}.exit_code", exit_code, "", "== 0"),
        figure(
            f"{key}.status_request_p50",
            _percentile(status_ms, 0.5),
            "ms",
            "reference (the loop waits that long)",
        ),
        figure(f"{key}.status_request_max", max(status_ms), "ms", "reference"),
        figure("agent.start_to_first_reading", first_reading_s, "s", "<= 2"),
    ]


if __name__ == "__main__":
    run_alone(run)
