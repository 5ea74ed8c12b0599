"""`edge-agent` from a field technician's seat: a state directory that is not theirs, a full disk
under stdout, file names that are not UTF-8, an output file they may not write, an agent that was
killed or is hung, `--json` with a config that is missing. Each is one line (or `{"error": ...}`
with `--json`), a documented exit code, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.cli import CliRun, edge_agent
from tests.support.testing import FAKE_DEVICE, NOBODY, can_run_as_nobody, write_agent_config
from water_edge.agent import status as status_module

REPO = Path(__file__).resolve().parent.parent
MBUS_HEX = (REPO / "tests/data/mbus/itron_acw_cold_water.hex").read_text().strip()
as_nobody = pytest.mark.skipif(
    not can_run_as_nobody(), reason="needs root, setpriv, and a python user nobody can run"
)
CLOSED_HINT = "run as root or as the agent's user"

STATUS_DOC: dict[str, Any] = {
    "agent": {"lines": ["9.9.9  site S  gateway G  pid 1  up 1 s"]},
    "verdict": {"state": "ok", "problems": []},
    "uplink": {"lines": ["online"]},
    "pipeline": {"lines": []},
    "buffer": {"lines": []},
    "processors": [],
    "alarms": [],
    "drivers": [],
}
READING = {"source": "plc", "tag": "level", "ts": 1_700_000_000_000_000_000, "value": 1.5,
           "quality": "good", "unit": "m"}  # fmt: skip


def run_cli(
    *args: str,
    user: int | None = None,
    stdout: Any = subprocess.PIPE,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as `user` (setpriv) when given."""
    as_user = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return subprocess.run(
        [*as_user, sys.executable, "-m", "water_edge.agent.cli", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        errors="backslashreplace",
        timeout=timeout,
        check=False,
        env=env or dict(os.environ, EDGE_AGENT_CONFIG="/nonexistent/agent.toml"),
        cwd="/",
    )


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A world-searchable directory with a short path (unix sockets; another user's view)."""
    path = Path(tempfile.mkdtemp(prefix="rb-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- T1: a state directory this user may not look into -----------------------------------------------


def closed_state_config(base: Path, **kwargs: Any) -> Path:
    """A valid config readable by anyone whose state directory (0750, root's) nobody may enter."""
    config = write_agent_config(base, devices=FAKE_DEVICE, **kwargs)
    state = base / "state"
    state.mkdir()
    state.chmod(0o750)  # whatever the umask
    (state / "outbox.sqlite").touch()
    os.chmod(config, 0o644)
    return config


@as_nobody
def test_check_config_warns_of_the_state_files_it_may_not_look_at_and_checks_the_rest(
    short_dir: Path,
) -> None:
    config = closed_state_config(short_dir)
    result = run_cli("check-config", "-c", str(config), user=NOBODY)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith(f"{config}: OK ("), result.stdout
    warning = next(line for line in result.stderr.splitlines() if "not checked" in line)
    assert "buffer.path" in warning, warning
    assert str(short_dir / "state") in warning, warning
    assert f"{CLOSED_HINT} to check them" in warning, warning

    # The rest is still checked: a mistake elsewhere is found as before.
    config.write_text(config.read_text().replace("[buffer]", "[buffer]\nno_such_key = 1"))
    broken = run_cli("check-config", "-c", str(config), user=NOBODY)
    assert broken.returncode == 2, broken.stderr
    assert "buffer.no_such_key: unknown key" in broken.stderr
    assert "Traceback" not in broken.stderr


@as_nobody
def test_commands_on_a_closed_state_directory_say_who_may_in_one_line(short_dir: Path) -> None:
    config = closed_state_config(short_dir)
    for command in (
        ["buffer", "stats"],
        ["probe"],
        ["update", "status"],
        ["update", "min-version"],
        ["provision", "status"],
        ["run"],
    ):
        result = run_cli(*command, "-c", str(config), user=NOBODY, timeout=30)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == "", command
        line = one_line(result.stderr)
        assert str(short_dir / "state") in line, (command, line)
        assert CLOSED_HINT in line, (command, line)

    result = run_cli("buffer", "stats", "--json", "-c", str(config), user=NOBODY)
    assert result.returncode == 2
    assert CLOSED_HINT in json.loads(result.stdout)["error"]


@as_nobody
def test_calibrating_a_pump_in_a_closed_state_directory_says_who_may(short_dir: Path) -> None:
    models = '[[models.pump]]\nname = "p1"\n[models.pump.signals]\nflow = "fake-plc/level"\n'
    config = closed_state_config(short_dir, models=models)
    (short_dir / "state" / "pump" / "p1").mkdir(parents=True)
    result = run_cli(
        "models", "calibrate", "pump", "--pump", "p1", "--from", "2024-01-01", "--to", "2024-01-03",
        "-c", str(config), user=NOBODY,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert str(short_dir / "state" / "pump" / "p1") in line, line
    assert CLOSED_HINT in line, line


# -- T2: stdout on a full disk ------------------------------------------------------------------------


class _FakeAgent(socketserver.StreamRequestHandler):
    """Answers `status` with a document and `tail` with a few readings, as an agent would."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if not line:
            return
        self.server.requests.append(json.loads(line)["cmd"])  # type: ignore[attr-defined]
        if json.loads(line)["cmd"] == "status":
            self.wfile.write(json.dumps(STATUS_DOC).encode() + b"\n")
            return
        delay = self.server.first_reading_after_s  # type: ignore[attr-defined]
        if delay:
            threading.Event().wait(delay)
        for _ in range(3):
            self.wfile.write(json.dumps(READING).encode() + b"\n")


@contextmanager
def fake_agent(path: Path, first_reading_after_s: float = 0.0) -> Iterator[list[str]]:
    """An agent's status socket at `path`; yields the requests it was sent, in order."""
    server = socketserver.ThreadingUnixStreamServer(str(path), _FakeAgent)
    server.requests = []  # type: ignore[attr-defined]
    server.first_reading_after_s = first_reading_after_s  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_a_full_disk_under_stdout_is_one_line_and_exit_1(
    short_dir: Path, tmp_path: Path, unbuffered: bool
) -> None:
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["EDGE_AGENT_CONFIG"] = "/nonexistent/agent.toml"
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    sock = short_dir / "agent.sock"
    with fake_agent(sock), open("/dev/full", "w") as full:
        for command in (
            ["status", "--socket", str(sock)],
            ["status", "--json", "--socket", str(sock)],
            ["tail", "--socket", str(sock)],
            ["check-config", "-c", str(config)],
            ["decode", "mbus", MBUS_HEX],
        ):
            result = run_cli(*command, stdout=full, env=env)
            assert result.returncode == 1, (command, result.stderr)
            assert result.stderr == "edge-agent: cannot write the output: No space left on device\n", (
                command,
                result.stderr,
            )


# -- T4: file names that are not UTF-8 ---------------------------------------------------------------


def test_a_latin1_outbox_name_is_escaped_in_json_and_the_file_is_read(tmp_path: Path) -> None:
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/x\xfc.sqlite")
    result = edge_agent("buffer", "stats", "--json", "--db", missing)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout.encode("utf-8")) == {
        "error": f"outbox {tmp_path}/x\\xfc.sqlite: no such file"
    }

    from water_edge.buffer.outbox import Outbox

    there = os.fsencode(tmp_path) + b"/ob\xfc.sqlite"
    with Outbox(Path(os.fsdecode(there)), max_bytes=1 << 20):
        pass
    result = edge_agent("buffer", "stats", "--json", "--db", os.fsdecode(there))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 0


def test_a_latin1_socket_name_is_escaped_in_the_json_error(tmp_path: Path) -> None:
    nope = os.fsdecode(os.fsencode(tmp_path) + b"/nope\xfc.sock")
    result = edge_agent("status", "--json", "--socket", nope)
    assert result.returncode == 2
    doc = json.loads(result.stdout.encode("utf-8"))
    assert f"{tmp_path}/nope\\xfc.sock" in doc["error"]
    assert doc["verdict"]["state"] == "down"
    assert "\\xfc" in one_line(result.stderr)


def test_a_latin1_wav_name_is_scored_and_calibrated_with_the_name_escaped(tmp_path: Path) -> None:
    # The leak commands write the names into their JSON lines: orjson refused the surrogate escapes
    # Python holds such a name in, and the command died with a TypeError.
    path = os.fsencode(tmp_path) + b"/nacht\xfc.wav"
    rng = np.random.default_rng(0)
    with wave.open(os.fsdecode(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes((rng.normal(0, 300, 8000 * 12)).astype("<i2").tobytes())
    result = edge_agent("models", "score", "leak", os.fsdecode(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["file"] == f"{tmp_path}/nacht\\xfc.wav"
    baseline = tmp_path / "b.json"
    result = edge_agent("models", "calibrate", "leak", os.fsdecode(path), "--out", str(baseline))
    assert result.returncode == 0, result.stderr
    assert json.loads(baseline.read_text())["nights"] == ["nacht\\xfc.wav"]


# -- T5: an output file this user may not write ------------------------------------------------------


def test_keygen_into_a_file_where_a_directory_belongs_names_the_target(tmp_path: Path) -> None:
    (tmp_path / "afile").touch()
    target = tmp_path / "afile" / "k.pem"
    result = edge_agent("release", "keygen", "--name", "x", "--out", str(target))
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == f"edge-agent release: cannot write {target}: Not a directory"
    assert result.stdout == ""


@as_nobody
@pytest.mark.parametrize(
    ("command", "code"),
    [(["release", "keygen", "--name", "x"], 2), (["ca", "operator-key"], 1)],
    ids=["release-keygen", "ca-operator-key"],
)
def test_a_key_into_a_directory_this_user_may_not_write_names_the_target(
    short_dir: Path, command: list[str], code: int
) -> None:
    target = short_dir / "k.pem"  # root's directory, 0755
    result = run_cli(*command, "--out", str(target), user=NOBODY)
    assert result.returncode == code, result.stderr
    line = one_line(result.stderr)
    assert f"{target}: Permission denied" in line, line
    assert ".tmp" not in line, line
    assert not target.exists()


# -- M1: the announcement of an agent that was killed ------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "0"])
    child.wait()
    return child.pid


@as_nobody
def test_an_announcement_left_by_a_killed_agent_is_none_running_for_anyone(short_dir: Path) -> None:
    run = short_dir / "run"
    run.mkdir()
    run.chmod(0o755)  # whatever the umask
    state = short_dir / "state"
    state.mkdir()  # root's: nobody may not look into it
    state.chmod(0o750)  # whatever the umask
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(state / "status.sock"))  # what a killed agent leaves: a socket nobody listens on
    left.close()
    env = dict(os.environ, EDGE_AGENT_RUNTIME_DIR=str(run), EDGE_AGENT_CONFIG="/nonexistent/agent.toml")

    link = run / f"agent-{dead_pid()}.sock"
    link.symlink_to(state / "status.sock")
    for user in (None, NOBODY):
        result = run_cli("status", user=user, env=env)
        assert result.returncode == 2, result.stderr
        line = one_line(result.stderr)
        assert "(none running)" in line, (user, line)
        assert "may not open" not in line, (user, line)

    # One whose process runs (as root) is still told as one this user may not open.
    with subprocess.Popen(["sleep", "30"]) as alive:
        try:
            link.rename(run / f"agent-{alive.pid}.sock")
            result = run_cli("status", user=NOBODY, env=env)
        finally:
            alive.kill()
    assert result.returncode == 2
    assert "you may not open its socket" in one_line(result.stderr)


# -- M2: tail and an agent that does not answer ------------------------------------------------------


def test_tail_on_a_hung_agent_says_so_as_status_does(short_dir: Path) -> None:
    hung = short_dir / "hung.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(hung))
    listener.listen(8)  # connections are taken into the backlog, never answered: a stopped agent
    try:
        result = run_cli("tail", "--socket", str(hung), timeout=60)
    finally:
        listener.close()
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == (
        f"edge-agent: the agent on {hung} did not answer within 5 s (busy or hung?)"
    )


def test_tail_keeps_waiting_on_a_quiet_agent_that_answers(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_module, "TAIL_QUIET_S", 0.2)
    sock = short_dir / "agent.sock"
    with fake_agent(sock, first_reading_after_s=1.0) as requests:
        result = edge_agent("tail", "--socket", str(sock))
    assert result.stdout.count("plc/level = 1.5 m") == 3, result.stdout + result.stderr
    assert "closed the connection" in result.stderr  # the fake ends the stream: not hung
    assert "did not answer" not in result.stderr
    assert requests[0] == "status"
    assert "tail" in requests
    assert requests.count("status") >= 3, requests  # asked again while no reading came


# -- M4: --json when the config names no outbox ------------------------------------------------------


def test_buffer_stats_json_with_a_missing_config_answers_with_an_error_object() -> None:
    result: CliRun = edge_agent("buffer", "stats", "--json", "-c", "/nonexistent/agent.toml")
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "error": "invalid configuration: /nonexistent/agent.toml: cannot read the config file: "
        "No such file or directory"
    }
    assert result.stderr.startswith("invalid configuration:")
