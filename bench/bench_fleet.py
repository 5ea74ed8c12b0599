"""Fleet scale: the reference ingest against plain COPY, a simulated fleet into PostgreSQL, failover.

1. **Ingest vs COPY.** The same 300,000 readings (3,000 messages of 100) are published to a local
   Mosquitto and ingested by 1, 2 and 4 `edge-centre ingest` processes (MQTT 5 shared
   subscription, ack after commit) into a fresh database; the time from the first publish to the
   last commit is compared with a plain `COPY` of the same rows into an identical table, measured
   before and after them in the same round; the median of three rounds' ratios. Target: ingest
   >= 50 % of COPY.
2. **Fleet.** `edge-centre loadgen`'s gateways x 100 tags at 1 s through Mosquitto into the
   database with 2 consumers, for a minute per size, growing the fleet until the lag (commit time
   minus the gateway's `sent_ns`) stops being bounded; the CPU of each process says which one is
   the bottleneck. Target: 1,000 gateways (100,000 readings/s), or the largest sustained.
3. **Failover.** An uplink on node 1 of a three-node RabbitMQ cluster publishing 20 rows/s; node 1
   is killed (-9); time until the first PUBACK on another node, and every row checked at a
   subscriber on the surviving nodes. Target: <= connect timeout + one backoff step, 0 lost.

Prints figures, never fails. Run alone: `.venv/bin/python -m bench.bench_fleet`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.figures import figure, print_figures
from tests.support.broker import Mosquitto
from tests.support.centre import IngestProcess, query
from tests.support.cluster import RabbitCluster, rabbitmq_available
from tests.support.postgres import Postgres
from water_edge.centre.loadgen import FleetSpec, gateway_names, payload
from water_edge.centre.loadgen import run as run_fleet
from water_edge.centre.payload import parse
from water_edge.centre.store import READING_COLUMNS, READING_TYPES, migrate

MESSAGES = 3000
INGEST_REPEATS = 3
TAGS = 100
FLEET_SIZES = (250, 500, 1000)
FLEET_SECONDS = 60.0
LAG_BOUND_S = 5.0
BROKER_CONFIG = "max_inflight_messages 1000\nmax_queued_messages 0\n"


def _consumers(tmp: Path, dsn: str, broker: Mosquitto, n: int, tag: str) -> list[IngestProcess]:
    procs = []
    for i in range(n):
        args = ["--dsn", dsn, "ingest", "--broker", f"mqtt://{broker.host}:{broker.port}", "--client-id",
                f"{tag}-c{i}", "--group", tag, "--batch-messages", "500", "--batch-ms", "50",
                "--gap-check-s", "30"]  # fmt: skip
        procs.append(IngestProcess(args, tmp / f"{tag}-c{i}.log").start())
    for p in procs:
        p.wait_subscribed(timeout_s=60)
    return procs


def _count(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM messages")[0][0])


def _wait_count(dsn: str, n: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _count(dsn) >= n:
            return time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"{_count(dsn)} of {n} messages committed")


def _publish_all(broker: Mosquitto, bodies: list[tuple[str, bytes]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish(topic, body, qos=1) for topic, body in bodies]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _bodies() -> list[tuple[str, bytes]]:
    names = gateway_names(FleetSpec("", 0, gateways=100))
    out = []
    for i in range(MESSAGES):
        site, gw = names[i % len(names)]
        seq = i // len(names) + 1
        out.append((f"water/{site}/{gw}/plc1", payload(site, gw, seq, 10**18 + i, TAGS)))
    return out


def _plain_copy(dsn: str, bodies: list[tuple[str, bytes]], *, binary: bool = False) -> float:
    """The same rows, already made in memory, with one plain COPY into an identical table (same
    primary key): no JSON, no broker, no dedup, one transaction. The strict reference. `binary`:
    in the binary format the ingest itself uses (store.py), for comparison."""
    rows = []
    for i, (topic, body) in enumerate(bodies):
        msg = parse(topic, body)
        rows += [(i % 100 + 1, msg.seq, *r) for r in msg.readings]
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE copy_readings (LIKE readings INCLUDING ALL)")
        conn.commit()
        started = time.perf_counter()
        sql = f"COPY copy_readings ({READING_COLUMNS}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
        with conn.cursor() as cur, cur.copy(sql) as copy:
            if binary:
                copy.set_types(READING_TYPES)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


def _ingest_seconds(tmp: Path, pg: Postgres, bodies: list[tuple[str, bytes]], n: int, tag: str) -> float:
    """From the first publish until every message is committed by `n` consumers, fresh database."""
    dsn = pg.create_db(tag)
    migrate(dsn)
    with Mosquitto(extra_config=BROKER_CONFIG) as broker:
        procs = _consumers(tmp, dsn, broker, n, tag)
        try:
            started = time.perf_counter()
            _publish_all(broker, bodies)
            return _wait_count(dsn, MESSAGES, 300) - started
        finally:
            for p in procs:
                p.stop()


def ingest_vs_copy(tmp: Path, pg: Postgres) -> list[dict[str, Any]]:
    """Median over `INGEST_REPEATS` rounds, each the COPYs, the three ingests and the COPYs again
    (the reference is the mean of the two), so that a ratio compares runs made within seconds of
    each other: one ~1 s COPY alone swings by +-25 % between runs on this machine (215,000-364,000
    readings/s in one hour), and the database slows down through a run (docs/benchmarks.md)."""
    bodies = _bodies()
    readings = MESSAGES * TAGS
    copy_s: list[float] = []
    binary_s: list[float] = []
    ingest_s: dict[int, list[float]] = {1: [], 2: [], 4: []}

    def copies(r: int, when: str) -> tuple[float, float]:
        out = []
        for name, binary in (("copyref", False), ("copybin", True)):
            dsn = pg.create_db(f"{name}{r}{when}")
            migrate(dsn)
            out.append(_plain_copy(dsn, bodies, binary=binary))
        return out[0], out[1]

    for r in range(INGEST_REPEATS):
        before = copies(r, "a")
        for n, times in ingest_s.items():
            times.append(_ingest_seconds(tmp, pg, bodies, n, f"i{n}r{r}"))
        after = copies(r, "b")
        copy_s.append((before[0] + after[0]) / 2)
        binary_s.append((before[1] + after[1]) / 2)
    same_run = "reference (same run)"
    figures = [
        figure("fleet.copy_plain", readings / statistics.median(copy_s), "readings/s", same_run),
        figure("fleet.copy_binary", readings / statistics.median(binary_s), "readings/s", same_run),
    ]
    for n, times in ingest_s.items():
        ratios = [100 * c / t for c, t in zip(copy_s, times, strict=True)]
        rate = readings / statistics.median(times)
        figures.append(figure(f"fleet.ingest_{n}_consumers", rate, "readings/s", "reference"))
        figures.append(figure(f"fleet.ingest_{n}_vs_copy", statistics.median(ratios), "% of COPY", ">= 50"))
        figures.append(
            figure(f"fleet.ingest_{n}_vs_copy_range", max(ratios) - min(ratios), "% points", "reference")
        )
        vs_binary = statistics.median(100 * c / t for c, t in zip(binary_s, times, strict=True))
        figures.append(figure(f"fleet.ingest_{n}_vs_copy_binary", vs_binary, "% of COPY", "reference"))
    return figures


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    return out


def _postgres_pids(pg: Postgres) -> list[int]:
    """Our server's postmaster and its children (backends, WAL writer, checkpointer) only."""
    main = psutil.Process(pg.pid)
    return [main.pid, *(c.pid for c in main.children(recursive=True))]


