"""`make demo` as the README tells a newcomer to run it: the tour starts, every simulated part is
read, `edge-agent status` (without -c) and `edge-agent tail --tag 'pump1.*'` talk to the running
demo, and the stop is clean every time: the agent drains first (empty outbox), publishes
`agent_stopped`, and its retained status ends `offline`/`stopped` before the broker goes.

The default run keeps to about 40 s of demo; the whole scripted night (leak, pump fault, RTU drop)
is the soak run (`make soak`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Received, Subscriber
from tests.support.signals import ctrl_c_delivered
from tests.support.testing import skip_unless_soak, wait_until
from water_edge.buffer.stats import read_stats

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOPIC = "water/demo-plant/gw-01"
DEVICES = ("pump-station", "outlet-rtu", "pumps-ua", "house-meters", "flat-meters", "hydrophones")


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    out: Path
    dir: Path
    env: dict[str, str]

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def run_dir(self) -> Path:
        found = re.search(r"files in (\S+)", self.text())
        assert found, self.text()
        return Path(found.group(1))

    def broker_port(self) -> int:
        """The demo's Mosquitto (started and listening before the agent)."""
        found = re.search(
            r"^listener (\d+) 127\.0\.0\.1$", (self.run_dir() / "mosquitto.conf").read_text(), re.M
        )
        assert found, self.text()
        return int(found.group(1))

    def wait_for(self, pattern: str, within_s: float) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            if self.process.poll() is not None and not re.search(pattern, self.text(), re.M):
                raise AssertionError(f"the demo exited with {self.process.returncode}:\n{self.text()}")
            return re.search(pattern, self.text(), re.M)

        return wait_until(
            seen, within_s, lambda: f"{pattern!r} in the demo's output:\n{self.text()}", every_s=0.2
        )


