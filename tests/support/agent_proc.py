"""Runs the real `edge-agent run` as a subprocess against a test broker and plant.

cfg = write_config(tmp, broker_port=broker.port, devices=demo_devices(plant.port))
with running_agent(cfg) as agent:
    agent.status()          # asks it over its status socket, like `edge-agent status`
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from water_edge.agent.status import AgentNotRunningError, request_status

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "deploy" / "demo.toml"


def demo_devices(plant_port: int) -> str:
    """The `[[devices]]` sections of the shipped demo config, pointed at a test plant."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    devices = text[text.index("[[devices]]") :]
    return re.sub(r"^port = 5020\b", f"port = {plant_port}", devices, flags=re.M)


def write_config(
    directory: Path,
    *,
    broker_port: int,
    devices: str,
    site: str = "test-site",
    gateway: str = "gw-test",
    extra: str = "",
    reconnect_max_s: float = 1.0,
) -> Path:
    state = directory / "state"
    # unix socket paths must stay under ~107 bytes; pytest's temporary paths can be longer
    socket_dir = Path(tempfile.mkdtemp(prefix="ea-"))
    text = f"""schema_version = 1

[gateway]
site = "{site}"
id = "{gateway}"
state_dir = "{state}"

[uplink]
host = "127.0.0.1"
port = {broker_port}
reconnect_min_s = 0.1
reconnect_max_s = {reconnect_max_s}

[status]
socket = "{socket_dir / "status.sock"}"

[buffer]
flush_interval_ms = 100

{extra}

{devices}
"""
    path = directory / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    config: Path
    socket: Path
    outbox: Path
    log_path: Path

    def status(self) -> dict[str, Any]:
        return request_status(self.socket)

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            try:
                last = self.status()
                if predicate(last):
                    return last
            except AgentNotRunningError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent status never matched; last: {last}\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(
                    f"agent did not stop within {timeout} s; its log:\n{self.log()}"
                ) from exc
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_agent(config: Path) -> AgentProcess:
    from water_edge.agent.config import load_config

    loaded = load_config(config)
    log_path = config.with_suffix(".log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "water_edge.agent.cli", "run", "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return AgentProcess(process, config, loaded.status_socket, loaded.buffer_path, log_path)


@contextmanager
def running_agent(config: Path) -> Iterator[AgentProcess]:
    agent = start_agent(config)
    try:
        yield agent
    finally:
        agent.kill()


def skip_unless_soak(config: Any) -> None:
    """Soak tests run only when selected with `-m soak` (`make soak`), never in the default run."""
    import pytest

    expr = str(config.getoption("markexpr") or "")
    if "soak" not in expr or "not soak" in expr:
        pytest.skip("soak run: select it with -m soak (make soak)")
