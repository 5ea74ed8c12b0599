"""What a config costs in memory: the agent's resident set at several tag counts, and how close
`edge-agent check-config`'s estimate comes (`agent/config/memory.py` takes its constants from here).

For each N the real plant serves N float32 bench tags over Modbus TCP (plus the station's 43 demo
tags), a real Mosquitto takes the data and `edge-agent run` polls every tag each second; the
agent's RSS is sampled for `MEASURE_S` after `WARMUP_S`. The per-tag cost is the slope between the
smallest and the largest run; the base is what the agent holds with the 43 station tags alone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tests.support.agent_proc import start_agent
from tests.support.broker import Mosquitto
from tests.support.plant import running_plant
from tests.support.testing import demo_devices, write_agent_config
from water_edge.agent.config import load_config
from water_edge.agent.config.memory import estimate
from water_edge.sim.benchmap import agent_config_toml

TAG_COUNTS = (0, 5_000, 25_000)
WARMUP_S = 10.0
MEASURE_S = 15.0


def _peak_rss_mib(tmpdir: Path, n_tags: int) -> tuple[float, float]:
    """(measured peak RSS, check-config's estimate), both MiB, for the station + `n_tags` bench tags."""
    with Mosquitto() as broker, running_plant(bench_tags=n_tags, workdir=tmpdir) as plant:
        devices = demo_devices(plant.port)
        if n_tags:
            devices += "\n" + agent_config_toml(n_tags, plant.host, plant.port)
        here = tmpdir / f"n{n_tags}"
        here.mkdir()
        config = write_agent_config(
            here,
            broker_port=broker.port,
            devices=devices,
            extra='[log]\nlevel = "warning"',
        )
        agent = start_agent(config)
        try:
            proc = psutil.Process(agent.process.pid)
            time.sleep(WARMUP_S)
            peak = 0
            until = time.monotonic() + MEASURE_S
            while time.monotonic() < until:
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.5)
            agent.stop()
        finally:
            agent.kill()
    return peak / 2**20, estimate(load_config(config)).total_mib


def run(tmpdir: Path) -> list[dict[str, Any]]:
    measured = {n: _peak_rss_mib(tmpdir, n) for n in TAG_COUNTS}
    lo, hi = TAG_COUNTS[0], TAG_COUNTS[-1]
    per_1000 = (measured[hi][0] - measured[lo][0]) / ((hi - lo) / 1000)
    figures = [_figure("agent.rss.station_only", measured[lo][0], "MiB", "reference (43 tags)")]
    figures.append(_figure("agent.rss.per_1000_tags", per_1000, "MiB", "reference (Modbus TCP, 1 s)"))
    for n, (rss, guess) in measured.items():
        figures.append(_figure(f"agent.rss.{n + 43}_tags", rss, "MiB", "reference"))
        target = f"~ {rss:.0f} (measured)"
        figures.append(_figure(f"check_config.estimate.{n + 43}_tags", guess, "MiB", target))
    return figures


def _figure(name: str, value: float, unit: str, target: str) -> dict[str, Any]:
    return {"name": name, "value": round(float(value), 2), "unit": unit, "target": target}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench_config_memory_") as tmp:
        for figure in run(Path(tmp)):
            print(f"{figure['name']:<40} {figure['value']:>10,} {figure['unit']:<6} ({figure['target']})")
