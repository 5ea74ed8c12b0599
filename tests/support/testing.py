"""The helpers the suite shares (like `structlog.testing`): waiting on a condition, an agent config.

Waiting: a test waits on the condition it asserts, never on a fixed sleep.

    await eventually(lambda: runner.stats.polls >= 10)             # in async tests
    wait_until(lambda: path.exists(), within_s=15, what="the file") # in blocking code

Both poll `condition` until it returns something truthy and return that value (so a condition may
hand back what it found), or raise `TimeoutError` naming `what` after `within_s`. `eventually`
also takes an async condition (`async def` or a lambda returning a coroutine) for checks that do
I/O, such as reading a device again.

An agent config: `write_agent_config(tmp_path, broker_port=broker.port, devices=...)` writes a
valid `agent.toml` (gateway, uplink to the test broker, buffer, status socket under the state dir)
and returns its path; `agent_config(...)` returns the text. Each optional section (`devices`,
`models`, `security`, `writes`) is a TOML fragment with its own headers or a dict/list rendered
under the section's name. `demo_devices(port)` is the shipped demo's `[[devices]]`, pointed at a
test plant.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest

from water_edge.agent.config.load import MAX_SOCKET_PATH_BYTES

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "deploy" / "demo.toml"
# What `edge-agent status --json` promises (docs/status.md): every status a test takes is held to it.
STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())

# What `write_agent_config` names the gateway: agent tests read `water/test-site/gw-test/...`.
AGENT_SITE = "test-site"
AGENT_GATEWAY = "gw-test"
# One `fake` device reading a level of 3.5 m ten times a second: an agent that runs without a plant.
# Pump 1 of the demo plant (demo_devices), sampled every 0.05 s and calibrated on 108 samples:
# armed about 6 s after the agent starts, for tests of what a calibrated pump does.
FAST_CALIBRATING_PUMP = """
[[models.pump]]
name = "pump1"
sample_interval_s = 0.05
  [models.pump.signals]
  flow = "pump1.flow"
  motor_current = "pump1.motor_current"
  speed = "pump1.speed"
  discharge_pressure = "pump1.discharge_pressure"
  vibration_x = "pump1.vibration_x"
  vibration_y = "pump1.vibration_y"
  [models.pump.calibration]
  auto_hours = 0.0015            # 108 samples of 0.05 s
  min_samples = 64
"""


FAKE_DEVICE = """
[[devices]]
name = "fake-plc"
kind = "fake"
poll_interval_ms = 100

  [[devices.tags]]
  name = "level"
  unit = "m"
  offset = 3.5
"""


# --- waiting on a condition -----------------------------------------------------------------------


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    within_s: float = ...,
    what: str | Callable[[], str] = ...,
    *,
    every_s: float = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None],
    within_s: float = ...,
    what: str | Callable[[], str] = ...,
    *,
    every_s: float = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    within_s: float = 10.0,
    what: str | Callable[[], str] = "the condition",
    *,
    every_s: float = 0.01,
) -> Any:
    """Await until `condition()` is truthy and return its value; `TimeoutError` after `within_s`.

    For state that sets no event to await (counters, rows, a device's registers); an async
    condition is awaited each time. `what` names the condition in the error, or is called then to
    describe what was seen last.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"not met within {within_s} s: {_describe(what)}")
        await asyncio.sleep(every_s)


def wait_until(
    condition: Callable[[], T | None],
    within_s: float = 10.0,
    what: str | Callable[[], str] = "the condition",
    *,
    every_s: float = 0.02,
) -> T:
    """`eventually` for blocking code (sync tests, subprocess helpers): sleeps between checks."""
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not met within {within_s} s: {_describe(what)}")
        time.sleep(every_s)


def skip_unless_soak(config: pytest.Config) -> None:
    """Soak tests run only when selected with `-m soak` (`make soak`), never in the default run."""
    expr = str(config.getoption("markexpr") or "")
    if "soak" not in expr or "not soak" in expr:
        pytest.skip("soak run: select it with -m soak (make soak)")