def fleet(tmp: Path, pg: Postgres) -> list[dict[str, Any]]:
    figures = []
    largest = 0
    for gateways in FLEET_SIZES:
        dsn = pg.create_db(f"fleet{gateways}")
        migrate(dsn)
        with Mosquitto(extra_config=BROKER_CONFIG) as broker:
            procs = _consumers(tmp, dsn, broker, 2, f"f{gateways}")
            pids = {
                "broker": [broker._proc.pid] if broker._proc else [],
                "ingest": [p.process.pid for p in procs if p.process],
                "postgres": _postgres_pids(pg),
                "loadgen": [os.getpid()],
            }
            before = _cpu(pids)
            spec = FleetSpec(broker.host, broker.port, gateways=gateways, tags=TAGS, interval_s=1.0,
                             duration_s=FLEET_SECONDS, connections=8, protocol=paho.MQTTv5)  # fmt: skip
            started = time.perf_counter()
            offered = run_fleet(spec)
            sent_s = time.perf_counter() - started
            try:
                drained = _wait_count(dsn, offered.messages, 120) - started
            except TimeoutError:
                drained = float("inf")
            after = _cpu(pids)
            for p in procs:
                p.stop()
        lags = [
            float(r[0])
            for r in query(dsn, "SELECT extract(epoch FROM received_at) - sent_ns / 1e9 FROM messages")
        ]
        p50 = statistics.median(lags) if lags else float("inf")
        p99 = statistics.quantiles(lags, n=100)[98] if len(lags) > 100 else float("inf")
        cpu = {k: (after[k] - before[k]) / drained for k in before} if drained != float("inf") else {}
        busiest = max(cpu, key=lambda k: cpu[k]) if cpu else "unknown"
        total_cpu = sum(cpu.values())
        bounded = p99 <= LAG_BOUND_S and drained <= sent_s + LAG_BOUND_S and offered.behind_s < 1.0
        if bounded:
            largest = gateways
        name = f"fleet.{gateways}gw"
        figures += [
            figure(f"{name}_offered", offered.readings / sent_s, "readings/s", f"{gateways * TAGS}"),
            figure(f"{name}_committed", offered.readings / drained, "readings/s", "= offered"),
            figure(f"{name}_lag_p50", p50, "s", "bounded"),
            figure(f"{name}_lag_p99", p99, "s", f"<= {LAG_BOUND_S}"),
            figure(f"{name}_generator_behind", offered.behind_s, "s", "< 1 (else the generator limits)"),
        ]
        for name, share in cpu.items():
            figures.append(figure(f"fleet.{gateways}gw_cpu_{name}", 100 * share, "% of a core", "reference"))
        figures.append(
            figure(f"fleet.{gateways}gw_cpu_total", 100 * total_cpu, "% of a core", "machine: 200")
        )
        print(f"  {gateways} gateways: p99 lag {p99:.2f} s, busiest {busiest}, cpu {cpu}", flush=True)
        if not bounded:
            break
    figures.append(figure("fleet.largest_bounded", largest, "gateways x 100 tags at 1 s", ">= 1000"))
    return figures


