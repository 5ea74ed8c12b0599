"""The self-update scenario, run for real, shared by tests/test_update_selfupdate.py (which asserts
on what it saw) and bench/bench_update.py (which reports how long it took).

`update_then_roll_back(tmp, broker)`: two real builds of the agent (0.2.0, and a 0.3.0 that cannot
start) as thin signed bundles; a gateway whose first release is this checkout's venv (linked into
an A/B layout in `tmp/opt`, the dependencies in its wheel cache); the good bundle sent in chunks
over MQTT and applied by signed command, then the broken one fetched from a URL and rolled back.
Returns what the centre, the status socket, the layout, the audit log and the outbox showed.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.broker import Mosquitto, Publisher, Subscriber
from tests.support.releases import ServiceManager, agent_wheel, dependency_wheelhouse
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, write_agent_config
from water_edge.agent.cli import main
from water_edge.agent.remote.audit import read_audit
from water_edge.agent.status import AgentNotRunningError, request_status
from water_edge.agent.update.bundle import public_key_text
from water_edge.core import envelope

BASE = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
TARGET = f"{AGENT_SITE}/{AGENT_GATEWAY}"
CHUNK = 200 * 1024
# The good build is committed as soon as it passes, so its window (the config's) only has to be
# generous. The broken one can never pass: it exits at start, and is rolled back once the service
# manager has restarted it `[update] rollback_after_restarts` (3) times, long before its window (the
# default, sent with its command) ends.
GOOD_WINDOW_S = 60
BROKEN_WINDOW_S = 300


@dataclass
class UpdateRun:
    """What one run of the scenario showed."""

    good_bundle_bytes: int
    to_publishing_s: float  # `update` command sent -> an agent_started event from 0.2.0
    to_committed_s: float  # -> the update event `committed` (the health check passed)
    to_rolled_back_s: float  # broken `update` command sent -> the update event `rolled_back`
    after_commit: dict[str, Any]  # status document once committed
    after_rollback: dict[str, Any]  # status document once rolled back
    current_after_commit: str  # the release `current` pointed to
    current_after_rollback: str
    starts: list[str]  # releases the service manager started, in order
    command_results: list[dict[str, Any]]
    update_events: list[dict[str, Any]]
    audit: list[tuple[str, str]]  # (action, outcome) of the update entries
    delivered: set[int] = field(default_factory=set)  # seqs of the data stream the centre got
    queued: set[int] = field(default_factory=set)  # seqs still in the outbox
    last_seq: int = 0


def _pem(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _status(socket: Path) -> dict[str, Any] | None:
    try:
        return request_status(socket, timeout=2)
    except (AgentNotRunningError, OSError):
        return None


def _events(sub: Subscriber, kind: str) -> list[dict[str, Any]]:
    found = []
    for msg in sub.snapshot():
        if msg.topic == f"{BASE}/events":
            found += [e for e in msg.json().get("events", []) if e.get("kind") == kind]
    return found


def _outcome(sub: Subscriber, outcome: str) -> bool:
    return any(e["detail"]["outcome"] == outcome for e in _events(sub, "update"))


class _Serve(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


def _bundles(tmp: Path) -> tuple[dict[str, Path], Path, Path]:
    """Signed thin bundles of a good 0.2.0 and a broken 0.3.0, the dependency wheels, the keys file."""
    deps = tmp / "deps"
    dependency_wheelhouse(deps)
    good = agent_wheel(tmp / "builds", "0.2.0")
    broken = agent_wheel(tmp / "builds", "0.3.0", break_it=True)
    release_key = Ed25519PrivateKey.generate()
    keys = tmp / "release-keys"
    keys.write_text(f"# trusted release keys\nrel-test {public_key_text(release_key)}\n")
    bundles = {}
    key_file = _pem(release_key, tmp / "release.key")
    for name, wheel in (("good", good), ("broken", broken)):
        out = tmp / f"{name}.tar"
        args = ["release", "bundle", str(wheel.parent), "--cached", str(deps), "--key-id", "rel-test"]
        if main([*args, "--key", str(key_file), "-o", str(out)]) != 0:
            raise RuntimeError(f"edge-agent release bundle failed for {name}")
        bundles[name] = out
    return bundles, deps, keys


def _gateway(tmp: Path, deps: Path) -> Path:
    """An A/B install root whose first release is this checkout's venv, the deps in its cache."""
    root = tmp / "opt"
    (root / "releases").mkdir(parents=True)
    (root / "releases" / "0.1.0-dev").symlink_to(Path(sys.prefix))
    (root / "current").symlink_to("releases/0.1.0-dev")
    (root / "wheels").mkdir()
    for wheel in deps.iterdir():
        os.link(wheel, root / "wheels" / wheel.name)
    return root


