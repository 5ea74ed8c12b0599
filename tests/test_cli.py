"""The field technician's commands against a running agent: status, tail, buffer stats."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.agent_proc import AgentProcess, running_agent
from tests.support.testing import FAKE_DEVICE, STATUS_SCHEMA, write_agent_config
from water_edge.agent.cli import _parser, format_reading, format_status
from water_edge.agent.pipeline import FeedHealth
from water_edge.agent.status_document import ProcessorStatus
from water_edge.core.health import Health, health_json
from water_edge.models.leak.processor import LeakHealth
from water_edge.models.pump.health import PumpHealth, PumpStatus


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
    assert human.returncode == 1, human.stderr  # degraded: its broker never answers
    assert "fake-plc" in human.stdout
    assert "up" in human.stdout
    broker = json.loads(cli("status", "-c", str(agent.config), "--json").stdout)["uplink"]["broker"]
    uplink = next(line for line in human.stdout.splitlines() if line.startswith("uplink"))
    assert broker in uplink, uplink
    assert "never connected" in uplink, uplink
    # Between retries to a closed port the uplink is `offline`; for the moment of each retry, `connecting`.
    verdict = rf"^state    degraded: uplink (offline|connecting) \({re.escape(broker)}\)$"
    assert re.search(verdict, human.stdout, re.M), human.stdout
    snap = json.loads(cli("status", "-c", str(agent.config), "--json").stdout)
    assert snap["drivers"][0]["state"] == "up"
    assert snap["uplink"]["state"] != "online"
    assert snap["agent"]["gateway"] == "gw-test"
    assert snap["drivers"][0]["driver"]["reads"] >= 3  # the fake driver's own health


def test_status_json_matches_the_published_schema(agent: AgentProcess) -> None:
    result = cli("status", "-c", str(agent.config), "--json")
    assert result.returncode == 1, result.stderr
    snap = json.loads(result.stdout)
    jsonschema.validate(snap, STATUS_SCHEMA)
    assert snap["uplink"]["state"] in ("offline", "connecting")
    assert snap["verdict"] == {
        "state": "degraded",
        "problems": [f"uplink {snap['uplink']['state']} ({snap['uplink']['broker']})"],
    }
    assert snap["buffer"]["rows"] >= 3  # measured, not the empty placeholder
    assert (snap["watchdog"], snap["commands"], snap["alarms"]) == (None, None, [])


def test_status_text_lays_out_every_section_the_agent_renders(agent: AgentProcess) -> None:
    human = cli("status", "-c", str(agent.config)).stdout.splitlines()
    # the board's line where the agent can read this machine's ID (/proc/cpuinfo, /etc/machine-id)
    # and the host's (the card's free space at least) once the agent has sampled it; the state
    # backup's, its first attempt still to come ([state_backup] first_after, 10 min)
    snap = json.loads(cli("status", "-c", str(agent.config), "--json").stdout)
    board, host = snap["board"], snap["host"]
    starts = ["edge-agent ", "           config ", *(["           board    "] if board else []),
              *(["           host     "] if host else []), "           state backup: first ", "state    ",
              "uplink   ", "         published ", "pipeline ", "buffer   ", "         epoch ", "drivers",
              "  fake-plc  fake "]  # fmt: skip
    assert len(human) == len(starts), human
    assert all(line.startswith(start) for line, start in zip(human, starts, strict=True)), human


def test_status_without_an_agent_says_so_and_exits_2(tmp_path: Path) -> None:
    result = cli("status", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 2
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


def test_status_names_the_outbox_epoch_the_centre_sees(agent: AgentProcess) -> None:
    """The technician asked "which outbox is this?" reads it in `status`, as in `buffer stats`."""
    epoch = json.loads(cli("buffer", "stats", "--db", str(agent.outbox), "--json").stdout)["epoch"]
    assert epoch > 0  # drawn when the file was made
    assert json.loads(cli("status", "-c", str(agent.config), "--json").stdout)["buffer"]["epoch"] == epoch
    human = cli("status", "-c", str(agent.config)).stdout.splitlines()
    after_buffer = human[next(i for i, line in enumerate(human) if line.startswith("buffer   ")) + 1]
    assert after_buffer == f"         epoch {epoch}", human


def test_buffer_stats_on_a_missing_file_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    result = cli("buffer", "stats", "--db", str(tmp_path / "nope.sqlite"))
    assert result.returncode == 1
    assert "nope.sqlite" in result.stderr
    assert not (tmp_path / "nope.sqlite").exists()


def test_buffer_stats_reads_the_outbox_a_half_edited_config_names(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """The agent is down because its config is being edited: that is when the technician wants the
    outbox's figures (buffer stats refused with 'invalid configuration')."""
    broken = tmp_path / "agent.toml"
    broken.write_text(agent.config.read_text() + "\n[uplink\nhost = 'x'\n")  # no longer TOML
    result = cli("buffer", "stats", "-c", str(broken), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] >= 3
    assert f"reading the outbox it names, {agent.outbox}" in result.stderr


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


