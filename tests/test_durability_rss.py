"""Soak: memory stays flat with the broker down for a long time at a high reading rate.

The real agent polls the firmware-sim PLC every 50 ms (43 tags, ~860 readings/s) into an outbox
with a small quota, so it fills and evicts for most of the run; the broker never exists. RSS is
sampled every 10 s; after a warm-up the growth must stay within a small bound. Run by `make soak`
(`SOAK_RSS_S`, default 3600 s).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from tests.support.agent_proc import running_agent
from tests.support.plant import running_plant
from tests.support.testing import demo_devices, skip_unless_soak, write_agent_config

MAX_GROWTH_MB = 8.0


@pytest.mark.soak
@pytest.mark.timeout(4 * 3600)
def test_rss_is_flat_with_the_broker_down(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    skip_unless_soak(request.config)
    duration = float(os.environ.get("SOAK_RSS_S", "3600"))
    with running_plant(seed=5) as plant:
        config = write_agent_config(
            tmp_path,
            devices=demo_devices(plant.port, poll_interval_ms=50),
            uplink={"reconnect_max_s": 5.0},
            buffer={"max_bytes": "8MiB"},
        )
        with running_agent(config) as agent:
            proc = psutil.Process(agent.process.pid)
            samples: list[tuple[float, float]] = []
            start = time.monotonic()
            while time.monotonic() - start < duration:
                time.sleep(10)  # the sampling period of the measurement, not a wait for a condition
                samples.append((time.monotonic() - start, proc.memory_info().rss / 2**20))
            status = agent.status()
            assert agent.stop() == 0
    warm = [rss for t, rss in samples if t >= min(300.0, duration / 3)]
    growth = max(warm) - warm[0]
    print(
        f"rss soak: {duration:.0f} s, readings {status['pipeline']['committed_readings']}, "
        f"evicted rows {status['buffer']['evicted_rows']}, rss first {samples[0][1]:.1f} MB, "
        f"after warm-up {warm[0]:.1f} -> max {max(warm):.1f} MB (growth {growth:.1f} MB)"
    )
    assert status["buffer"]["evicted_rows"] > 0, "the quota was reached: the long-run state"
    assert growth <= MAX_GROWTH_MB
