"""`make demo`: the product's tour on one machine.

It starts a local Mosquitto, the firmware-sim plant with every part it serves (Modbus TCP and RTU,
OPC UA, M-Bus, wireless M-Bus, hydrophones) playing the `deploy/scenarios/demo-tour.toml` night,
and `edge-agent run` reading all of them with the pump and leak models live; then shows what the
centre receives (scripts/demo_view.py) until Ctrl-C, SIGINT/SIGTERM, or DEMO_SECONDS.

What is compressed, so that a pump fault and a leak happen within minutes (README, "The demo"):
- the plant runs five times faster than real time (the scenario's `speed`); audio is real time;
- the pump model calibrates on the first 90 s of running (`auto_hours`) instead of a day;
- the leak model's per-hydrophone baseline is learned at start from simulated quiet nights
  (`edge-sim hydrophones` + `edge-agent models calibrate leak`, the project's own commands), and the
  night window is the next 40 minutes with one-minute checks instead of 02:00-04:00 in 30-minute ones.

The stop is ordered: the agent gets SIGTERM first and drains its outbox (it publishes
`agent_stopped` and its retained status goes `offline`/`stopped`), then the simulator and the broker
stop. `make` forwards SIGTERM to its child but not SIGINT (it waits for its children instead), so
the demo also watches whether its parent `make` has taken SIGINT (its handler resets the signal to
the default disposition, visible in /proc) and stops as if it had received it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_view import LiveView  # noqa: E402

BIN = Path(os.environ.get("VENV", ROOT / ".venv")) / "bin"
# A Unix socket's path holds 107 bytes on Linux (the agent's check-config refuses longer).
MAX_SOCKET_PATH_BYTES = 107
SCENARIO = ROOT / "deploy" / "scenarios" / "demo-tour.toml"
SITE, GATEWAY = "demo-plant", "gw-01"
TOPIC = f"water/{SITE}/{GATEWAY}"
SPEED = 5
PORT_ATTEMPTS = 3  # firmware-sim started again on other ports when one was taken meanwhile
PUMP_CALIBRATION_S = 90
PR_SET_PDEATHSIG = 1
DEVICES = [  # name, kind, the tags shown in the live view
    ("pump-station", "modbus_tcp", ["pump1.flow", "pump1.vibration_x", "station.tank_level"]),
    ("outlet-rtu", "modbus_rtu", ["meter.flow", "meter.total"]),
    ("pumps-ua", "opcua", ["pump1.discharge_pressure", "pump2.flow"]),
    ("house-meters", "mbus", ["m1.volume", "m2.volume"]),
    ("flat-meters", "wmbus", ["flat2.volume", "flat4.volume"]),
    ("hydrophones", "audio", ["A.rms_dbfs", "B.rms_dbfs"]),
]


def say(text: str) -> None:
    # The terminal may be gone (a closed tmux pane, a dropped ssh session): the stop must go on.
    with contextlib.suppress(OSError):
        print(f"demo: {text}", flush=True)


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def parent_took_sigint(ppid: int, caught_at_start: bool) -> bool:
    """True once `make` (our parent) has run its SIGINT handler, which resets SIGINT to default."""
    if not caught_at_start:
        return False
    try:
        status = Path(f"/proc/{ppid}/status").read_text()
    except OSError:
        return True  # the parent is gone
    return not _sigint_caught(status)


def _sigint_caught(status: str) -> bool:
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def parent_is_make() -> tuple[int, bool]:
    """The `make` this demo runs under (through shells that did not exec), if any."""
    pid = os.getppid()
    for _ in range(4):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return pid, False
        if comm in ("make", "gmake"):
            return pid, _sigint_caught(status)
        if comm not in ("sh", "bash", "dash"):
            return pid, False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return pid, False


def _die_with_the_demo() -> None:
    """In each child: SIGTERM when the demo itself dies (killed, its terminal closed), so nothing it
    started outlives it; the agent still drains on that SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Demo:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.run = Path(tempfile.mkdtemp(prefix="edge-demo.", dir=os.environ.get("DEMO_DIR") or None))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = threading.Event()
        self.view: LiveView | None = None
        self.broker_port = 0
        self.config = self.run / "agent.toml"
        self.state = self.run / "state"
        self.socket = self.state / "status.sock"
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH_BYTES:  # a long DEMO_DIR
            self.socket = Path(tempfile.mkdtemp(prefix="edge-demo-sock.")) / "status.sock"

    # -- start ------------------------------------------------------------------------------------

    def spawn(
        self, name: str, args: list[str], log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = (self.run / log).open("wb")
        # Own sessions: a Ctrl-C in the terminal reaches the demo only, which stops them in order.
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_the_demo,  # noqa: PLW1509 - prctl only, no threads touched
            env={**os.environ, **(env or {})},
        )
        self.procs[name] = proc
        return proc

    def start_broker(self) -> None:
        self.broker_port = free_port(1883)
        conf = self.run / "mosquitto.conf"
        conf.write_text(f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.spawn("broker", [mosquitto, "-c", str(conf)], "mosquitto.log")
        wait_for(lambda: _listening(self.broker_port), 10, "the broker listening")

    def start_plant(self) -> dict[str, Any]:
        (self.run / "sim").mkdir()
        endpoints = self.run / "endpoints.json"
        for attempt in range(PORT_ATTEMPTS):
            # 5020 and OPC UA's 4840 may be taken (another demo, a test): then any free port, and
            # the config follows. A port taken between the check and the bind: other ports again.
            modbus, opcua = (5020, 4840) if attempt == 0 else (0, 0)
            args = [
                str(BIN / "edge-sim"),
                "run",
                "--port",
                str(free_port(modbus)),
                "--scenario",
                str(SCENARIO),
            ]
            args += ["--endpoints-file", str(endpoints), "--workdir", str(self.run / "sim")]
            proc = self.spawn("sim", args, "sim.log", env={"EDGE_SIM_OPCUA_PORT": str(free_port(opcua))})

            def ready(proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"firmware-sim exited; see {self.run / 'sim.log'}")
                return endpoints.exists() and endpoints.stat().st_size > 0

            try:
                wait_for(ready, 60, "firmware-sim serving")
            except RuntimeError:
                taken = "address already in use" in (self.run / "sim.log").read_text(errors="replace")
                if not taken or attempt == PORT_ATTEMPTS - 1:
                    raise
                say("a port was taken meanwhile by another program; trying other ports")
                continue
            break
        result: dict[str, Any] = json.loads(endpoints.read_text())
        return result

    def leak_baseline(self) -> None:
        """Three simulated quiet nights -> a baseline for each hydrophone in the agent's state dir."""
        quiet = []
        nights: list[subprocess.Popen[bytes]] = []
        for seed in (101, 102, 103):
            wav = self.run / f"quiet-night-{seed}.wav"
            pipe = [
                "--material",
                "ductile_iron",
                "--diameter-mm",
                "150",
                "--spacing-m",
                "100",
                "--snr-db",
                "10",
            ]
            args = [
                str(BIN / "edge-sim"),
                "hydrophones",
                "--wav",
                str(wav),
                "--seconds",
                "24",
                "--seed",
                str(seed),
            ]
            # The three nights are made side by side: each edge-sim spends most of its two or three
            # seconds importing SciPy, and the first live view comes that much sooner.
            nights.append(subprocess.Popen([*args, *pipe], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            quiet.append(str(wav))
        made = [(night, night.communicate()[1]) for night in nights]  # every one ended before any is judged
        for night, err in made:
            if night.returncode != 0:
                raise subprocess.CalledProcessError(night.returncode, night.args, stderr=err)
        out = self.run / "quiet-baseline.json"
        subprocess.run(
            [str(BIN / "edge-agent"), "models", "calibrate", "leak", *quiet, "--out", str(out),
             "--material", "ductile_iron"],
            check=True, capture_output=True,
        )  # fmt: skip
        # The simulated pair is symmetric: both hydrophones start from the same quiet.
        for channel in ("A", "B"):
            sensor = f"hydrophones.{channel}"
            folder = self.state / "leak" / sensor
            folder.mkdir(parents=True, exist_ok=True)
            baseline = json.loads(out.read_text())
            baseline["sensor"] = sensor
            baseline["version"] = 1  # as the gateway numbers the first baseline it learns
            for target in (folder / "baseline.json", folder / f"baseline.v{baseline['version']}.json"):
                target.write_text(json.dumps(baseline, indent=2) + "\n")

    def write_config(self, ep: dict[str, Any]) -> None:
        now = datetime.now()
        night_start = now.strftime("%H:%M")
        night_end = (now + timedelta(minutes=40)).strftime("%H:%M")
        self.config.write_text(
            render_config(ep, self.broker_port, self.state, night_start, night_end, socket_path=self.socket),
            encoding="utf-8",
        )

    def start_agent(self) -> None:
        check = subprocess.run(
            [str(BIN / "edge-agent"), "check-config", "-c", str(self.config)],
            check=False,
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise RuntimeError(f"the demo's config does not check:\n{check.stdout}{check.stderr}")
        self.spawn("agent", [str(BIN / "edge-agent"), "run", "-c", str(self.config)], "agent.log")

    # -- stop -------------------------------------------------------------------------------------

    def shutdown(self) -> bool:
        """Agent first (it drains and says stopped), then the view, the simulator, the broker."""
        try:
            clean = self.stop_agent()
        finally:
            self.stop_plant_and_broker()
        say(f"stopped; logs and the agent's state kept in {self.run}")
        return clean

    def stop_agent(self) -> bool:
        clean = True
        agent = self.procs.get("agent")
        if agent is not None and agent.poll() is None:
            say("stopping the agent first: it sends what it holds and says 'stopped' ...")
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(45)
            except subprocess.TimeoutExpired:
                say("the agent did not stop within 45 s; killing it")
                agent.kill()
                agent.wait()
                clean = False
        if self.view is not None:
            with_view = self.view
            with contextlib.suppress(RuntimeError):
                wait_for(
                    lambda: with_view.presence.get("state") == "offline", 5, "the retained status offline"
                )
            clean = self.report_stop(with_view) and clean
            with_view.close()
        return clean

    def stop_plant_and_broker(self) -> None:
        for name in ("sim", "broker"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in ("sim", "broker"):
            proc = self.procs.get(name)
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.run / "sim", ignore_errors=True)  # the OPC UA server's key among them
        if self.socket.parent != self.state:
            shutil.rmtree(self.socket.parent, ignore_errors=True)
        for wav in self.run.glob("quiet-night-*.wav"):
            wav.unlink()

    def report_stop(self, view: LiveView) -> bool:
        if "agent" not in self.procs:
            say("stopped before the agent started")
            return False
        rows = outbox_rows(self.state / "outbox.sqlite")
        stopped = bool(view.events_of("agent_stopped"))
        presence = view.presence
        ok = (
            rows == 0
            and stopped
            and presence.get("state") == "offline"
            and presence.get("reason") == "stopped"
        )
        say(
            f"clean stop: outbox {rows} rows, agent_stopped {'received' if stopped else 'MISSING'}, "
            f"retained status {presence.get('state')}/{presence.get('reason')}"
            + ("" if ok else "  <- NOT CLEAN")
        )
        return ok

    # -- run --------------------------------------------------------------------------------------

    def main(self) -> int:
        t0 = time.monotonic()
        say(f"starting the tour; files in {self.run}")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop.set())
        ppid, watch_make = parent_is_make()
        clean = False
        try:
            say("1/5 broker ...")
            self.start_broker()
            say(
                "2/5 leak model: a baseline from three simulated quiet nights (edge-sim hydrophones, "
                "edge-agent models calibrate leak) ..."
            )
            self.leak_baseline()
            say(
                f"3/5 firmware-sim ({SPEED}x): "
                "Modbus TCP + RTU, OPC UA, M-Bus, wireless M-Bus, hydrophones ..."
            )
            ep = self.start_plant()
            plant_start = time.monotonic()
            say("4/5 agent ...")
            self.write_config(ep)
            self.start_agent()
            say(f"5/5 live view ({time.monotonic() - t0:.0f} s to here)")
            self.view = LiveView(
                "127.0.0.1", self.broker_port, TOPIC, DEVICES, self.socket,
                plant_clock=lambda: plant_clock(plant_start),
            )  # fmt: skip
            say(
                "in another terminal: .venv/bin/edge-agent status   |   "
                f".venv/bin/edge-agent tail --tag 'pump1.*'   (or -c {self.config})"
            )
            say(
                "what to expect: a wireless meter reports tampering at about 0:20 (clear at 1:20); "
                "a leak opens at 0:15 and is heard at the first one-minute check it fills "
                "(warning, then leak a minute later); "
                "pump 1's bearing fails at 2:00 (pump_anomaly once it shows); "
                "the RTU line goes silent at 2:40 for 20 s"
            )
            self.loop(ppid, watch_make)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            # OSError also when the terminal went away (SIGHUP follows): say() stays quiet then.
            say(f"cannot run: {exc}")
            ran = False
        else:
            ran = True
        finally:
            clean = self.shutdown()
        return 0 if ran and clean else 1

    def loop(self, ppid: int, watch_make: bool) -> None:
        assert self.view is not None
        view = self.view
        deadline = time.monotonic() + self.seconds if self.seconds > 0 else None
        agent = self.procs["agent"]

        def done() -> bool:
            if self.stop.is_set() or agent.poll() is not None:
                return True
            if watch_make and parent_took_sigint(ppid, watch_make):
                return True
            return deadline is not None and time.monotonic() >= deadline

        if sys.stdout.isatty() and not os.environ.get("DEMO_PLAIN"):
            from rich.console import Console
            from rich.live import Live

            with Live(view.renderable(), console=Console(), refresh_per_second=2, screen=False) as live:
                while not done() and terminal_alive():
                    view.poll_status()
                    live.update(view.renderable())
                    self.stop.wait(0.5)
        else:
            next_snapshot = 0.0
            while not done():
                view.poll_status()
                for line in view.new_event_lines():
                    print(line, flush=True)
                if time.monotonic() >= next_snapshot:
                    for line in view.snapshot_lines():
                        print(line, flush=True)
                    next_snapshot = time.monotonic() + 10
                self.stop.wait(0.5)
            for line in view.new_event_lines():
                print(line, flush=True)
        if agent.poll() is not None:
            say(f"the agent exited with {agent.returncode}; see {self.run / 'agent.log'}")


def terminal_alive() -> bool:
    """False once our terminal hung up (a closed tmux pane or ssh session): the kernel signals only
    the session leader, so the demo notices here and stops as for Ctrl-C."""
    try:
        os.tcgetpgrp(sys.stdout.fileno())
    except OSError:
        return False
    return True


def plant_clock(started: float) -> str:
    s = int((time.monotonic() - started) * SPEED) + 3 * 3600
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def outbox_rows(path: Path) -> int:
    if not path.exists():
        return -1
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def render_config(
    ep: dict[str, Any], broker_port: int, state: Path, night_start: str, night_end: str, *, socket_path: Path
) -> str:
    tcp, rtu, ua, mbus, wmbus, hydro = (
        ep["modbus_tcp"], ep["modbus_rtu"], ep["opcua"], ep["mbus"], ep["wmbus"], ep["hydrophones"]
    )  # fmt: skip
    parity = {"N": "none", "E": "even", "O": "odd"}[rtu["parity"]]
    pump_tags = "".join(
        f'\n[[devices.tags]]\nname = "pump1.{tag}"\naddress = {address}\ntype = "float32"\nunit = "{unit}"\n'
        for tag, address, unit in (
            ("flow", 100, "m3/h"), ("suction_pressure", 102, "bar"), ("discharge_pressure", 104, "bar"),
            ("motor_current", 106, "A"), ("vibration_x", 108, "mm/s"), ("vibration_y", 110, "mm/s"),
            ("winding_temp", 112, "degC"), ("speed", 114, "rpm"),
        )
    )  # fmt: skip
    mbus_meters = "".join(
        f'\n[[devices.meters]]\nname = "m{m["address"]}"\naddress = {m["address"]}\n' for m in mbus["meters"]
    )
    # The T1 meters (OMS, encrypted) are the flats of this block, heard by a stick and an SDR
    # (one device, two receivers: each telegram reported once).
    flats = [m for m in wmbus["meters"] if m["link_mode"] == "T1"]
    wmbus_meters = "".join(
        f'\n[[devices.meters]]\nname = "flat{m["index"]}"\nid = "{m["id"]}"\nkey = "{m["key"]}"\n'
        'alarm_bits = [{ record = "error_flags", bit = 2, alarm = "tamper" }]\n'
        for m in flats
    )
    signals = "\n".join(
        f'  {role} = "pump-station/pump1.{role}"'
        for role in ("flow", "motor_current", "speed", "suction_pressure", "discharge_pressure",
                     "vibration_x", "vibration_y", "winding_temp")
    )  # fmt: skip
    return f"""# Written by scripts/demo.py for this run: every part firmware-sim serves, both models live.
schema_version = 1

[gateway]
site = "{SITE}"
id = "{GATEWAY}"
state_dir = "{state}"
# The demo's state is thrown away when it ends: kept in RAM (a tmpfs /tmp) is no loss here.
accept_state_in_ram = true

[status]
socket = "{socket_path}"

[uplink]
host = "127.0.0.1"
port = {broker_port}

[buffer]
max_bytes = "64MiB"

[log]
level = "info"

# The demo runs on a workstation or a container whose clock is not the gateway's to judge; a
# gateway keeps the default ("auto") and marks readings taken before NTP has synchronised.
[clock]
sync_source = "none"

[[devices]]
name = "pump-station"
kind = "modbus_tcp"
host = "{tcp["host"]}"
port = {tcp["port"]}
unit_id = 1
poll_interval_ms = 1000
{pump_tags}
[[devices.tags]]
name = "station.tank_level"
address = 16
type = "float64"
unit = "m"

[[devices.tags]]
name = "station.demand"
address = 20
type = "float32"
unit = "m3/h"

[[devices]]
name = "outlet-rtu"
kind = "modbus_rtu"
port = "{rtu["path"]}"
baudrate = {rtu["baudrate"]}
parity = "{parity}"
stopbits = {rtu["stopbits"]}
unit_id = 2
timeout_ms = 300
retries = 0
poll_interval_ms = 1000

[[devices.tags]]
name = "meter.flow"
table = "input"
address = 0
type = "float32"
unit = "m3/h"

[[devices.tags]]
name = "meter.total"
table = "input"
address = 2
type = "uint32"
scale = 0.001
unit = "m3"

[[devices]]
name = "pumps-ua"
kind = "opcua"
endpoint = "{ua["url"]}"
mode = "subscribe"

[[devices.tags]]
name = "pump1.discharge_pressure"
path = "PumpStation/Pump1/DischargePressure"

[[devices.tags]]
name = "pump2.flow"
path = "PumpStation/Pump2/Flow"        # pump 2 stands by at night: 0

[[devices.tags]]
name = "station.tank_level"
node = "ns=2;s=station.tank_level"

[[devices]]
name = "house-meters"
kind = "mbus"
port = "{mbus["path"]}"
baudrate = {mbus["baudrate"]}
poll_interval_ms = 10000
{mbus_meters}
[[devices]]
name = "flat-meters"
kind = "wmbus"

[[devices.receivers]]
name = "stick"
receiver = "im871a"
port = "{wmbus["path"]}"
link_modes = ["T1"]

[[devices.receivers]]
name = "sdr"
receiver = "rtlwmbus"
host = "{wmbus["rtlwmbus"]["host"]}"
tcp_port = {wmbus["rtlwmbus"]["port"]}
link_modes = ["T1", "C1"]
{wmbus_meters}
[[devices]]
name = "hydrophones"
kind = "audio"
source = "stream"
stream_url = "{hydro["url"]}"
channel_names = ["A", "B"]

[[models.pump]]
name = "pump1"
persistence = 5
clear_after = 30
  [models.pump.calibration]
  auto_hours = {PUMP_CALIBRATION_S / 3600:.4f}     # {PUMP_CALIBRATION_S} s, not a day: the night is steady
  min_samples = 64
  [models.pump.signals]
{signals}

[[models.leak]]
device = "hydrophones"
night_start = "{night_start}"      # the next 40 minutes are 'night' for the demo
night_end = "{night_end}"
check_minutes = 1
baseline_nights = 1
material = "ductile_iron"
diameter_mm = 150
spacing_m = 100

[[models.meter]]
name = "block-a"
device = "flat-meters"
"""


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0") or 0)
    return Demo(seconds).main()


if __name__ == "__main__":
    sys.exit(main())