_HANDED_OUT: set[int] = set()
PORT_CLAIMS_ENV = "WATER_EDGE_TEST_PORT_CLAIMS"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listened on a moment ago (a broker to start, or 'connection refused').

    Never one this test run has given before, in this process or in another worker: the kernel can
    hand a just-released port out again, and two servers given one port (a cluster's nodes, a PLC
    and its gateway) do not both start. Workers share the run's claims through a directory
    (`PORT_CLAIMS_ENV`, made by tests/conftest.py): a port is claimed by creating its file there."""
    claims = os.environ.get(PORT_CLAIMS_ENV)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port in _HANDED_OUT:
            continue
        _HANDED_OUT.add(port)
        if claims is None or _claim(Path(claims) / str(port)):
            return port


def skip_without_ipv6_loopback() -> None:
    """Skip, saying why, on a machine or container whose loopback has no ::1 (IPv6 turned off)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


# --- an agent config ------------------------------------------------------------------------------

Section = str | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _is_tables(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def _toml_table(name: str, table: Mapping[str, Any], *, array: bool = False) -> list[str]:
    """`[name]` (or `[[name]]`) with its keys, then its sub-tables and arrays of tables."""
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    nested: list[str] = []
    for key, value in table.items():
        path = f"{name}.{_toml_key(key)}"
        if isinstance(value, Mapping):
            nested += ["", *_toml_table(path, value)]
        elif _is_tables(value):
            for item in value:
                nested += ["", *_toml_table(path, item, array=True)]
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return lines + nested


def _section(name: str, value: Section) -> str:
    """A TOML fragment as given, or `value` rendered as `[name]` / `[[name]]` tables."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if name == "models":  # `[[models.<kind>]]`: one list of tables per processor kind
            return "\n".join(
                line
                for kind, tables in value.items()
                for table in tables
                for line in ["", *_toml_table(f"models.{_toml_key(kind)}", table, array=True)]
            )
        return "\n".join(_toml_table(name, value))
    return "\n".join(line for table in value for line in ["", *_toml_table(name, table, array=True)])


def status_socket_for(state_dir: Path) -> Path:
    """`<state_dir>/status.sock`, or one in a short temporary directory when that path is too long."""
    path = state_dir / "status.sock"
    if len(str(path).encode()) <= MAX_SOCKET_PATH_BYTES:  # what check-config takes
        return path
    return Path(tempfile.mkdtemp(prefix="ea-")) / "status.sock"


def agent_config(
    state_dir: Path,
    *,
    broker_port: int | None = None,
    broker_host: str = "127.0.0.1",
    site: str = AGENT_SITE,
    gateway: str = AGENT_GATEWAY,
    uplink: Mapping[str, Any] | None = None,
    buffer: Mapping[str, Any] | None = None,
    status_socket: Path | None = None,
    devices: Section = None,
    models: Section = None,
    security: Section = None,
    writes: Section = None,
    clock: Mapping[str, Any] | None = None,
    extra: str = "",
) -> str:
    """The text of a valid agent config whose state lives in `state_dir`.

    `broker_port=None` points the uplink at a free port nothing listens on: the agent runs, stays
    offline and keeps what it reads. `uplink` and `buffer` add or override keys of those tables
    (the defaults reconnect fast and flush every 100 ms, so tests see data quickly).
    `devices`: a fragment with `[[devices]]` headers, or a list of device tables. `models`: a
    fragment with `[[models.<kind>]]` headers, or `{kind: [table, ...]}`. `security`/`writes`: a
    fragment with its headers, or the table as a dict. `clock`: the `[clock]` table; by default
    `sync_source = "none"`, because the machines the suite runs on may have a kernel clock that no
    time daemon disciplines, and only the clock tests are about that. `extra`: any further tables,
    as TOML text with their own headers (e.g. `[log]`).
    """
    port = free_port(broker_host) if broker_port is None else broker_port
    broker: dict[str, Any] = {"host": broker_host, "port": port}
    if uplink is not None and "servers" in uplink:
        broker = {}  # a servers list replaces host/port
    tables: dict[str, Mapping[str, Any]] = {
        "gateway": {"site": site, "id": gateway, "state_dir": state_dir},
        "uplink": {
            **broker,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
            **(uplink or {}),
        },
        "buffer": {"flush_interval_ms": 100, **(buffer or {})},
        "status": {"socket": status_socket or status_socket_for(state_dir)},
        "clock": {"sync_source": "none"} if clock is None else clock,
    }
    parts = ["schema_version = 1", *("\n".join(_toml_table(n, t)) for n, t in tables.items())]
    sections = {"security": security, "writes": writes, "models": models, "devices": devices}
    parts += [*(_section(name, value) for name, value in sections.items()), extra]
    text = "\n\n".join(p.strip("\n") for p in parts if p) + "\n"
    tomllib.loads(text)  # a broken fragment fails here, not as a puzzling ConfigError later
    return text


def write_agent_config(directory: Path, **kwargs: Any) -> Path:
    """`directory/agent.toml` from `agent_config(directory / "state", **kwargs)`; returns its path."""
    path = directory / "agent.toml"
    path.write_text(agent_config(directory / "state", **kwargs), encoding="utf-8")
    return path


def demo_devices(plant_port: int, *, poll_interval_ms: int | None = None) -> str:
    """The `[[devices]]` of the shipped demo config (deploy/demo.toml), pointed at a test plant.

    `poll_interval_ms` replaces the demo's 1 s poll (the durability tests poll fast).
    """
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    devices = text[text.index("[[devices]]") :]
    devices = re.sub(r"^port = 5020\b", f"port = {plant_port}", devices, flags=re.M)
    if poll_interval_ms is not None:
        devices = re.sub(
            r"^poll_interval_ms = \d+", f"poll_interval_ms = {poll_interval_ms}", devices, flags=re.M
        )
    return devices


def outbox_events(outbox: Path, kind: str) -> list[Any]:
    """The events of `kind` still in an outbox (read-only: beside a running or stopped agent)."""
    from water_edge.buffer.codec import decode_events

    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        bodies = conn.execute("SELECT body FROM outbox WHERE stream = 'events'").fetchall()
    finally:
        conn.close()
    return [event for (body,) in bodies for event in decode_events(body) if event.kind == kind]


def outbox_last_seqs(outbox: Path) -> dict[str, int]:
    """stream -> the last seq the agent ever gave a row of it (the outbox's `streams` table): a
    subscriber has the whole of a stream when it holds every seq from 1 to this."""
    conn = sqlite3.connect(outbox)
    try:
        return dict(conn.execute("SELECT stream, last_seq FROM streams").fetchall())
    finally:
        conn.close()


def damage_sqlite_under_its_owner(path: Path, seed: int) -> None:
    """What a card going bad does to an SQLite file the agent has open (a feature history, the
    outbox: both have a `meta` table): another connection's write there makes the agent's
    connection reread pages from the file, and the file's pages from the third on are garbage."""
    other = sqlite3.connect(path)
    other.execute("INSERT OR REPLACE INTO meta VALUES ('touched', '1')")
    other.commit()
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    page = 4096
    size = path.stat().st_size
    assert size > 3 * page, size  # page 3 on: the second table's root, then its rows
    with path.open("r+b") as f:
        f.seek(2 * page)
        f.write(random.Random(seed).randbytes(size - 2 * page))


# The uid and gid a test acts as when it needs a user who is not root (`setpriv`).
NOBODY = 65534


def can_run_as_nobody() -> bool:
    """True when this test run may act as another user: root, setpriv, and a Python that user
    can run (a venv under a 0700 home is out of reach)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", "0"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0
