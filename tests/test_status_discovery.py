"""Whose agent `edge-agent status` and `tail` talk to: an agent keeps its status socket against a
second one configured with the same path, an announcement another user could have made is not
believed, and a user outside the agent's group is told so rather than "no agent answers"."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.agent_proc import running_agent, start_agent
from tests.support.testing import FAKE_DEVICE, NOBODY, can_run_as_nobody, wait_until, write_agent_config
from water_edge.agent.status import StatusServer, request_status
from water_edge.core.errors import AgentError

# What a stranger's socket says: an agent that is fine, on a gateway that is not this one.
FAKE_STATUS = {
    "agent": {"lines": ["9.9.9  site FAKE  gateway FAKE  pid 1  up 1 s"]},
    "verdict": {"state": "ok", "problems": []},
    "uplink": {"lines": ["online (spoofed)"]},
    "pipeline": {"lines": []},
    "buffer": {"lines": []},
    "processors": [],
    "alarms": [],
    "drivers": [],
}

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for unix sockets (their paths hold ~107 bytes; pytest's tmp paths can be long)."""
    path = Path(tempfile.mkdtemp(prefix="sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def edge_agent(*args: str, runtime: Path, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a technician runs it (no config), looking for agents announced in `runtime`."""
    env = dict(os.environ, EDGE_AGENT_RUNTIME_DIR=str(runtime), EDGE_AGENT_CONFIG="/nonexistent/agent.toml")
    as_user = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return subprocess.run(
        [*as_user, sys.executable, "-m", "water_edge.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


class _FakeAgent(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        if self.rfile.readline():  # not a client that only looks whether something answers
            self.wfile.write(json.dumps(FAKE_STATUS).encode() + b"\n")


@contextmanager
def fake_agent(path: Path, owner: int | None = None) -> Iterator[Path]:
    """Something answering on `path` as an agent would, with a made-up status."""
    server = socketserver.ThreadingUnixStreamServer(str(path), _FakeAgent)
    os.chmod(path, 0o777)
    if owner is not None:
        os.chown(path, owner, owner)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def link_as(link: Path, target: Path, owner: int) -> Path:
    link.symlink_to(target)
    os.lchown(link, owner, owner)
    return link


# -- one status socket, one agent ------------------------------------------------------------------


async def test_a_second_server_on_a_live_socket_refuses_and_the_first_keeps_answering(
    short_dir: Path,
) -> None:
    path = short_dir / "status.sock"
    first = StatusServer(path, lambda: {"agent": "first"}, asyncio.Queue, lambda q: None)
    await first.start()
    try:
        second = StatusServer(path, lambda: {"agent": "second"}, asyncio.Queue, lambda q: None)
        with pytest.raises(AgentError, match=rf"another agent answers on {path}: give this one its own"):
            await second.start()
        await second.close()
        assert await asyncio.to_thread(request_status, path) == {"agent": "first"}
        assert first.bad_requests == 0, "looking whether an agent answers is not a refused request"
    finally:
        await first.close()
    assert not path.exists()


async def test_a_stopping_server_leaves_a_socket_that_is_no_longer_its_own(short_dir: Path) -> None:
    path = short_dir / "status.sock"
    first = StatusServer(path, lambda: {"agent": "first"}, asyncio.Queue, lambda q: None)
    await first.start()
    path.unlink()  # taken away by hand, and another agent started on the path since
    second = StatusServer(path, lambda: {"agent": "second"}, asyncio.Queue, lambda q: None)
    await second.start()
    try:
        await first.close()
        assert await asyncio.to_thread(request_status, path) == {"agent": "second"}
    finally:
        await second.close()
    assert not path.exists()


def test_an_agent_started_on_a_running_agents_socket_exits_and_the_first_stays_reachable(
    tmp_path: Path, short_dir: Path
) -> None:
    shared = short_dir / "status.sock"  # a copied config: own state_dir, the same [status] socket
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(
            write_agent_config(
                tmp_path / name, devices=FAKE_DEVICE, gateway=f"gw-{name}", status_socket=shared
            )
        )
    with running_agent(configs[0]) as first:
        first.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        second = start_agent(configs[1])
        try:
            second.process.wait(20)
        except subprocess.TimeoutExpired:
            second.stop()
            pytest.fail(f"the second agent took over {shared} and ran until stopped")
        finally:
            second.kill()
        assert second.process.returncode == 1, second.log()
        said = [line for line in second.log().splitlines() if line.startswith("edge-agent: ")]
        assert said == [
            f"edge-agent: another agent answers on {shared}: give this one its own [status] socket"
        ]
        assert "Traceback" not in second.log()
        assert first.status()["agent"]["gateway"] == "gw-a"
        assert first.stop() == 0
    assert not shared.exists()


# -- announcements other users could have made -------------------------------------------------------


@as_root
def test_status_ignores_an_agent_announced_in_a_directory_another_user_made(short_dir: Path) -> None:
    os.chmod(short_dir, 0o1777)  # like /tmp: anyone can make /tmp/edge-agent-0 before root does
    theirs = short_dir / "edge-agent-0"
    theirs.mkdir()
    theirs.chmod(0o755)  # whatever the umask
    os.chown(theirs, NOBODY, NOBODY)
    with fake_agent(theirs / "fake.sock", owner=NOBODY) as fake:
        link_as(theirs / "agent-1.sock", fake, NOBODY)
        result = edge_agent("status", runtime=theirs)
    assert "FAKE" not in result.stdout
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no agent answers" in result.stderr


@as_root
def test_status_finds_the_real_agent_beside_links_and_sockets_of_another_user(
    tmp_path: Path, short_dir: Path
) -> None:
    runtime = Path(os.environ["EDGE_AGENT_RUNTIME_DIR"])
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    with (
        running_agent(config) as agent,
        fake_agent(short_dir / "root.sock") as ours,
        fake_agent(short_dir / "theirs.sock", owner=NOBODY) as theirs,
    ):
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        wait_until((runtime / f"agent-{agent.process.pid}.sock").exists, what="the agent's announcement")
        planted = [
            link_as(runtime / f"agent-{os.getpid()}.sock", ours, NOBODY),  # a link root did not make
            link_as(runtime / f"agent-{os.getppid()}.sock", theirs, 0),  # to a socket root does not own
        ]
        try:
            result = edge_agent("status", runtime=runtime)
        finally:
            for link in planted:
                link.unlink()
    assert "FAKE" not in result.stdout
    assert result.returncode == 1, result.stdout + result.stderr  # degraded (no broker), but it answers
    assert "gateway gw-test" in result.stdout


@as_root
def test_status_finds_an_agent_of_the_service_user_in_its_runtime_directory(
    tmp_path: Path, short_dir: Path
) -> None:
    # /run/edge-agent: systemd (root) makes it in /run, which only root may write, for User=edge-agent.
    run = short_dir / "edge-agent"
    run.mkdir()
    run.chmod(0o755)  # whatever the umask
    os.chown(run, NOBODY, NOBODY)
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        os.chown(agent.socket, NOBODY, NOBODY)
        link_as(run / f"agent-{agent.process.pid}.sock", agent.socket, NOBODY)
        result = edge_agent("status", runtime=run)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gateway gw-test" in result.stdout


# -- a user outside the agent's group ----------------------------------------------------------------


@pytest.mark.skipif(not can_run_as_nobody(), reason="needs root, setpriv, and a python user nobody can run")
def test_a_user_outside_the_agents_group_is_told_so_not_that_no_agent_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shipped layout: runtime directory 0755, state directory 0750 of the agent's group.
    base = Path(tempfile.mkdtemp(prefix="sd-"))
    try:
        os.chmod(base, 0o755)
        run = base / "run"
        run.mkdir()
        run.chmod(0o755)  # whatever the umask
        (base / "state").mkdir()  # root's group here: nobody is not in it
        (base / "state").chmod(0o750)  # whatever the umask
        config = write_agent_config(base, devices=FAKE_DEVICE)
        monkeypatch.setenv("EDGE_AGENT_RUNTIME_DIR", str(run))
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
            link = run / f"agent-{agent.process.pid}.sock"
            wait_until(link.exists, what="the agent's announcement")
            assert edge_agent("status", runtime=run).returncode == 1, "root is let in"
            for command in ("status", "tail"):
                result = edge_agent(command, runtime=run, user=NOBODY)
                assert result.returncode == 2, result.stdout + result.stderr
                # The status group, never the agent's own group (it may rewrite the config and
                # read the secrets), though that is the one that could open the socket here.
                assert result.stderr == (
                    f"edge-agent: an agent is announced at {link} but you may not open its socket "
                    f"{agent.socket}: run as root or as a member of edge-agent-status (sudo usermod "
                    "-aG edge-agent-status <user>, then log in again); never add people to the "
                    "agent's group (edge-agent): it can change the agent's config and read its secrets\n"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_announcement_directory_an_agent_makes_is_open_to_every_user_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent run by hand by a root whose umask is 077 made /run/edge-agent 0700: nobody else's
    `status` could find it. One the agent makes is 0755; one that exists (systemd's
    RuntimeDirectory, with its own mode) is left as it is."""
    from water_edge.agent import locate

    made, kept = tmp_path / "made", tmp_path / "kept"
    kept.mkdir()
    kept.chmod(0o750)
    for directory in (made, kept):
        monkeypatch.setenv("EDGE_AGENT_RUNTIME_DIR", str(directory))
        before = os.umask(0o077)
        try:
            announcement = locate.announce(tmp_path / "status.sock")
        finally:
            os.umask(before)
        assert announcement.link is not None
        assert announcement.link.parent == directory
        announcement.close()
    assert stat.S_IMODE(made.stat().st_mode) == 0o755
    assert stat.S_IMODE(kept.stat().st_mode) == 0o750
