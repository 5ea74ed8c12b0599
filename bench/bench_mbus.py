"""M-Bus: 20 meters on one 2400-baud bus read end to end by the driver, against the wire's limit.

The physical floor is what the bus carries: every request and answer byte at 11 bits (8E1) per
baud, plus the 11-bit-time gap a slave must leave before answering. A pty has no baud rate, so
firmware-sim paces its meters at 2400 Bd (a request counts as received when its bytes would have
crossed the wire; answers leave at the baud rate): the figure compares like with like.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

METERS = 20
BAUD = 2400
ROUNDS = 2


async def _run(tmpdir: Path) -> list[dict[str, Any]]:
    from water_edge.drivers.mbus.config import MbusConfig
    from water_edge.drivers.mbus.driver import MbusDriver
    from water_edge.sim.component import SimContext
    from water_edge.sim.mbus_bus import MbusComponent
    from water_edge.sim.pumpstation import PumpStation

    station = PumpStation(0)
    station.step(10)
    ctx = SimContext(
        station=station,
        points=[],
        seed=0,
        host="127.0.0.1",
        workdir=tmpdir,
        options={"meters": METERS, "baudrate": BAUD},
    )
    component = MbusComponent()
    await component.start(ctx)
    bus = component.bus
    assert bus is not None
    cfg = MbusConfig.model_validate({
        "name": "bench", "kind": "mbus", "port": bus.path, "baudrate": BAUD,
        "meters": [{"name": f"m{i + 1}", "address": i + 1} for i in range(METERS)],
    })  # fmt: skip
    driver = MbusDriver.from_config(cfg)
    await driver.open()
    ratios: list[float] = []
    elapsed_s: list[float] = []
    good = bad = 0
    try:
        for _ in range(ROUNDS):
            before = dict(bus.counters)
            start = time.perf_counter()
            readings = await driver.read()
            elapsed = time.perf_counter() - start
            counters = bus.counters
            wire_bytes = sum(counters[k] - before[k] for k in ("bytes_in", "bytes_out"))
            answers = bus.counters["answers"] - before["answers"]
            floor = (wire_bytes + answers) * 11 / BAUD
            ratios.append(elapsed / floor)
            elapsed_s.append(elapsed)
            good += sum(r.quality == "good" for r in readings)
            bad += sum(r.quality != "good" for r in readings)
    finally:
        await driver.aclose()
        await component.stop()
    return [
        {
            "name": "mbus_20_meters_2400bd_read",
            "value": round(min(elapsed_s), 3),
            "unit": "s",
            "target": f"<= 1.2 x wire floor ({floor:.2f} s)",
        },
        {"name": "mbus_read_vs_wire_floor", "value": round(min(ratios), 3), "unit": "x", "target": "<= 1.2"},
        {
            "name": "mbus_good_readings_per_round",
            "value": good // ROUNDS,
            "unit": "readings",
            "target": "all",
        },
        {"name": "mbus_bad_readings", "value": bad, "unit": "readings", "target": "0"},
    ]


def run(tmpdir: Path) -> list[dict[str, Any]]:
    return asyncio.run(_run(tmpdir))


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware-sim"))
    for row in run(Path(tempfile.mkdtemp())):
        print(row)
