"""Self-update for real: a second build of the agent (version bumped in a copy of the tree) is sent
as a signed bundle in chunks over MQTT, installed beside the running release, switched to and kept;
then a deliberately broken build, fetched from a URL, fails its health check and is rolled back.
Throughout, the outbox is the one in the state directory: no committed reading is lost either way.

The running agent starts from this checkout's venv, linked as the first release; the dependencies
of the new releases are wheels repacked from this venv (tests/support/releases.py) and sit in the
gateway's wheel cache, so the bundles are thin, as an update over a cellular link would be.
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
from pathlib import Path
from typing import Any

import pytest
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

pytestmark = pytest.mark.slow


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


class _Serve(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


def test_a_signed_update_is_applied_and_a_broken_one_rolled_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # --- two real builds and their thin bundles, signed by a release key ---------------------
    deps = tmp_path / "deps"
    dependency_wheelhouse(deps)
    good = agent_wheel(tmp_path / "builds", "0.2.0")
    broken = agent_wheel(tmp_path / "builds", "0.3.0", break_it=True)
    release_key = Ed25519PrivateKey.generate()
    keys = tmp_path / "release-keys"
    keys.write_text(f"# trusted release keys\nrel-test {public_key_text(release_key)}\n")
    bundles = {}
    for name, wheel in (("good", good), ("broken", broken)):
        out = tmp_path / f"{name}.tar"
        args = ["release", "bundle", str(wheel.parent), "--cached", str(deps), "--key-id", "rel-test"]
        assert main([*args, "--key", str(_pem(release_key, tmp_path / "release.key")), "-o", str(out)]) == 0
        bundles[name] = out
    assert bundles["good"].stat().st_size < 5 * 2**20  # thin: the agent's wheel only

    # --- a gateway: the running release is this checkout's venv; the wheel cache holds the deps --
    root = tmp_path / "opt"
    (root / "releases").mkdir(parents=True)
    (root / "releases" / "0.1.0-dev").symlink_to(Path(sys.prefix))
    (root / "current").symlink_to("releases/0.1.0-dev")
    (root / "wheels").mkdir()
    for wheel in deps.iterdir():
        os.link(wheel, root / "wheels" / wheel.name)
    operator = Ed25519PrivateKey.generate()
    config = write_agent_config(
        tmp_path,
        broker_port=mosquitto.port,
        devices=[{"name": "plc", "kind": "fake", "poll_interval_ms": 200, "tags": [{"name": "flow"}]}],
        security=(
            "[[security.operators]]\n"
            f'name = "release-ops"\npublic_key = "{public_key_text(operator)}"\n'
            'commands = ["update", "update_chunk"]\nmax_per_minute = 120\n'
        ),
        extra=f'[update]\nroot = "{root}"\nrelease_keys = "{keys}"\nhealth_window_s = 20\n',
    )
    state_dir = tmp_path / "state"
    socket = state_dir / "status.sock"

    def send(pub: Publisher, kind: str, args: dict[str, Any]) -> None:
        pub.publish(f"{BASE}/cmd/{kind}", envelope.sign(operator, "release-ops", kind, TARGET, args))

    manager = ServiceManager(
        root, config, state_dir, ["--root", str(root), "--keys", str(keys)], tmp_path / "service.log"
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

            # --- the good build, in chunks over MQTT --------------------------------------------
            data = bundles["good"].read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            count = -(-len(data) // CHUNK)
            for i in range(count):
                part = base64.b64encode(data[i * CHUNK : (i + 1) * CHUNK]).decode()
                send(pub, "update_chunk", {"transfer": sha, "index": i, "count": count, "data": part})
            sent = time.monotonic()
            send(pub, "update", {"transfer": sha})
            sub.wait_until(
                lambda msgs: any(
                    e["detail"].get("version") == "0.2.0" for e in _events(sub, "agent_started")
                ),
                120,
            )
            to_publishing = time.monotonic() - sent
            manager.wait_updater(
                lambda: any(e["detail"]["outcome"] == "committed" for e in _events(sub, "update")), 60
            )
            status = _status(socket)
            assert status is not None
            assert status["agent"]["version"] == "0.2.0"
            assert status["update"]["phase"] == "committed"
            assert status["update"]["previous_release"] == "0.1.0-dev"
            assert (root / "current").resolve().name.startswith("0.2.0-")
            results = [e["detail"] for e in _events(sub, "command_result")]
            assert {r["type"] for r in results} == {"update", "update_chunk"}, results
            assert all(r["status"] == "ok" for r in results), results

            # --- the broken build, from a URL: it cannot even start, and is rolled back -----------
            served = tmp_path / "www"
            served.mkdir()
            shutil.copy(bundles["broken"], served / "broken.tar")
            handler = lambda *a: _Serve(*a, directory=str(served))  # noqa: E731
            http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=http_server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{http_server.server_address[1]}/broken.tar"
            try:
                broken_sha = hashlib.sha256(bundles["broken"].read_bytes()).hexdigest()
                send(pub, "update", {"url": url, "sha256": broken_sha})
                manager.wait_updater(
                    lambda: any(e["detail"]["outcome"] == "rolled_back" for e in _events(sub, "update")), 120
                )
            finally:
                http_server.shutdown()
            (rolled,) = [e for e in _events(sub, "update") if e["detail"]["outcome"] == "rolled_back"]
            assert rolled["detail"]["to"] == "0.3.0"
            assert rolled["detail"]["from"] == "0.2.0"
            assert "health check failed" in rolled["detail"]["reason"]
            assert rolled["severity"] == "alarm"
            status = _status(socket)
            assert status is not None
            assert status["agent"]["version"] == "0.2.0"
            assert (root / "current").resolve().name.startswith("0.2.0-")
            assert any(name.startswith("0.3.0-") for name in manager.starts), manager.starts
            audit = [
                (a["action"], a["outcome"])
                for a in read_audit(state_dir / "audit.log")
                if a["action"] == "update"
            ]
            assert ("update", "committed") in audit, audit
            assert ("update", "rolled_back") in audit, audit
        finally:
            manager.stop()

        # --- no committed reading lost: every seq of the stream was delivered or is still queued -----
        delivered = {m.json()["seq"] for m in sub.snapshot() if m.topic == f"{BASE}/plc"}
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        queued = {seq for (seq,) in db.execute("SELECT seq FROM outbox WHERE stream = 'plc'")}
        (last,) = db.execute("SELECT last_seq FROM streams WHERE stream = 'plc'").fetchone()
    assert delivered | queued == set(range(1, last + 1)), sorted(
        set(range(1, last + 1)) - delivered - queued
    )[:20]
    print(
        f"\nupdate command -> new version publishing: {to_publishing:.1f} s; "
        f"{last} rows of readings, none lost"
    )
