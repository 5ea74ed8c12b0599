"""Reading the status is its own group (`[status] group`, `edge-agent-status`), which grants nothing
else: the agent gives its socket that group, a member of it may run `edge-agent status`, and a user
refused is told to join it, never the agent's own group (which may rewrite the managed config and
read the secrets in /etc/edge-agent)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.agent_proc import running_agent
from tests.support.testing import FAKE_DEVICE, NOBODY, can_run_as_nobody, wait_until, write_agent_config
from water_edge.agent.status import StatusServer, closed_to_group, request_status


def _can_act_as_others() -> bool:
    return can_run_as_nobody() and shutil.which("groupadd") is not None


as_root = pytest.mark.skipif(
    not _can_act_as_others(), reason="needs root, groupadd, setpriv and a python user nobody can run"
)


@pytest.fixture
def status_group() -> Iterator[tuple[str, int]]:
    """A system group made for the test (name, gid), removed after it."""
    name = f"est-{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        import grp

        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def layout() -> Iterator[Path]:
    """The shipped layout under /tmp (pytest's own temporary root is 0700): a runtime directory
    0755 for the socket and the announcements, a state directory 0750 of the agent's group."""
    base = Path(tempfile.mkdtemp(prefix="sg-"))
    os.chmod(base, 0o755)
    (base / "run").mkdir()
    (base / "run").chmod(0o755)  # whatever the umask
    (base / "state").mkdir()  # root's group here: the test's users are not in it
    (base / "state").chmod(0o750)  # whatever the umask
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _config(base: Path, socket: Path, group: str) -> Path:
    config = write_agent_config(base, devices=FAKE_DEVICE, status_socket=socket)
    text = config.read_text()
    config.write_text(text.replace("[status]\n", f'[status]\ngroup = "{group}"\n', 1))
    return config


def edge_agent(command: str, runtime: Path, *ids: str) -> subprocess.CompletedProcess[str]:
    """`edge-agent COMMAND` as a technician types it (no config), as user nobody with `ids`."""
    env = dict(os.environ, EDGE_AGENT_RUNTIME_DIR=str(runtime), EDGE_AGENT_CONFIG="/nonexistent/agent.toml")
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", *ids, sys.executable, "-m", "water_edge.agent.cli", command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def refused(link: Path, socket: Path, group: str) -> str:
    return (
        f"edge-agent: an agent is announced at {link} but you may not open its socket {socket}: "
        f"run as root or as a member of {group} (sudo usermod -aG {group} <user>, then log in again); "
        "never add people to the agent's group (root): it can change the agent's config and read its "
        "secrets\n"
    )


@as_root
def test_a_member_of_the_status_group_reads_the_status_and_a_stranger_is_told_to_join_it(
    layout: Path, status_group: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, gid = status_group
    run = layout / "run"
    monkeypatch.setenv("EDGE_AGENT_RUNTIME_DIR", str(run))
    config = _config(layout, run / "status.sock", name)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        link = run / f"agent-{agent.process.pid}.sock"
        wait_until(link.exists, what="the agent's announcement")
        info = agent.socket.stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o660)
        member = edge_agent("status", run, f"--regid={NOBODY}", f"--groups={gid}")
        assert member.returncode == 1, member.stdout + member.stderr  # degraded (no broker), but read
        assert "gateway gw-test" in member.stdout
        for command in ("status", "tail"):
            stranger = edge_agent(command, run, f"--regid={NOBODY}", "--clear-groups")
            assert stranger.returncode == 2, stranger.stdout + stranger.stderr
            assert stranger.stderr == refused(link, agent.socket, name)
        # The status group opens nothing else: not the state directory, nor the outbox in it.
        peek = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                f"--groups={gid}",
                "ls",
                str(layout / "state"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert peek.returncode != 0
        assert "Permission denied" in peek.stderr
        assert "status.group" not in agent.log(), agent.log()
        assert agent.stop() == 0


@as_root
def test_a_socket_in_the_state_directory_is_logged_as_out_of_the_groups_reach(
    layout: Path, status_group: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An upgraded gateway whose config still has the socket in the 0750 state directory: the
    # group is given, its members still cannot reach it, and the agent says how to fix that.
    name, gid = status_group
    run = layout / "run"
    monkeypatch.setenv("EDGE_AGENT_RUNTIME_DIR", str(run))
    config = _config(layout, layout / "state" / "status.sock", name)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up")
        link = run / f"agent-{agent.process.pid}.sock"
        wait_until(link.exists, what="the agent's announcement")
        assert agent.socket.stat().st_gid == gid
        member = edge_agent("status", run, f"--regid={NOBODY}", f"--groups={gid}")
        assert member.returncode == 2, member.stdout + member.stderr
        # It cannot look at the socket: it is told the default group and never the agent's.
        assert "member of edge-agent-status (sudo usermod -aG edge-agent-status <user>" in member.stderr
        assert "status.group_cannot_reach" in agent.log()
        assert str(layout / "state") in agent.log()
        assert "[status] socket" in agent.log()


def test_closed_to_group_does_the_permission_arithmetic() -> None:
    base = Path(tempfile.mkdtemp(prefix="sg-"))  # under /tmp (1777): pytest's own root is 0700
    try:
        inner = base / "inner"
        inner.mkdir()
        mine = base.stat().st_gid
        other = mine + 4242  # a group neither directory has
        base.chmod(0o755)
        inner.chmod(0o755)
        assert closed_to_group(inner, other) is None
        base.chmod(0o750)  # the state directory: closed to everyone outside its group
        assert closed_to_group(inner, other) == base
        assert closed_to_group(inner, mine) is None
        base.chmod(0o751)
        assert closed_to_group(inner, other) is None
        # In the directory's group the group bits decide, whatever the others' allow.
        base.chmod(0o701)
        assert closed_to_group(inner, mine) == base
        base.chmod(0o710)
        assert closed_to_group(inner, mine) is None
        assert closed_to_group(inner, other) == base
    finally:
        base.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


async def test_without_the_group_the_socket_keeps_the_process_group_quietly() -> None:
    path = Path(tempfile.mkdtemp(prefix="sg-")) / "status.sock"
    server = StatusServer(
        path, lambda: {"agent": "ok"}, asyncio.Queue, lambda q: None, group="no-such-group-edge"
    )
    try:
        with capture_logs() as logs:
            await server.start()
        assert path.stat().st_gid == os.getegid()
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert [entry["log_level"] for entry in logs] == ["debug"]
        assert await asyncio.to_thread(request_status, path) == {"agent": "ok"}
    finally:
        await server.close()
        shutil.rmtree(path.parent, ignore_errors=True)


async def test_a_group_the_agent_may_not_give_is_one_warning_and_the_agent_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grp

    group = grp.getgrgid(os.getegid()).gr_name  # exists; the chown is refused as for a non-member

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("water_edge.agent.status.os.chown", refuse)
    path = Path(tempfile.mkdtemp(prefix="sg-")) / "status.sock"
    server = StatusServer(path, lambda: {"agent": "ok"}, asyncio.Queue, lambda q: None, group=group)
    try:
        with capture_logs() as logs:
            await server.start()
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1, logs
        assert warnings[0]["event"] == "status.group_not_given"
        assert warnings[0]["group"] == group
        assert f"usermod -aG {group}" in warnings[0]["fix"]
        assert await asyncio.to_thread(request_status, path) == {"agent": "ok"}
    finally:
        await server.close()
        shutil.rmtree(path.parent, ignore_errors=True)
