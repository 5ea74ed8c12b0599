"""Scenario files and the sim's command line: examples load and describe themselves, bad files
name the key, a scenario drives faults deterministically, `edge-sim run --scenario` makes the PLC
fall silent when told, the RTU face answers mbpoll, and `edge-sim dataset pump` writes labelled
CSVs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.plant import running_plant
from tests.support.testing import wait_until
from water_edge.sim.faults import CommFaults
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.scenario import ScenarioError, load_scenario, parse_duration

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "deploy" / "scenarios").glob("*.toml"))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "firmware-sim")])}


def edge_sim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=ENV,
    )


def test_durations() -> None:
    assert [parse_duration(v) for v in ("90s", "10m", "1.5h", "300ms", 12, "2d")] == [
        90,
        600,
        5400,
        0.3,
        12,
        172800,
    ]
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_example_scenarios_load_and_list(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.events
    out = edge_sim("list", "--scenario", str(path))
    assert out.returncode == 0, out.stderr
    assert f"scenario {scenario.header.name}" in out.stdout
    assert len(re.findall(r"^\s+\d\d:\d\d:\d\d ", out.stdout, re.M)) == len(scenario.events)


def test_bad_scenario_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[events]]\nat = "soon"\nfault = "bearing_wear"\n\n[[events]]\nat = 1\nfault = "melt"\n')
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    text = str(err.value)
    assert f"{bad}: events[0].at: expected a duration" in text
    assert "events[1]" in text
    assert "'melt'" in text
    out = edge_sim("run", "--scenario", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "events[0].at" in out.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"a = " + b"[" * 1000 + b"]" * 1000 + b"\n", "not valid TOML: values nested too deeply"),
        (b"\xff\xfename = 'x'\n", "not UTF-8 text"),
    ],
)
def test_a_scenario_file_the_parser_cannot_take_is_named_not_a_traceback(
    tmp_path: Path, content: bytes, said: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    with pytest.raises(ScenarioError, match=said):
        load_scenario(bad)


def test_scenario_drives_faults_on_model_time() -> None:
    scenario = load_scenario(ROOT / "deploy" / "scenarios" / "pump2-bearing-wear.toml")
    station = PumpStation(7, tick_s=1.0)
    scenario.apply(station, CommFaults())
    station.step(59)
    assert station.severity("bearing_wear", 2) == 0
    station.step(301)  # 360 s: half way through the 10 min ramp
    assert station.severity("bearing_wear", 2) == pytest.approx(0.5)
    now = [100.0]
    comm = CommFaults(lambda: now[0])
    load_scenario(ROOT / "deploy" / "scenarios" / "plc-outage.toml").apply(PumpStation(0), comm)
    assert comm.silent("modbus_tcp")
    assert comm.silent("modbus_rtu")
    now[0] = 160.0
    assert not comm.silent("modbus_tcp")
    assert comm.garbage("modbus_rtu") == 0.5
    assert comm.garbage("modbus_tcp") == 0
    now[0] = 40.0
    assert comm.latency_s("modbus_tcp") == pytest.approx(0.3)


def test_run_with_scenario_goes_silent_over_tcp(tmp_path: Path) -> None:
    from pymodbus.client import ModbusTcpClient
    from pymodbus.exceptions import ModbusException

    scen = tmp_path / "quiet.toml"
    # The silence starts 60 model seconds in (3 s of wall time at 20x): the first read below comes
    # before it even on a loaded machine.
    scen.write_text('[scenario]\nspeed = 20\n\n[[events]]\nat = "60s"\ncomm = "silence"\nduration = "1h"\n')
    with running_plant(workdir=tmp_path, scenario=scen) as plant:  # `edge-sim run --scenario`
        client = ModbusTcpClient(plant.host, port=plant.port, timeout=1.0, retries=0)
        assert client.connect()  # type: ignore[no-untyped-call]  # pymodbus: the sync client's is untyped

        def silent() -> bool:
            try:
                client.read_holding_registers(8, count=1, device_id=1)
            except ModbusException as exc:
                if "No response" in str(exc):
                    return True
                raise
            return False

        try:
            assert client.read_holding_registers(8, count=1, device_id=1).registers == [2]
            assert wait_until(silent, 15, every_s=0.1, what="the PLC falling silent")
        finally:
            client.close()  # type: ignore[no-untyped-call]  # pymodbus: the sync client's is untyped


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll not installed")
def test_mbpoll_reads_and_writes_over_rtu(tmp_path: Path) -> None:
    with running_plant(workdir=tmp_path, components="modbus_rtu") as plant:
        rtu = plant.endpoints["modbus_rtu"]
        assert str(rtu["path"]).startswith("/dev/pts/")
        base = ["mbpoll", "-m", "rtu", "-b", str(rtu["baudrate"]), "-P", "none", "-0", "-1", "-o", "1"]

        def poll(*args: str) -> str:
            return subprocess.run(
                [*base, *args, str(rtu["path"])], capture_output=True, text=True, timeout=15, check=False
            ).stdout

        assert re.search(r"^\[8\]:\s+2$", poll("-a", "1", "-r", "8"), re.M)  # map version
        meter = re.search(r"^\[0\]:\s+(\S+)", poll("-a", "2", "-t", "3:float", "-B", "-r", "0"), re.M)
        assert meter is not None
        assert 10 < float(meter.group(1)) < 400
        subprocess.run(
            [*base, "-a", "1", "-r", "500", str(rtu["path"]), "321"],
            capture_output=True,
            timeout=15,
            check=True,
        )
        assert re.search(r"^\[500\]:\s+321$", poll("-a", "1", "-r", "500"), re.M)
        assert not re.search(r"^\[8\]:", poll("-a", "7", "-r", "8"), re.M)  # absent unit: silent


def test_dataset_pump_writes_labelled_csvs(tmp_path: Path) -> None:
    out = edge_sim(
        "dataset",
        "pump",
        "--out",
        str(tmp_path),
        "--seed",
        "4",
        "--hours",
        "0.1",
        "--fault",
        "bearing_wear",
        "--fault",
        "sensor_dropout",
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["label"] for r in manifest["runs"]] == ["normal", "bearing_wear", "sensor_dropout"]
    with (tmp_path / "pump_bearing_wear.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "timestamp", "motor_current", "voltage", "suction_pressure", "discharge_pressure",
        "flow", "vibration_x", "vibration_y", "winding_temp", "bearing_temp", "speed",
    ]  # fmt: skip
    assert len(rows) == 361
    with (tmp_path / "pump_bearing_wear.labels.csv").open() as f:
        labels = list(csv.DictReader(f))
    assert [lab["timestamp"] for lab in labels] == [r[0] for r in rows[1:]]
    assert labels[0]["label"] == "normal"
    assert labels[-1]["label"] == "bearing_wear"
    vib = [float(r[6]) for r in rows[1:]]
    assert sum(vib[-30:]) > 2 * sum(vib[:30])  # the fault shows in its feature
    with (tmp_path / "pump_sensor_dropout.csv").open() as f:
        last = list(csv.reader(f))[-1]
    assert last[1] == "nan"
    again = tmp_path / "again"
    edge_sim(
        "dataset", "pump", "--out", str(again), "--seed", "4", "--hours", "0.1", "--fault", "bearing_wear"
    )
    assert (again / "pump_bearing_wear.csv").read_bytes() == (tmp_path / "pump_bearing_wear.csv").read_bytes()
    bad = edge_sim("dataset", "pump", "--out", str(tmp_path), "--hours", "-1")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_run_makes_a_workdir_not_there_yet_and_names_one_it_cannot_make(tmp_path: Path) -> None:
    # A --workdir not made beforehand failed with "[Errno 2] No such file or directory:
    # '/dev/pts/1' -> 'simwd/wmbus-stick-3.tmp'", naming neither the option nor the directory.
    workdir, endpoints = tmp_path / "new" / "simwd", tmp_path / "endpoints.json"
    cmd = ["run", "--port", "0", "--components", "wmbus", "--workdir", str(workdir)]
    sim = subprocess.Popen(
        [sys.executable, "-m", "water_edge.sim.cli", *cmd, "--endpoints-file", str(endpoints)]
    )
    try:
        wait_until(lambda: endpoints.exists() or sim.poll() is not None, 60, what="edge-sim announcing")
        assert sim.poll() is None
        assert str(json.loads(endpoints.read_text())["wmbus"]["stick"]["path"]).startswith(str(workdir))
    finally:
        sim.terminate()
        sim.wait(10)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    run = edge_sim("run", "--components", "wmbus", "--workdir", str(blocked / "simwd"), timeout=30)
    assert run.returncode == 2
    assert run.stderr.strip() == f"edge-sim: --workdir {blocked / 'simwd'}: Not a directory"
