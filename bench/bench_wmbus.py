"""Wireless M-Bus: 500 meters heard through one receiver, and the cost of one telegram.

1. The whole agent: firmware-sim's 500 wireless meters at their real send intervals (150
   Kamstrup-style compact meters every 16 s on C1 through rtl_wmbus, 350 OMS meters every 120 s on
   T1; both link modes on the SDR's TCP stream), `edge-agent run` with all 500 keys, the meter
   analytics over them, a real Mosquitto. The agent's CPU (share of one core) and peak RSS over the
   measurement window, and how many of the meters were heard and decoded.
2. Decrypt + decode per telegram, in this process, on telegrams the simulator built: ELL AES-CTR
   compact frames, OMS mode 5 and mode 7 (AES-CBC, with the mode-7 key derivation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from tests.support.agent_proc import start_agent, write_config
from tests.support.broker import Mosquitto
from tests.support.plant import running_plant
from tests.support.wmbus_air import rtlwmbus_device

METERS = 500
COMPACT_SHARE = 0.3
WARMUP_S = 125.0  # one whole send interval of the slowest meters: every meter has been heard
MEASURE_S = 60.0
SCENARIO = f"""
[scenario]
name = "bench-wmbus"
seed = 2

[components.wmbus]
meters = {METERS}
compact_share = {COMPACT_SHARE}
interval_s = 120.0
security = "mixed"
"""


def _devices(air: dict[str, Any]) -> str:
    text = rtlwmbus_device(air, {f"m{m['index']}": m for m in air["meters"]})
    return text + '\n[[models.meter]]\nname = "all"\ndevice = "wmeters"\nno_use_hours = 12\n'


def _agent_figures(tmpdir: Path) -> list[dict[str, Any]]:
    scenario = tmpdir / "scenario.toml"
    # Compact (Kamstrup-style) meters send every 16 s, as a MULTICAL 21 does in C1.
    scenario.write_text(SCENARIO + "compact_interval_s = 16.0\n")
    with (
        Mosquitto() as broker,
        running_plant(seed=2, scenario=scenario, components="wmbus", workdir=tmpdir) as plant,
    ):
        air: dict[str, Any] = plant.endpoints["wmbus"]
        config = write_config(tmpdir, broker_port=broker.port, devices=_devices(air))
        agent = start_agent(config)
        try:
            proc = psutil.Process(agent.process.pid)
            time.sleep(WARMUP_S)
            cpu0 = proc.cpu_times()
            t0 = time.monotonic()
            before = _driver(agent.status())
            peak_rss = 0
            while time.monotonic() - t0 < MEASURE_S:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                time.sleep(1.0)
            cpu1 = proc.cpu_times()
            elapsed = time.monotonic() - t0
            after = _driver(agent.status())
        finally:
            agent.stop()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    telegrams = after["frames"] - before["frames"]
    decoded_share = round(after["decoded"] / max(1, after["frames"]), 3)
    crc_per_s = round((after["crc_errors"] - before["crc_errors"]) / elapsed, 2)
    return [
        _fig("wmbus_500_meters_agent_cpu", round(100 * busy / elapsed, 2), "% of one core", "<= 5"),
        _fig("wmbus_500_meters_telegrams_per_s", round(telegrams / elapsed, 1), "telegrams/s",
             "12.3 sent (150 x 1/16 s + 350 x 1/120 s), less collisions"),
        _fig("wmbus_500_meters_heard", after["meters_heard"], "meters", "500"),
        _fig("wmbus_500_meters_decoded_share", decoded_share, "of frames",
             "all but compact frames before a full one"),
        _fig("wmbus_500_meters_crc_failed_per_s", crc_per_s, "frames/s", "(collisions on the air, reported)"),
        _fig("wmbus_500_meters_agent_peak_rss", round(peak_rss / 2**20, 1), "MiB", "(reported)"),
    ]  # fmt: skip


def _fig(name: str, value: float, unit: str, target: str) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "target": target}


def _driver(status: dict[str, Any]) -> dict[str, Any]:
    device = next(d for d in status["drivers"] if d["name"] == "wmeters")
    driver: dict[str, Any] = device["driver"]
    return driver


def _per_telegram() -> list[dict[str, Any]]:
    import random

    from water_edge.drivers.wmbus.compact import FormatStore
    from water_edge.drivers.wmbus.telegram import decode_wireless
    from water_edge.sim.wmbus_meter import MeterSpec, WirelessMeter

    out = []
    for label, kind, security in (
        ("ell_ctr_compact", "compact", "ell"),
        ("mode5", "oms", "mode5"),
        ("mode7", "oms", "mode7"),
    ):
        spec = MeterSpec(ident=12345678, kind=kind, security=security, key=bytes(range(16)))  # type: ignore[arg-type]
        meter = WirelessMeter(spec, random.Random(1))
        telegrams = [meter.telegram((2024, 6, 1, 12, i % 60)) for i in range(400)]
        formats = FormatStore()
        decode_wireless(telegrams[0], key=meter.spec.key, formats=formats)  # the full frame teaches
        start = time.perf_counter()
        for t in telegrams:
            decode_wireless(t, key=meter.spec.key, formats=formats)
        per_us = (time.perf_counter() - start) / len(telegrams) * 1e6
        out.append(_fig(f"wmbus_decrypt_decode_{label}", round(per_us, 1), "us/telegram", "(reported)"))
    return out


def run(tmpdir: Path) -> list[dict[str, Any]]:
    return _per_telegram() + _agent_figures(tmpdir)


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware-sim"))
    for row in run(Path(tempfile.mkdtemp())):
        print(row)
