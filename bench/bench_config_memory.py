"""What a config costs in memory: the agent's resident set at several tag counts and with each
driver and analytics kind, and how close `edge-agent check-config`'s estimate comes
(`agent/config/memory.py` takes its constants from here).

Tags: for each N the real plant serves N float32 bench tags over Modbus TCP (plus the station's 43
demo tags), a real Mosquitto takes the data and `edge-agent run` polls every tag each second; the
agent's RSS is sampled for `MEASURE_S` after `WARMUP_S`. The per-tag cost is the slope between the
smallest and the largest run; the base is what the agent holds with the 43 station tags alone.

Kinds: the demo's own config (`scripts/demo.py`: the plant on every protocol, two hydrophones, the
pump, leak and meter models), cut down to the station's Modbus TCP device plus one driver or
analytics kind at a time (the kind's cost on top of the station: its libraries and its state),
then whole, with a machine-sound model on a hydrophone added (what `check-config` must not
underestimate: the unit's MemoryMax kills the agent above it).
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
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
# A kind's state fills over its first minute (audio windows, a leak night's seconds, clip history).
KIND_WARMUP_S = 30.0
ROOT = Path(__file__).resolve().parents[1]
# The demo's config cut down: the blocks kept besides the station's Modbus TCP device (`_kept`).
KINDS: dict[str, tuple[str, ...]] = {
    "station": (),
    "opcua": ("device:opcua",),
    "wmbus": ("device:wmbus",),
    "audio": ("device:audio",),
    "pump": ("model:pump",),
    "leak": ("device:audio", "model:leak"),
    "machine_sound": ("device:audio", "model:machine_sound"),
    "meter": ("device:wmbus", "model:meter"),
    # Two kinds together tell the libraries they share (numpy; the TFLite runtime) from their own.
    "pump_audio": ("model:pump", "device:audio"),
    "pump_leak": ("model:pump", "device:audio", "model:leak"),
}
MACHINE_SOUND = """
[[models.machine_sound]]
name = "pump1-sound"
device = "hydrophones"
channels = ["A"]
"""


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
        return _measure(config), estimate(load_config(config)).total_mib


def _measure(config: Path, warmup_s: float = WARMUP_S) -> float:
    """The agent's peak RSS running `config`, MiB."""
    agent = start_agent(config)
    try:
        proc = psutil.Process(agent.process.pid)
        time.sleep(warmup_s)
        peak = 0
        until = time.monotonic() + MEASURE_S
        while time.monotonic() < until:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.5)
        agent.stop()
    finally:
        agent.kill()
    return peak / 2**20


def _demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block_kind(block: str) -> str:
    if block.startswith("[[models."):
        return "model:" + block[len("[[models.") : block.index("]]")]
    found = re.search(r'^kind = "(\w+)"', block, re.M)
    return "device:" + (found.group(1) if found else "?")


def _kept(config: str, kinds: tuple[str, ...] | None) -> str:
    """`config` with only the station's Modbus TCP device and the blocks of `kinds` (all: None)."""
    head, *blocks = re.split(r"(?m)^(?=\[\[devices\]\]|\[\[models\.)", config)
    keep = None if kinds is None else {"device:modbus_tcp", *kinds}
    return head + "".join(b for b in blocks if keep is None or _block_kind(b) in keep)


def _kinds(tmpdir: Path) -> dict[str, tuple[float, float]]:
    """(measured peak RSS, check-config's estimate) of the demo's config cut to each of `KINDS`, and
    whole (`demo`), MiB."""
    demo = _demo_module()
    runner = demo.Demo(0)
    try:
        runner.start_broker()
        endpoints = runner.start_plant()
        runner.leak_baseline()
        now = datetime.now()
        night = (now.strftime("%H:%M"), (now + timedelta(minutes=40)).strftime("%H:%M"))
        config = demo.render_config(
            endpoints, runner.broker_port, runner.state, *night, socket_path=runner.socket
        )
        config += MACHINE_SOUND
        out = {}
        for name, kinds in [*KINDS.items(), ("demo", None)]:
            path = tmpdir / f"kind-{name}.toml"
            path.write_text(_kept(config, kinds), encoding="utf-8")
            for stale in runner.state.glob("outbox.sqlite*"):
                stale.unlink()
            out[name] = (_measure(path, KIND_WARMUP_S), estimate(load_config(path)).total_mib)
        return out
    finally:
        runner.stop_plant_and_broker()


def own_costs(rss: dict[str, float]) -> dict[str, float]:
    """Each kind's own memory and the two libraries kinds share, MiB, from the runs of `KINDS`:
    numpy (the audio driver and every model but the meter's) and the TFLite runtime (pump, leak).
    Over the station, pump = numpy + tflite + pump's own; audio = numpy + audio's own; pump with
    audio = numpy + tflite + both own: numpy = pump + audio - (pump with audio); likewise tflite
    from the leak, which also holds it."""
    over = {name: value - rss["station"] for name, value in rss.items()}
    numpy = over["pump"] + over["audio"] - over["pump_audio"]
    tflite = over["pump"] + over["leak"] - over["pump_leak"] - numpy
    audio = over["audio"] - numpy
    return {
        "numpy": numpy,
        "tflite": tflite,
        "opcua": over["opcua"],
        "wmbus": over["wmbus"],
        "audio": audio,
        "pump": over["pump"] - numpy - tflite,
        "leak": over["leak"] - numpy - audio - tflite,
        "machine_sound": over["machine_sound"] - numpy - audio,
        "meter": over["meter"] - over["wmbus"],
    }


def run(tmpdir: Path) -> list[dict[str, Any]]:
    kinds = _kinds(tmpdir)
    figures = [
        _figure(f"agent.rss.own.{name}", value, "MiB", "reference (agent/config/memory.py)")
        for name, value in own_costs({name: rss for name, (rss, _) in kinds.items()}).items()
    ]
    rss, guess = kinds["demo"]
    figures.append(_figure("agent.rss.demo_with_machine_sound", rss, "MiB", "< 256 (MemoryMax)"))
    figures.append(
        _figure("check_config.estimate.demo_with_machine_sound", guess, "MiB", f"~ {rss:.0f} (measured)")
    )
    measured = {n: _peak_rss_mib(tmpdir, n) for n in TAG_COUNTS}
    lo, hi = TAG_COUNTS[0], TAG_COUNTS[-1]
    per_1000 = (measured[hi][0] - measured[lo][0]) / ((hi - lo) / 1000)
    figures.append(_figure("agent.rss.station_only", measured[lo][0], "MiB", "reference (43 tags)"))
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
