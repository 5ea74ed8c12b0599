"""sd_notify and the watchdog, with a fake systemd: a real unix datagram socket as NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import start_agent
from tests.support.broker import Mosquitto
from tests.support.testing import wait_until, write_agent_config
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
    """Every notification that arrives within `for_s` (a window: for what must *not* arrive)."""
    out: list[str] = []
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            out += sock.recv(4096).decode().split("\n")
    return out


def receive_until(
    sock: socket.socket,
    lines: list[str],
    condition: Callable[[list[str]], bool],
    within_s: float = 10.0,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Add arriving notifications to `lines` until `condition(lines)` holds; `log` explains a timeout."""

    def received() -> bool:
        lines.extend(drain(sock, 0.05))
        return condition(lines)

    wait_until(received, within_s, every_s=0, what=lambda: f"notifications so far: {lines}\n{log()}")


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
    config = write_agent_config(tmp_path, broker_port=mosquitto.port)
    agent = start_agent(config)
    try:
        lines: list[str] = []
        receive_until(sock, lines, lambda got: "READY=1" in got, 20, log=agent.log)
        receive_until(
            sock,
            lines,
            lambda got: (
                any(line.startswith("STATUS=buffer ") and "uplink" in line for line in got)
                and got.count("WATCHDOG=1") >= 4
            ),
        )
        agent.process.send_signal(signal.SIGSTOP)  # a hung agent: systemd must see no pings
        drain(sock, 0.2)  # a ping already on its way
        # The stimulus: frozen for five ping intervals, and not one ping in that window.
        assert "WATCHDOG=1" not in drain(sock, 1.5)
        agent.process.send_signal(signal.SIGCONT)
        after: list[str] = []
        receive_until(sock, after, lambda got: "WATCHDOG=1" in got, 5)
        assert agent.stop() == 0
        receive_until(sock, after, lambda got: "STOPPING=1" in got, 5)
    finally:
        agent.process.send_signal(signal.SIGCONT)
        agent.kill()