@contextmanager
def make_demo(tmp_path: Path, seconds: int | None) -> Iterator[Demo]:
    """`DEMO_SECONDS=N make demo`, output to a file (not a terminal: plain lines)."""
    env = {
        **os.environ,
        "DEMO_DIR": str(tmp_path),
        "EDGE_AGENT_RUNTIME_DIR": str(tmp_path / "runtime"),  # only this demo's agent is announced
        "VENV": str(BIN.parent),
    }
    env.pop("DEMO_SECONDS", None)
    if seconds is not None:
        env["DEMO_SECONDS"] = str(seconds)
    (tmp_path / "runtime").mkdir()
    out = tmp_path / "demo.out"
    # A test run started as a background job inherits SIGINT ignored, and so would make (and the
    # demo under it), which then never sees the Ctrl-C a user's terminal delivers.
    with ctrl_c_delivered(), out.open("wb") as sink:
        process = subprocess.Popen(
            ["make", "-s", "demo", f"VENV={BIN.parent}"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    demo = Demo(process, out, tmp_path, env)
    try:
        yield demo
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def stopped_cleanly(demo: Demo, got: list[Received]) -> None:
    """What the README promises of every stop, checked at the broker and in the state dir."""
    assert "clean stop: outbox 0 rows, agent_stopped received, retained status offline/stopped" in demo.text()
    events = [e for m in got if m.topic == f"{TOPIC}/events" for e in m.json()["events"]]
    assert "agent_stopped" in [e["kind"] for e in events]
    presence = [m.json() for m in got if m.topic == f"{TOPIC}/status"]
    assert (presence[-1]["state"], presence[-1].get("reason")) == ("offline", "stopped")
    assert read_stats(demo.run_dir() / "state" / "outbox.sqlite").rows == 0
    # The OPC UA server's key and the simulator's pseudo-terminal links are not left behind.
    assert not list(demo.run_dir().glob("sim/**/*.pem"))


def said_stopped(messages: list[Received]) -> bool:
    return any(m.topic == f"{TOPIC}/status" and m.json().get("reason") == "stopped" for m in messages)


def subscribe(demo: Demo) -> Subscriber:
    demo.wait_for(r"^demo: 4/5 agent", 90)
    return Subscriber("127.0.0.1", demo.broker_port(), f"{TOPIC}/#")


# A guard against a hang, not a speed limit: ~45-60 s here, beside another worker's file.
@pytest.mark.timeout(300)
def test_demo_with_demo_seconds_shows_every_part_and_stops_cleanly(tmp_path: Path) -> None:
    with make_demo(tmp_path, seconds=40) as demo:
        # The first line comes at once; the live view within seconds.
        demo.wait_for(r"^demo: starting the tour", 10)
        demo.wait_for(r"^demo: 5/5 live view", 90)
        with subscribe(demo) as sub:
            demo.wait_for(rf"uplink online\s+127\.0\.0\.1:{demo.broker_port()}\s", 40)
            for device, kind in zip(
                DEVICES, ("modbus_tcp", "modbus_rtu", "opcua", "mbus", "wmbus", "audio"), strict=True
            ):
                demo.wait_for(rf"^t\+\S+\s+{device}\s+{kind}\s+up\s+[1-9]\d* good", 40)
            demo.wait_for(r"EVENT  meter_alarm\s+flat2\s+alarm\s+tamper start", 45)

            # The README: `edge-agent status` without -c finds the demo's agent.
            def status() -> subprocess.CompletedProcess[str] | None:
                done = subprocess.run(
                    [BIN / "edge-agent", "status"],
                    env=demo.env,
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                return done if done.returncode == 0 else None

            shown = wait_until(status, 20, "edge-agent status exit 0 (ok)", every_s=1.0)
            assert f"127.0.0.1:{demo.broker_port()}" in shown.stdout
            for device in DEVICES:
                assert device in shown.stdout

            # The README: `edge-agent tail --tag 'pump1.*'` prints pump 1's readings, for people.
            tail = subprocess.Popen(
                [BIN / "edge-agent", "tail", "--tag", "pump1.*"],
                env=demo.env,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert tail.stdout is not None
            lines = [tail.stdout.readline() for _ in range(4)]
            tail.terminate()
            tail.wait(10)
            assert all("pump1." in line for line in lines), lines
            flow = next(line for line in lines if "pump1.flow" in line)
            assert re.search(r"\d\d:\d\d:\d\d\.\d{3}", flow), flow  # local time, not nanoseconds
            # float32 precision, not 15 digits
            assert re.search(r"pump1\.flow\s.*\b\d+\.\d{1,7}\b", flow), flow

            assert demo.process.wait(120) == 0, demo.text()
            got = sub.wait_until(said_stopped, timeout=5)
        stopped_cleanly(demo, got)


def test_a_demo_that_cannot_run_says_so_and_exits_1(tmp_path: Path) -> None:
    """A CI job or a script running the demo must not take a tour that never started for a pass."""
    fake = tmp_path / "venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "edge-sim").write_text("#!/bin/sh\necho 'edge-sim: cannot start' >&2\nexit 3\n")
    (fake / "edge-sim").chmod(0o755)
    for tool in ("python", "edge-agent"):
        (fake / tool).symlink_to(BIN / tool)
    env = {**os.environ, "DEMO_DIR": str(tmp_path), "VENV": str(fake.parent), "DEMO_SECONDS": "30"}
    done = subprocess.run(
        [sys.executable, "scripts/demo.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "demo: cannot run:" in done.stdout, done.stdout
    assert done.returncode == 1, done.stdout


def test_sigint_to_make_stops_the_demo_cleanly(tmp_path: Path) -> None:
    """`make` does not pass SIGINT on (it waits for its children): the demo notices and stops."""
    with make_demo(tmp_path, seconds=None) as demo:
        with subscribe(demo) as sub:
            # Running: the pump station's readings reach the broker (seen at once, not at the view's
            # next 10 s table).
            sub.wait_until(lambda got: any(m.topic == f"{TOPIC}/pump-station" for m in got), 40)
            demo.process.send_signal(signal.SIGINT)
            assert demo.process.wait(60) in (0, 130, -signal.SIGINT, 2), demo.text()
            got = sub.wait_until(said_stopped, timeout=5)
        stopped_cleanly(demo, got)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_the_scripted_night_raises_every_event(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The tour's promises: a located leak, a pump fault, a tampered meter, an RTU line that drops
    and comes back, all within the first minutes (deploy/scenarios/demo-tour.toml)."""
    skip_unless_soak(request.config)
    with make_demo(tmp_path, seconds=220) as demo:
        demo.wait_for(r"^demo: 5/5 live view", 90)
        with subscribe(demo) as sub:
            assert demo.process.wait(400) == 0, demo.text()
            got = sub.wait_until(said_stopped, timeout=5)
        events: list[dict[str, Any]] = [
            e for m in got if m.topic == f"{TOPIC}/events" for e in m.json()["events"]
        ]
        kinds = {(e["kind"], e["source"]) for e in events}
        assert ("leak_warning", "hydrophones.A") in kinds
        leak = next(
            e for e in events if e["kind"] in ("leak_warning", "leak") and e["detail"].get("position")
        )
        assert abs(leak["detail"]["position"]["position_m"] - 35.0) < 10.0
        assert ("pump_anomaly", "pump1") in kinds
        assert ("driver_down", "outlet-rtu") in kinds
        assert ("driver_up", "outlet-rtu") in kinds
        assert {e["detail"]["state"] for e in events if e["kind"] == "meter_alarm"} == {"start", "clear"}
        stopped_cleanly(demo, got)
