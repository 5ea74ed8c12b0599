"""Runs the real `edge-agent run` as a subprocess against a test broker and plant.

config = write_agent_config(tmp_path, broker_port=broker.port, devices=demo_devices(plant.port))
with running_agent(config) as agent:
    agent.wait_status(lambda s: s["uplink"]["state"] == "online")   # over its status socket
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, wait_until, write_agent_config
from water_edge.agent.status import AgentNotRunningError, request_status

if TYPE_CHECKING:
    from tests.support.cli import CliRun
    from water_edge.agent.config import Config


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
        """The first status (asked every 0.1 s) that satisfies `predicate`; fails early if the agent exits."""
        last: dict[str, Any] = {}

        def matching() -> dict[str, Any] | None:
            nonlocal last
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            try:
                last = self.status()
            except AgentNotRunningError:
                return None
            return last if predicate(last) else None

        return wait_until(
            matching, timeout, every_s=0.1, what=lambda: f"agent status; last: {last}\n{self.log()}"
        )

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


def start_agent(config: Path, loaded: Config | None = None) -> AgentProcess:
    """Start `edge-agent run -c config`; `loaded` is the config already loaded (a caller timing the
    agent's start loads it first, so that its own parsing is not counted)."""
    from water_edge.agent.config import load_config

    loaded = loaded or load_config(config)
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


def status_once_the_host_is_seen(config: Path, socket: Path) -> tuple[dict[str, Any], CliRun]:
    """Run the agent until its first look at the board (`host` in its status); that status
    document and what `edge-agent status --socket` printed then. The agent stopped cleanly."""
    from tests.support.cli import edge_agent

    with running_agent(config) as agent:
        snap = agent.wait_status(lambda s: s.get("host") is not None, timeout=30)
        shown = edge_agent("status", "--socket", str(socket))
        assert agent.stop() == 0
        assert "Traceback" not in agent.log()
    return snap, shown


def write_config(
    directory: Path,
    *,
    broker_port: int,
    devices: str,
    site: str = AGENT_SITE,
    gateway: str = AGENT_GATEWAY,
    extra: str = "",
    reconnect_max_s: float = 1.0,
) -> Path:
    """A whole agent config for an agent process: `write_agent_config` with the options the
    process-level tests use most (a Modbus/M-Bus device list and a quick reconnect)."""
    return write_agent_config(
        directory,
        broker_port=broker_port,
        devices=devices,
        site=site,
        gateway=gateway,
        uplink={"reconnect_max_s": reconnect_max_s},
        extra=extra,
    )