def update_then_roll_back(tmp: Path, mosquitto: Mosquitto) -> UpdateRun:
    bundles, deps, keys = _bundles(tmp)
    root = _gateway(tmp, deps)
    operator = Ed25519PrivateKey.generate()
    config = write_agent_config(
        tmp,
        broker_port=mosquitto.port,
        devices=[{"name": "plc", "kind": "fake", "poll_interval_ms": 200, "tags": [{"name": "flow"}]}],
        security=(
            "[[security.operators]]\n"
            f'name = "release-ops"\npublic_key = "{public_key_text(operator)}"\n'
            'commands = ["update", "update_chunk"]\nmax_per_minute = 120\n'
        ),
        # The broken release comes from a plain http server of the test on 127.0.0.1.
        extra=(
            f'[update]\nroot = "{root}"\nrelease_keys = "{keys}"\nhealth_window_s = {GOOD_WINDOW_S}\n'
            'allow_http = true\ndownload_hosts = ["127.0.0.1"]\n'
        ),
    )
    state_dir = tmp / "state"
    socket = state_dir / "status.sock"

    def send(pub: Publisher, kind: str, args: dict[str, Any]) -> None:
        pub.publish(f"{BASE}/cmd/{kind}", envelope.sign(operator, "release-ops", kind, TARGET, args))

    def status() -> dict[str, Any]:
        found = _status(socket)
        if found is None:
            raise RuntimeError("the agent's status socket does not answer")
        return found

    manager = ServiceManager(
        root,
        config,
        state_dir,
        ["--root", str(root), "--keys", str(keys), "--state-dir", str(state_dir)],
        tmp / "service.log",
    )
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub,
        Publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        manager.start()
        try:
            manager.wait_updater(
                lambda: (s := _status(socket)) is not None and s["uplink"]["state"] == "online", 30
            )

            # The good build, in chunks over MQTT.
            data = bundles["good"].read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            count = -(-len(data) // CHUNK)
            for i in range(count):
                part = base64.b64encode(data[i * CHUNK : (i + 1) * CHUNK]).decode()
                send(pub, "update_chunk", {"transfer": sha, "index": i, "count": count, "data": part})
            sent = time.monotonic()
            send(pub, "update", {"transfer": sha})
            sub.wait_until(
                lambda _m: any(e["detail"].get("version") == "0.2.0" for e in _events(sub, "agent_started")),
                120,
            )
            to_publishing = time.monotonic() - sent
            manager.wait_updater(lambda: _outcome(sub, "committed"), 60)
            to_committed = time.monotonic() - sent
            after_commit = status()
            current_after_commit = (root / "current").resolve().name

            # The broken build, from a URL: it cannot even start, and is rolled back.
            served = tmp / "www"
            served.mkdir()
            shutil.copy(bundles["broken"], served / "broken.tar")
            handler = lambda *a: _Serve(*a, directory=str(served))  # noqa: E731
            http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=http_server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{http_server.server_address[1]}/broken.tar"
            try:
                broken_sha = hashlib.sha256(bundles["broken"].read_bytes()).hexdigest()
                sent = time.monotonic()
                send(pub, "update", {"url": url, "sha256": broken_sha, "health_window_s": BROKEN_WINDOW_S})
                manager.wait_updater(lambda: _outcome(sub, "rolled_back"), 120)
                to_rolled_back = time.monotonic() - sent
            finally:
                http_server.shutdown()
            after_rollback = status()
            current_after_rollback = (root / "current").resolve().name
        finally:
            manager.stop()
        delivered = {m.json()["seq"] for m in sub.snapshot() if m.topic == f"{BASE}/plc"}
        run = UpdateRun(
            good_bundle_bytes=bundles["good"].stat().st_size,
            to_publishing_s=to_publishing,
            to_committed_s=to_committed,
            to_rolled_back_s=to_rolled_back,
            after_commit=after_commit,
            after_rollback=after_rollback,
            current_after_commit=current_after_commit,
            current_after_rollback=current_after_rollback,
            starts=list(manager.starts),
            command_results=[e["detail"] for e in _events(sub, "command_result")],
            update_events=_events(sub, "update"),
            audit=[
                (a["action"], a["outcome"])
                for a in read_audit(state_dir / "audit.log")
                if a["action"] == "update"
            ],
            delivered=delivered,
        )
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        run.queued = {seq for (seq,) in db.execute("SELECT seq FROM outbox WHERE stream = 'plc'")}
        (run.last_seq,) = db.execute("SELECT last_seq FROM streams WHERE stream = 'plc'").fetchone()
    return run