def test_tail_for_people_finds_the_agent_and_prints_local_time_and_the_value(
    agent: AgentProcess, tmp_path: Path
) -> None:
    env = dict(os.environ, EDGE_AGENT_CONFIG=str(tmp_path / "none.toml"))  # no config: it is found
    proc = subprocess.Popen(
        [sys.executable, "-m", "water_edge.agent.cli", "tail", "--tag", "lev*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
    finally:
        proc.kill()
        proc.wait()
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  fake-plc/level = 3\.5 m", line), line


def test_tail_whose_filter_matches_nothing_says_what_comes_instead(agent: AgentProcess) -> None:
    # `--tag pump1` (no `*`) or `Pump1.*`: it used to wait in silence for as long as it ran
    proc = subprocess.Popen(
        [sys.executable, "-m", "water_edge.agent.cli", "tail", "-c", str(agent.config), "--tag", "Level"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ceiling = threading.Timer(30, proc.kill)  # tail runs until stopped; its hint comes at 5 s
    ceiling.start()
    try:
        assert proc.stderr is not None
        hint = proc.stderr.readline().rstrip("\n")  # its first line ("" if killed in silence)
    finally:
        ceiling.cancel()
        proc.kill()
        proc.communicate()
    assert hint.startswith("edge-agent tail: no reading in 5 s matched --tag 'Level' --device '*' "), hint
    assert "readings came from fake-plc, tags such as level" in hint, hint


def test_tail_says_so_when_the_agent_goes_away(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    with running_agent(config) as running:
        running.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        proc = subprocess.Popen(
            [sys.executable, "-m", "water_edge.agent.cli", "tail", "-c", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["source"] == "fake-plc"
        running.stop()
    _, err = proc.communicate(timeout=30)
    # it ended with exit 0 and not a word, as if all were well
    assert proc.returncode == 1
    assert err.strip().endswith("closed the connection: it stopped, or dropped this reader for not keeping "
                                "up (a paused pager?)"), err  # fmt: skip


def test_json_output_answers_in_json_when_there_is_nothing_to_report(tmp_path: Path) -> None:
    """`status --json | jq .verdict.state` got empty input when no agent answered."""
    status = cli("status", "--socket", str(tmp_path / "none.sock"), "--json")
    assert status.returncode == 2
    doc = json.loads(status.stdout)
    assert doc["verdict"]["state"] == "down"
    assert "none.sock" in doc["error"]
    stats = cli("buffer", "stats", "--db", str(tmp_path / "nope.sqlite"), "--json")
    assert stats.returncode == 1
    assert "nope.sqlite" in json.loads(stats.stdout)["error"]


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

    healths: dict[str, tuple[Health, int]] = {
        "pump_anomaly": (PumpHealth("1.1.0", {"P1": pump("learning"), "P2": pump("alarm")}), 2),
        "leak:hyd": (LeakHealth(12, 0, 0.0132), 0),
        "leak:quiet": (LeakHealth(0, 0, None), 0),
    }
    feed = FeedHealth(0, 0, 0, 0)
    processors = [ProcessorStatus(name, crashes, feed, h) for name, (h, crashes) in healths.items()]
    snapshot = {
        "agent": {"lines": ["x"]},
        "uplink": {"lines": ["online"]},
        "pipeline": {"lines": ["0 readings/s"]},
        "buffer": {},
        "drivers": [],
        "processors": [health_json(p) | {"lines": p.status_lines()} for p in processors],
    }
    lines = format_status(snapshot).splitlines()
    assert [line for line in lines if line.startswith("model")] == [
        "model    pump_anomaly: P1 learning 50 %, P2 alarm  crashes 2",
        "model    leak:hyd: 12 windows scored, leak probability 0.0132",
        "model    leak:quiet: 0 windows scored, leak probability None",
    ]


HOSTILE = "\x1b]0;OWNED\x07\x1b[2J\x1b[Hroot@gw:~# \x1b[8mhidden\r\nnext\x9b"


def test_device_text_cannot_drive_the_technicians_terminal() -> None:
    """An OPC UA server (or a meter's text record) is untrusted: its text in `tail` and `status`
    shows its control characters as escapes, never as what a terminal obeys."""
    line = format_reading(
        {"ts": 1796473000000000000, "source": "ua", "tag": "station.name", "value": HOSTILE,
         "unit": "", "quality": "uncertain", "reason": "status \x1b[31mred"}
    )  # fmt: skip
    assert not any(c in line for c in "\x1b\x07\n\x9b")
    assert "\\x1b]0;OWNED\\x07\\x1b[2J" in line
    status = format_status(
        {"agent": {"lines": ["x"]}, "uplink": {}, "pipeline": {}, "buffer": {}, "processors": [],
         "drivers": [{"name": "ua", "lines": [f"opcua  down  error: {HOSTILE}"]}]}
    )  # fmt: skip
    assert not any(c in status.replace("\n", "") for c in "\x1b\x07\r\x9b")
    assert "\\x1b[8mhidden\\x0d\\x0anext\\x9b" in status


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_subcommands_help_prints() -> None:
    # argparse expands '%' in help texts; a bare one ("rise, % over ...") made --help a traceback.
    for path, parser in _parsers(_parser(), "edge-agent"):
        assert parser.format_help().startswith("usage: "), path
    result = cli("models", "score", "flow-leak", "--help")
    assert result.returncode == 0, result.stderr
    assert "--fixed-rise-pct" in result.stdout


INTERRUPT_WHILE_LOADING = """
import sys


class InterruptWhileLoading:
    # Ctrl-C arriving while the command modules are still being imported, every time.
    def find_spec(self, name, path=None, target=None):
        if name == "water_edge.agent.cli":
            raise KeyboardInterrupt
        return None


sys.meta_path.insert(0, InterruptWhileLoading())
"""


def test_ctrl_c_while_the_command_is_still_loading_exits_130_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_WHILE_LOADING)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    script = Path(sys.executable).with_name("edge-agent")  # the installed console script itself
    result = subprocess.run(
        [str(script), "status"], capture_output=True, text=True, timeout=30, env=env, check=False
    )
    assert result.returncode == 130
    assert result.stderr == "edge-agent: interrupted\n"


def test_building_the_command_line_imports_no_model_or_numpy() -> None:
    # Every command (`run`, `status`, `check-config` ...) builds the whole parser at start. A
    # `--check-s` bound imported from the leak reading code there made each of them load the leak
    # detector and numpy: 11 MB more resident for `edge-agent status` on a 1 GB gateway.
    script = (
        "import sys\n"
        "from water_edge.agent.cli import _parser\n"
        "_parser()\n"
        "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith('water_edge.models.leak.d')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
