"""CPU of the OPC UA driver with 5,000 monitored items at 1 s sampling; prints figures, never fails.

The server is firmware-sim's (`edge-sim run --components opcua` with EDGE_SIM_OPCUA_BENCH_TAGS,
5,000 Float variables each changing once a second) in its own process. The driver runs alone in
a second process (`python -m bench.bench_opcua --child URL`): it subscribes to every variable,
consumes `stream()` for a warm-up, then measures its own process CPU time (user + system, all
threads) against wall time while counting the readings it produced. A connection lost on the way
(on a loaded machine the simulator's server can miss the 5 s request timeout) is reopened and
counted, as the agent's supervisor would, and the warm-up starts again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_ITEMS = 5000
WARMUP_S = 8.0
MEASURE_S = 20.0
MAX_RECONNECTS = 2
ROOT = Path(__file__).resolve().parents[1]


def run(tmpdir: Path) -> list[dict[str, Any]]:
    env = dict(os.environ, EDGE_SIM_OPCUA_PORT="0", EDGE_SIM_OPCUA_BENCH_TAGS=str(N_ITEMS))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "firmware-sim"), env.get("PYTHONPATH", "")])
    endpoints = tmpdir / "opcua-endpoints.json"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "water_edge.sim.cli",
            "run",
            "--port",
            "0",
            "--components",
            "opcua",
            "--endpoints-file",
            str(endpoints),
            "--workdir",
            str(tmpdir),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not endpoints.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("edge-sim with the OPC UA bench tags did not start")
            time.sleep(0.2)
        url = json.loads(endpoints.read_text())["opcua"]["url"]
        child = subprocess.run(
            [sys.executable, "-m", "bench.bench_opcua", "--child", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=WARMUP_S + MEASURE_S + 120,
            check=False,
        )
        if child.returncode != 0:
            # The exception is the last line of a traceback; asyncua's log lines come before it.
            lines = child.stderr.strip().splitlines() or ["(no output)"]
            raise RuntimeError(
                f"the OPC UA bench client exited {child.returncode}: {lines[-1]}\n{child.stderr[-2000:]}"
            )
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(15)
    return [
        {"name": "opcua_driver_cpu_5000_items_1s", "value": round(result["cpu_pct"], 1),
         "unit": "% of one core", "target": "<= 10"},
        {"name": "opcua_readings_per_s_5000_items_1s", "value": round(result["readings_per_s"]),
         "unit": "readings/s", "target": f"{N_ITEMS}"},
        {"name": "opcua_driver_rss_5000_items", "value": round(result["rss_mb"], 1), "unit": "MB",
         "target": "reference (the driver's process alone; the agent runs under MemoryMax=256M)"},
        {"name": "opcua_driver_reconnects", "value": result["reconnects"], "unit": "reconnects",
         "target": "0 (each: the simulator did not answer within 5 s; warm-up restarted)"},
    ]  # fmt: skip


async def _child(url: str) -> dict[str, float]:
    """Measure as the agent would run the driver: a lost connection is reopened (the supervisor's
    job in the agent), counted, and the warm-up starts again; three in a row end the bench."""
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.opcua.config import OpcUaConfig
    from water_edge.drivers.opcua.driver import OpcUaDriver

    config = OpcUaConfig.model_validate({
        "name": "bench", "kind": "opcua", "endpoint": url,
        "sampling_interval_ms": 1000, "publishing_interval_ms": 1000,
        "tags": [{"name": f"bench_{i:05d}", "node": f"ns=2;s=bench_{i:05d}"} for i in range(N_ITEMS)],
    })  # fmt: skip
    driver = OpcUaDriver.from_config(config)
    for reconnects in range(MAX_RECONNECTS + 1):
        try:
            cpu_pct, readings_per_s = await _measure(driver)
            break
        except DriverIOError as exc:
            if reconnects == MAX_RECONNECTS:
                raise
            print(f"reconnecting after: {exc}", file=sys.stderr)
        finally:
            await driver.aclose()
    rss_mb = _peak_rss_mb()
    return {"cpu_pct": cpu_pct, "readings_per_s": readings_per_s, "rss_mb": rss_mb, "reconnects": reconnects}


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (`VmHWM`), MB. Not `ru_maxrss`: Linux carries a
    process's high-water mark across fork and exec, so a child of the bench runner reported the
    runner's ~220 MB, not the driver's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def _measure(driver: Any) -> tuple[float, float]:
    await driver.open()
    count = 0
    started = time.monotonic()
    cpu0 = wall0 = 0.0
    measuring = False
    async for batch in driver.stream():
        now = time.monotonic()
        if not measuring and now - started >= WARMUP_S:
            measuring, count = True, 0
            cpu0, wall0 = time.process_time(), now
            continue
        count += len(batch)
        if measuring and now - wall0 >= MEASURE_S:
            break
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    return 100 * cpu / wall, count / wall


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(_child(sys.argv[2]))))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for row in run(Path(tmp)):
                print(row)
