"""`edge-agent status` as a technician types it: no `-c`, a config broken mid-edit, exit codes a
monitoring system can use, and a status that shows what is true now (errors with their age, gone
once they are over)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.testing import FAKE_DEVICE, wait_until, write_agent_config
from water_edge.agent.locate import NoAgentError, find_socket, socket_from_config


def edge_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def technician_env(tmp_path: Path) -> dict[str, str]:
    """The shell of someone who knows nothing about the agent's config (none in /etc either)."""
    return dict(os.environ, EDGE_AGENT_CONFIG=str(tmp_path / "no-such-config.toml"))


def test_status_without_a_config_finds_the_running_agent_and_says_degraded_then_ok(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=FAKE_DEVICE)
    env = technician_env(tmp_path)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["uplink"]["state"] == "online" and s["drivers"][0]["state"] == "up")
        ok = edge_agent("status", env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "state    ok" in ok.stdout
        assert f"uplink   online  127.0.0.1:{mosquitto.port}  for " in ok.stdout

        mosquitto.stop()
        agent.wait_status(lambda s: s["uplink"]["state"] != "online")
        down = edge_agent("status", env=env)
        assert down.returncode == 1, down.stdout + down.stderr
        uplink = next(line for line in down.stdout.splitlines() if line.startswith("uplink"))
        assert f"127.0.0.1:{mosquitto.port}  down " in uplink, uplink
        assert " ago: " in uplink, uplink
        assert "state    degraded: uplink " in down.stdout

        mosquitto.start()
        agent.wait_status(lambda s: s["uplink"]["state"] == "online")
        back = edge_agent("status", "--json", env=env)
        assert back.returncode == 0, back.stdout + back.stderr
        doc = json.loads(back.stdout)
        # The outage is over: its error is gone, not shown as if it were current.
        assert (doc["uplink"]["last_error"], doc["uplink"]["connections"]) == (None, 2)
        assert doc["verdict"] == {"state": "ok", "problems": []}
        assert "error" not in doc["uplink"]["lines"][0]
        assert agent.stop() == 0

    gone = edge_agent("status", env=env)
    assert gone.returncode == 2
    assert "no agent answers" in gone.stderr
    assert "--socket" in gone.stderr
    assert not list(Path(os.environ["EDGE_AGENT_RUNTIME_DIR"]).glob("agent-*.sock")), "announcement left"


def test_status_works_while_the_config_on_disk_is_broken(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        text = config.read_text()
        config.write_text(text.replace("[gateway]", "[gateway\nsite = ", 1))  # half-edited: not TOML
        broken = edge_agent("status", "-c", str(config))
        assert broken.returncode == 1, broken.stdout + broken.stderr  # degraded: no broker, but it answers
        assert "fake-plc" in broken.stdout
        config.write_text(text.replace('kind = "fake"', 'kind = "nonsense"'))  # TOML, not valid
        invalid = edge_agent("status", "-c", str(config), "--json")
        assert json.loads(invalid.stdout)["drivers"][0]["name"] == "fake-plc"


@contextmanager
def listening(path: Path) -> Iterator[socket.socket]:
    """Something that accepts connections on a unix socket, as an agent's status socket does."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    try:
        yield server
    finally:
        server.close()


def announce_link(runtime: Path, pid: int, target: Path) -> Path:
    link = runtime / f"agent-{pid}.sock"
    link.symlink_to(target)
    return link


def test_find_socket_order_hint_then_announced_then_refuses_to_guess(tmp_path: Path) -> None:
    runtime = Path(os.environ["EDGE_AGENT_RUNTIME_DIR"])
    for stale in runtime.glob("agent-*.sock"):
        stale.unlink()
    nowhere = tmp_path / "nothing.toml"
    with pytest.raises(NoAgentError, match="no agent answers"):
        find_socket(None, None, nowhere)
    assert find_socket("/x/y.sock", "ignored.toml", nowhere) == Path("/x/y.sock")

    one, two = tmp_path / "one.sock", tmp_path / "two.sock"
    with listening(one), listening(two):
        first = announce_link(runtime, 1, one)
        assert find_socket(None, None, nowhere) == first
        dead = announce_link(runtime, 2, tmp_path / "gone.sock")  # an agent killed with -9
        assert find_socket(None, None, nowhere) == first, "a dead announcement is ignored"
        second = announce_link(runtime, 3, two)
        with pytest.raises(NoAgentError, match="several agents run here"):
            find_socket(None, None, nowhere)
        # The config is the hint that settles it.
        config = tmp_path / "agent.toml"
        config.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n[status]\nsocket = "two.sock"\n')
        assert find_socket(None, None, config) == two
        assert find_socket(None, str(config), nowhere) == two
        for link in (first, dead, second):
            link.unlink()


def test_a_config_names_its_socket_even_half_edited(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[gateway]\nstate_dir = "/srv/edge"\n')
    assert socket_from_config(config) == Path("/srv/edge/status.sock")
    config.write_text('schema_version = 1\n[gateway\nstate_dir = "/srv/edge"\n[status]\nsocket = "s.sock"\n')
    assert socket_from_config(config) == Path("/srv/edge/s.sock")
    config.write_text("")
    assert socket_from_config(config) == Path("/var/lib/edge-agent/status.sock")
    assert socket_from_config(tmp_path / "missing.toml") is None


def test_the_agent_removes_what_a_killed_agent_announced(tmp_path: Path) -> None:
    runtime = Path(os.environ["EDGE_AGENT_RUNTIME_DIR"])
    stale = runtime / "agent-999999999.sock"  # no such process
    stale.symlink_to(tmp_path / "gone.sock")
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        mine = runtime / f"agent-{agent.process.pid}.sock"
        wait_until(mine.exists, what="the agent's announcement")
        assert mine.resolve() == agent.socket.resolve()
        assert not stale.is_symlink()
