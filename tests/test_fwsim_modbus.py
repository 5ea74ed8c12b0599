"""firmware-sim's pump station: an independent client (mbpoll) sees what the map promises, and the
physics behaves (more flow, more current; deterministic for a seed; values live)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest

from tests.support.plant import Plant as RunningPlant
from tests.support.plant import running_plant, start_plant
from water_edge.sim.benchmap import agent_config_toml, bench_tag_name
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import BENCH_BASE, POINTS, Plant, encode

needs_mbpoll = pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll not installed")


@pytest.fixture(scope="module")
def plant() -> Iterator[RunningPlant]:
    with running_plant(seed=11, bench_tags=100) as p:
        yield p


def mbpoll(plant: RunningPlant, *args: str) -> dict[int, str]:
    """Run mbpoll once (PDU addressing, -0) and return {address: value text}."""
    out = subprocess.run(
        ["mbpoll", "-m", "tcp", "-p", str(plant.port), "-0", "-1", "-o", "2", *args, plant.host],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    values = dict(re.findall(r"^\[(\d+)\]:\s+(\S+)", out.stdout, re.MULTILINE))
    if not values:
        raise AssertionError(f"mbpoll read nothing: {out.stdout}\n{out.stderr}")
    return {int(k): v for k, v in values.items()}


@needs_mbpoll
def test_mbpoll_reads_station_constants(plant: RunningPlant) -> None:
    assert mbpoll(plant, "-a", "1", "-r", "8", "-c", "2") == {8: "2", 9: "3"}  # version, pumps
    name = mbpoll(plant, "-a", "1", "-r", "0", "-c", "4", "-t", "4:hex")
    assert [name[i] for i in range(4)] == ["0x5053", "0x2D4E", "0x4F52", "0x5448"]  # "PS-NORTH"


@needs_mbpoll
def test_mbpoll_reads_floats_and_the_flow_meter(plant: RunningPlant) -> None:
    flow = float(mbpoll(plant, "-a", "1", "-r", "100", "-t", "4:float", "-B")[100])
    assert 20.0 <= flow <= 150.0
    # a separate request, so a moment later: only its range is certain (the sum is checked below)
    meter = float(mbpoll(plant, "-a", "2", "-r", "0", "-t", "3:float", "-B")[0])
    assert 20.0 <= meter <= 3 * 150.0
    bench = float(
        mbpoll(plant, "-a", "1", "-r", str(BENCH_BASE + 2 * 7), "-t", "3:float", "-B")[BENCH_BASE + 14]
    )
    assert (bench - 3.5) % 1 == 0
    assert 3.5 <= bench < 103.5


@needs_mbpoll
def test_mbpoll_sees_exceptions(plant: RunningPlant) -> None:
    out = subprocess.run(
        ["mbpoll", "-m", "tcp", "-p", str(plant.port), "-0", "-1", "-a", "1", "-r", "60", plant.host],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert "Illegal data address" in out.stdout + out.stderr


def test_more_flow_means_more_current() -> None:
    samples: dict[int, list[tuple[float, float]]] = {}
    for hour in range(24):
        s = PumpStation(0, start_time_of_day_s=hour * 3600).state
        running = [p for p in s.pumps if p.running]
        samples.setdefault(len(running), []).append((running[0].flow_m3h, running[0].current_a))
    for points in samples.values():
        points.sort()
        currents = [c for _, c in points]
        assert currents == sorted(currents)
    flows = [f for pts in samples.values() for f, _ in pts]
    assert max(flows) > 1.5 * min(flows)  # the day's demand pattern is visible


def test_outlet_meter_reads_the_sum_of_the_pumps() -> None:
    meter_flow = next(p for p in POINTS if p.name == "meter.flow")
    for hour in (3, 8, 19):
        s = PumpStation(4, start_time_of_day_s=hour * 3600).step(30)
        flows = [p.flow_m3h for p in s.pumps]
        assert meter_flow.value(s) == pytest.approx(sum(flows))
        assert sum(f > 0 for f in flows) >= 1


def test_pumps_follow_the_curves() -> None:
    s = PumpStation(1, start_time_of_day_s=12 * 3600).step(50)
    p = next(p for p in s.pumps if p.running)
    head_bar = p.discharge_bar - p.suction_bar
    h0, n0, k = 60.0, 2950.0, 15.0 / 120.0**2
    pump_head_m = h0 * (p.speed_rpm / n0) ** 2 - k * p.flow_m3h**2
    assert head_bar == pytest.approx(pump_head_m * 0.0981, rel=0.02)
    assert all(q.current_a == 0 and q.flow_m3h == 0 for q in s.pumps if not q.running)


def test_deterministic_for_a_seed_and_live() -> None:
    a, b = PumpStation(5), PumpStation(5)
    first = a.state.demand_m3h
    for _ in range(20):
        a.step()
        b.step()
    assert a.state == b.state
    assert a.state.demand_m3h != first
    assert PumpStation(6).step(20) != a.state


def test_register_image_matches_the_encoding() -> None:
    station = PumpStation(2)
    image = Plant(bench_tags=3)
    image.update(station.state)
    image.update_bench(42)
    for point in POINTS:
        got = image.units[point.unit_id].read(point.table, point.address, point.width)
        assert got == encode(point, point.value(station.state))
    assert image.units[1].read("input", BENCH_BASE, 2) == [0x4228, 0]  # 42.0
    assert image.units[1].read("holding", 60, 1) is None  # unmapped


def test_bench_agent_config_is_valid_toml_for_the_driver() -> None:
    from water_edge.drivers.modbus.config import ModbusTcpConfig
    from water_edge.drivers.modbus.plan import plan_requests

    doc = tomllib.loads(agent_config_toml(500, "127.0.0.1", 5020))
    cfg = ModbusTcpConfig.model_validate(doc["devices"][0])
    assert cfg.tags[499].name == bench_tag_name(499)
    assert cfg.tags[499].address == BENCH_BASE + 998
    assert len(plan_requests(cfg)) == 9  # ceil(500 / 62)


def test_cli_list_and_clean_exit(tmp_path: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "water_edge.sim.cli", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "pump1.flow" in out.stdout
    assert "meter.total_litres" in out.stdout
    p = start_plant()
    p.process.send_signal(signal.SIGINT)
    assert p.process.wait(timeout=10) == 0
