"""The field technician's commands against a running agent: status, tail, buffer stats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import AgentProcess, running_agent
from tests.support.testing import write_agent_config
from water_edge.agent.cli import format_status
from water_edge.core.health import health_json
from water_edge.models.leak.processor import LeakHealth
from water_edge.models.pump.health import PumpHealth, PumpStatus

FAKE_DEVICE = """
[[devices]]
name = "fake-plc"
kind = "fake"
poll_interval_ms = 100

  [[devices.tags]]
  name = "level"
  unit = "m"
  offset = 3.5
"""


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent whose broker never answers, so its outbox fills up."""
    config = write_agent_config(tmp_path_factory.mktemp("cli"), devices=FAKE_DEVICE)
    with running_agent(config) as running:
        running.wait_status(lambda s: s["buffer"].get("rows", 0) >= 3)
        yield running
        running.stop()


def test_status_is_readable_and_json(agent: AgentProcess) -> None:
    human = cli("status", "-c", str(agent.config))
    assert human.returncode == 0, human.stderr
    assert "fake-plc" in human.stdout
    assert "up" in human.stdout
    assert "uplink" in human.stdout
    snap = json.loads(cli("status", "-c", str(agent.config), "--json").stdout)
    assert snap["drivers"][0]["state"] == "up"
    assert snap["uplink"]["state"] != "online"
    assert snap["agent"]["gateway"] == "gw-test"


def test_status_without_an_agent_says_so_and_exits_3(tmp_path: Path) -> None:
    result = cli("status", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 3
    assert "no agent answers" in result.stderr


def test_buffer_stats_shows_what_waits_for_the_broker(agent: AgentProcess) -> None:
    human = cli("buffer", "stats", "-c", str(agent.config))
    assert human.returncode == 0, human.stderr
    data = json.loads(cli("buffer", "stats", "--db", str(agent.outbox), "--json").stdout)
    assert data["rows"] >= 3
    assert data["readings"] >= 3
    shown = re.search(r"depth:\s+(\d+) rows", human.stdout)
    assert shown is not None, human.stdout
    assert 3 <= int(shown.group(1)) <= data["rows"]  # the outbox only grows while the broker is away
    assert "fake-plc" in human.stdout


def test_buffer_stats_on_a_missing_file_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    result = cli("buffer", "stats", "--db", str(tmp_path / "nope.sqlite"))
    assert result.returncode == 1
    assert "nope.sqlite" in result.stderr
    assert not (tmp_path / "nope.sqlite").exists()


def test_tail_prints_live_readings(agent: AgentProcess) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "water_edge.agent.cli",
            "tail",
            "-c",
            str(agent.config),
            "--json",
            "--tag",
            "lev*",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()
    assert all(line["tag"] == "level" and line["value"] == 3.5 and line["unit"] == "m" for line in lines)
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)


def test_check_config_on_an_invalid_file_lists_problems_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\n[gateway]\nsite = "a"\n[uplink]\nhost = "h"\nport = "x"\n')
    result = cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert f"{bad}: gateway.id: required key is missing" in result.stderr
    assert f"{bad}: uplink.port:" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_prints_each_processors_own_lines() -> None:
    def pump(state: Any) -> PumpStatus:
        return PumpStatus(state, None, 0.5, False, 10, 0, 0, 0, None, None)

    healths = {
        "pump_anomaly": (PumpHealth("1.1.0", {"P1": pump("learning"), "P2": pump("alarm")}), 2),
        "leak:hyd": (LeakHealth(12, 0, 0.0132), 0),
        "leak:quiet": (LeakHealth(0, 0, None), 0),
    }
    snapshot = {
        "agent": {"version": "x", "site": "s", "gateway": "g", "pid": 1, "uptime_s": 5.0},
        "uplink": {"state": "online"},
        "pipeline": {
            "readings_per_s": 0.0,
            "pending": 0,
            "committed_readings": 0,
            "append_errors": 0,
            "dropped_readings": 0,
        },
        "buffer": {},
        "drivers": [],
        "processors": [
            {
                "name": name,
                "crashes": crashes,
                "feed": {},
                "health": health_json(h),
                "lines": h.status_lines(),
            }
            for name, (h, crashes) in healths.items()
        ],
    }
    lines = format_status(snapshot, 0).splitlines()
    assert [line for line in lines if line.startswith("model")] == [
        "model    pump_anomaly: P1 learning, P2 alarm  crashes 2",
        "model    leak:hyd: 12 windows scored, leak probability 0.0132",
        "model    leak:quiet: 0 windows scored, leak probability None",
    ]