async def _failover(cluster: RabbitCluster, tmp: Path) -> dict[str, float]:
    from water_edge.agent.uplink.config import MqttConfig
    from water_edge.agent.uplink.mqtt import MqttUplink
    from water_edge.buffer.async_outbox import AsyncOutbox
    from water_edge.buffer.types import Batch
    from water_edge.core.reading import Reading

    seen: set[int] = set()
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = __import__("orjson").loads(msg.payload)
        with lock:
            seen.add(doc["seq"])

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-failover-sub", clean_session=False)
    sub.on_message = on_message
    sub.on_connect = lambda c, *_a: c.subscribe("water/b/g/plc1", qos=1)
    sub.connect("127.0.0.1", cluster.nodes[2].mqtt_port)
    sub.loop_start()
    await asyncio.sleep(1.0)
    cfg = MqttConfig(servers=tuple(n.uri for n in cluster.nodes), protocol="3.1.1", connect_timeout_s=5.0,
                     reconnect_min_s=0.5, reconnect_max_s=5.0, keepalive_s=5)  # fmt: skip
    async with await AsyncOutbox.open(tmp / "failover.db", max_bytes=64 * 2**20, synchronous="normal") as box:
        uplink = MqttUplink(cfg, box, "b", "g")
        task = asyncio.create_task(uplink.run())
        appended = 0

        async def append(n: int) -> None:
            nonlocal appended
            for _ in range(n):
                appended += 1
                await box.append(
                    [Batch("plc1", readings=[Reading("plc1", "t", time.time_ns(), float(appended))])]
                )
                uplink.notify()
                await asyncio.sleep(0.05)

        await append(40)
        acked_before = uplink.health().acked
        killed = time.perf_counter()
        cluster.kill(0)
        resumed = None
        writer = asyncio.create_task(append(100))
        while resumed is None and time.perf_counter() - killed < 60:
            h = uplink.health()
            if h.server_index != 0 and h.connected and h.acked > acked_before:
                resumed = time.perf_counter() - killed
            await asyncio.sleep(0.01)
        await writer
        await uplink.stop(drain_timeout_s=10)
        await task
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(seen) >= appended:
                break
        await asyncio.sleep(0.1)
    sub.loop_stop()
    with lock:
        lost = len(set(range(1, appended + 1)) - seen)
    return {"resume_s": resumed if resumed is not None else float("inf"), "lost": lost, "rows": appended,
            "bound_s": cfg.connect_timeout_s + 2 * cfg.reconnect_min_s}  # fmt: skip


def failover(tmp: Path) -> list[dict[str, Any]]:
    if not rabbitmq_available():
        return [figure("fleet.failover_resume", -1, "s", "rabbitmq-server not installed")]
    with RabbitCluster() as cluster:
        r = asyncio.run(_failover(cluster, tmp))
    return [
        figure(
            "fleet.failover_resume",
            r["resume_s"],
            "s",
            f"<= {r['bound_s']} (connect timeout + one backoff step)",
        ),
        figure("fleet.failover_lost", r["lost"], f"rows of {r['rows']}", "0"),
    ]


def run(tmpdir: Path) -> list[dict[str, Any]]:
    """Measure and return one dict per figure: name, value, unit, target."""
    figures = failover(tmpdir)
    with Postgres() as pg:
        figures += ingest_vs_copy(tmpdir, pg)
        figures += fleet(tmpdir, pg)
    return figures


if __name__ == "__main__":
    parts = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        if parts:
            figures: list[dict[str, Any]] = []
            with Postgres() as pg:
                for part in parts:
                    figures += failover(Path(tmp)) if part == "failover" else globals()[part](Path(tmp), pg)
        else:
            figures = run(Path(tmp))
        print_figures(figures)
        print(f"  done in {time.monotonic() - started:.0f} s")
