"""sd_notify and the watchdog, with a fake systemd: a real unix datagram socket as NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import start_agent, write_config
from tests.support.broker import Mosquitto
from water_edge.agent.watchdog import Notifier, Watchdog, watchdog_interval_s


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    path = os.path.join(tempfile.mkdtemp(prefix="sdn-"), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    yield sock, path
    sock.close()


def drain(sock: socket.socket, for_s: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            out += sock.recv(4096).decode().split("\n")
    return out


def test_pings_only_while_every_part_progresses(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    counters = {"pipeline": 0, "uplink": 0}
    dog = Watchdog(
        Notifier({"NOTIFY_SOCKET": path}),
        {"pipeline": lambda: counters["pipeline"], "uplink": lambda: counters["uplink"]},
        interval_s=1.0,
        status=lambda: "buffer 3 rows, uplink online",
    )
    counters["pipeline"] += 1
    counters["uplink"] += 1
    assert dog.tick()
    counters["pipeline"] += 5  # the uplink is stuck: no ping, whatever the pipeline does
    assert not dog.tick()
    assert dog.stalled == ["uplink"]
    assert not dog.tick()  # nothing moved at all
    assert dog.stalled == ["pipeline", "uplink"]
    counters["pipeline"] += 1
    counters["uplink"] += 1
    assert dog.tick()
    lines = drain(sock, 0.2)
    assert lines.count("WATCHDOG=1") == 2
    assert lines.count("STATUS=buffer 3 rows, uplink online") == 4
    assert (dog.pings, dog.withheld) == (2, 2)


def test_abstract_socket_and_no_socket() -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).send("READY=1")
    name = f"edge-agent-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(1)
    try:
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).send("READY=1")
        assert server.recv(100) == b"READY=1"
    finally:
        server.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval_s({}) is None


def test_the_real_agent_reports_ready_status_and_pings_and_a_frozen_agent_stops(
    notify_socket: tuple[socket.socket, str],
    mosquitto: Mosquitto,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.3 s
    config = write_config(tmp_path, broker_port=mosquitto.port, devices="")
    agent = start_agent(config)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while "READY=1" not in lines and time.monotonic() < deadline:
            lines += drain(sock, 0.1)
        assert "READY=1" in lines, agent.log()
        lines += drain(sock, 2.5)
        assert any(line.startswith("STATUS=buffer ") and "uplink" in line for line in lines)
        assert lines.count("WATCHDOG=1") >= 4
        agent.process.send_signal(signal.SIGSTOP)  # a hung agent: systemd must see no pings
        drain(sock, 0.2)
        assert "WATCHDOG=1" not in drain(sock, 1.5)
        agent.process.send_signal(signal.SIGCONT)
        assert "WATCHDOG=1" in drain(sock, 2.0)
        assert agent.stop() == 0
        assert "STOPPING=1" in drain(sock, 0.5)
    finally:
        agent.process.send_signal(signal.SIGCONT)
        agent.kill()
