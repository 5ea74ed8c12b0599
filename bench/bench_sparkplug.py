"""Sparkplug B vs JSON: 10,000 tags read every second, 10 % of them changing, to a local Mosquitto.

In one process, the agent's own path from acquisition to the broker: readings → report by
exception (where configured) → a real SQLite outbox (WAL, synchronous=normal) → the uplink →
Mosquitto (started by the bench). The bench plays the driver: every second it submits all 10,000
readings, of which a different 10 % changed. A subscriber in another thread counts the bytes that
arrive. Four shapes: JSON sending every reading (today's default), JSON with report by exception,
the same deflate- and zstd-compressed, and Sparkplug B (changes only). Tag names and values are
shaped like a pump station's (`pump0042.discharge_pressure`, values with three decimals, noise
steps), so compression is not flattered by repetitive synthetic data. Figures per shape: CPU of
this process (`time.process_time`) per second of load, as % of one core, and payload bytes on the
wire per changed reading. The whole agent under the same load (drivers, Modbus) is bench_agent.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Literal, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.figures import figure, run_alone
from tests.support.broker import Mosquitto
from water_edge.agent.pipeline import Pipeline
from water_edge.agent.uplink.config import MqttConfig, RbeConfig
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.agent.uplink.rbe import ExceptionFilter, ReportByException
from water_edge.agent.uplink.sparkplug.catalog import Catalog, DeviceSpec
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core.reading import Reading

TAGS = 10_000
CHANGING = 0.10
SECONDS = 20
WARMUP = 3
ROUNDS = 3  # of the json and sparkplug shapes (`run`)


class Bytes:
    def __init__(self, host: str, port: int) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.counting = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on
        self.client.connect(host, port)
        self.client.subscribe("#", qos=0)
        self.client.loop_start()

    def _on(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            if self.counting:
                self.total += len(msg.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _shape(broker: Mosquitto, db: Path, name: str, counter: Bytes) -> tuple[float, float]:
    encoding: Literal["json", "sparkplug_b"] = "sparkplug_b" if name == "sparkplug" else "json"
    compression = cast(Literal["none", "deflate", "zstd"], name.split("+", 1)[1] if "+" in name else "none")
    rbe = None if name == "json" else RbeConfig()
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        encoding=encoding,
        compression=compression,
        rbe=rbe,
    )
    async with await AsyncOutbox.open(db, max_bytes=1 << 30, synchronous="normal") as box:
        flt = None if rbe is None else ExceptionFilter(rbe)
        signals = ("flow", "discharge_pressure", "suction_pressure", "motor_current", "vibration_x")
        tags = [f"pump{i // len(signals):04d}.{signals[i % len(signals)]}" for i in range(TAGS)]
        uplink: MqttUplink | SparkplugUplink
        if encoding == "sparkplug_b":
            assert flt is not None
            uplink = SparkplugUplink(
                cfg, box, "bench", "gw", catalog=Catalog([DeviceSpec("plc", [(t, "") for t in tags])]),
                values=flt.current,
            )  # fmt: skip
        else:
            uplink = MqttUplink(cfg, box, "bench", "gw")
        appender = box if flt is None else ReportByException(box, flt)
        pipeline = Pipeline(appender, uplink.notify, batch_max_readings=1000)
        tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(pipeline.run())]
        rng = random.Random(17)
        # Measured values as a PLC gives them: no two alike, changing by noise-sized steps.
        values = [round(rng.uniform(0.5, 900.0), 3) for _ in range(TAGS)]
        n_changing = int(TAGS * CHANGING)
        cpu0 = wall0 = 0.0
        for second in range(WARMUP + SECONDS):
            if second == WARMUP:
                with counter.lock:
                    counter.total, counter.counting = 0, True
                cpu0, wall0 = time.process_time(), time.monotonic()
            started = time.monotonic()
            for i in rng.sample(range(TAGS), n_changing):  # a different random 10 % each second
                values[i] = round(values[i] + rng.gauss(0.0, 0.5), 3)
            ts = time.time_ns()
            await pipeline.submit(
                "plc", [Reading("plc", t, ts, v) for t, v in zip(tags, values, strict=True)]
            )
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))  # the poll interval
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        await pipeline.flush()
        await asyncio.sleep(1.0)  # the last second's messages reach the subscriber
        with counter.lock:
            counter.counting = False
            sent = counter.total
        await uplink.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    changed = TAGS * CHANGING * SECONDS
    return 100 * cpu / wall, sent / changed


def run(tmpdir: Path) -> list[dict[str, Any]]:
    shapes = ("json", "json_rbe", "json_rbe+deflate", "json_rbe+zstd", "sparkplug")
    # The pair the target compares, run ROUNDS times alternately and each figure the median: one
    # 20 s run varies by about half a point of a core, as much as the difference judged.
    order = [*shapes[1:-1], *[name for _ in range(ROUNDS) for name in ("json", "sparkplug")]]
    cpus: dict[str, list[float]] = {name: [] for name in shapes}
    bytes_per: dict[str, list[float]] = {name: [] for name in shapes}
    with Mosquitto() as broker:
        counter = Bytes(broker.host, broker.port)
        try:
            for run_number, name in enumerate(order):
                cpu, per = asyncio.run(_shape(broker, tmpdir / f"{name}-{run_number}.db", name, counter))
                cpus[name].append(cpu)
                bytes_per[name].append(per)
        finally:
            counter.close()
    figures = []
    for name in shapes:
        target = "<= the JSON figure" if name == "sparkplug" else "reference"
        if len(cpus[name]) > 1:
            target += f" (median of {len(cpus[name])} runs, alternated with the other)"
        figures += [
            figure(
                f"sparkplug.10000_tags_10pct.{name}.cpu", statistics.median(cpus[name]), "% of a core", target
            ),
            figure(
                f"sparkplug.10000_tags_10pct.{name}.bytes_per_changed",
                statistics.median(bytes_per[name]),
                "bytes",
                "reference",
            ),
        ]
    return figures


if __name__ == "__main__":
    run_alone(run)
