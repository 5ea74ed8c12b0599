"""Throughput of the outbox against plain SQLite on the same machine; prints figures, never fails.

Every figure uses real files under `tmpdir`, WAL and synchronous=FULL, 500 readings per outbox row
and 4 rows (2,000 readings) per transaction, which is what a pipeline flushing ~2,000 tags a
second commits. The baseline writes the same readings one SQLite row each, in the same
transaction sizes, with plain `executemany`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.figures import figure, run_alone
from water_edge.buffer.codec import decode_events, decode_readings
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading, Value

READINGS_PER_ROW = 500
ROWS_PER_APPEND = 4
TOTAL_READINGS = 400_000
T0_NS = 1_750_000_000_000_000_000


def _readings(n: int) -> list[Reading]:
    values: tuple[Value, ...] = (12.75, 3, True, 0.001, 1024, None)
    out = []
    for i in range(n):
        value = values[i % len(values)]
        if value is None:
            out.append(Reading("plc1", f"pump{i % 97}.fault", T0_NS + i, None, "bad", "", "timeout"))
        else:
            out.append(Reading("plc1", f"pump{i % 97}.tag{i % 13}", T0_NS + i, value, unit="m3/h"))
    return out


def _appends(readings: list[Reading]) -> list[list[Batch]]:
    batches = [
        Batch("plc1", readings=readings[i : i + READINGS_PER_ROW])
        for i in range(0, len(readings), READINGS_PER_ROW)
    ]
    return [batches[i : i + ROWS_PER_APPEND] for i in range(0, len(batches), ROWS_PER_APPEND)]


def _bench_outbox(path: Path, readings: list[Reading], max_bytes: int) -> tuple[float, float, int]:
    appends = _appends(readings)
    with Outbox(path, max_bytes=max_bytes, synchronous="full") as outbox:
        start = time.perf_counter()
        for batches in appends:
            outbox.append(batches)
        append_s = time.perf_counter() - start
        used = outbox.bytes_used

        start = time.perf_counter()
        cursor = 0
        drained = 0
        while rows := outbox.lease(cursor, ROWS_PER_APPEND):
            for row in rows:
                if row.row_class == "telemetry":
                    drained += len(decode_readings(row.body))
                else:
                    decode_events(row.body)
            outbox.ack([row.id for row in rows])
            cursor = rows[-1].id
        drain_s = time.perf_counter() - start
    return append_s, drain_s, used


def _bench_baseline(path: Path, readings: list[Reading]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE readings (source TEXT, tag TEXT, ts_ns INTEGER, value, quality TEXT,"
        " unit TEXT, reason TEXT)"
    )
    per_tx = READINGS_PER_ROW * ROWS_PER_APPEND
    start = time.perf_counter()
    for i in range(0, len(readings), per_tx):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (r.source, r.tag, r.ts_ns, r.value, r.quality, r.unit, r.reason)
                for r in readings[i : i + per_tx]
            ],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def run(tmpdir: Path) -> list[dict[str, Any]]:
    """Measure and return one dict per figure: name, value, unit, target."""
    readings = _readings(TOTAL_READINGS)
    n = len(readings)
    append_s, drain_s, used = _bench_outbox(tmpdir / "outbox.db", readings, max_bytes=1 << 30)
    # A quota of a quarter of the data: three quarters of the appends evict as they go.
    evict_s, _, _ = _bench_outbox(tmpdir / "evicting.db", readings, max_bytes=used // 4)
    baseline_s = _bench_baseline(tmpdir / "baseline.db", readings)
    append_rate = n / append_s
    baseline_rate = n / baseline_s
    return [
        figure("buffer.append", append_rate, "readings/s", ">= 200000"),
        figure("buffer.lease_ack", n / drain_s, "readings/s", ">= 100000"),
        figure("buffer.append_evicting", n / evict_s, "readings/s", ">= 200000"),
        figure("sqlite.executemany_baseline", baseline_rate, "readings/s", "reference"),
        figure("buffer.append_vs_baseline", append_rate / baseline_rate, "ratio", "reference"),
        figure("buffer.bytes_per_reading", used / n, "bytes", "reference"),
    ]


if __name__ == "__main__":
    run_alone(run)
