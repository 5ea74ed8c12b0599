"""Finding 10 (file modes): an agent started by hand, under any umask, creates its files with the
modes the design states, never readable or writable by others."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_proc import running_agent, write_config
from tests.support.broker import Mosquitto


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_agent_started_under_umask_000_keeps_its_files_private(tmp_path: Path) -> None:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    security = f"""
[[security.operators]]
name = "ops"
public_key = "{base64.b64encode(raw).decode()}"
commands = ["read_now"]
"""
    with Mosquitto() as broker:
        config = write_config(tmp_path, broker_port=broker.port, devices="", extra=security)
        (tmp_path / "state").mkdir(exist_ok=True)
        (tmp_path / "state").chmod(0o777)  # made by hand beforehand: tightened at start
        with umask(0), running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online")
            state = tmp_path / "state"
            modes = {p.name: mode(p) for p in state.iterdir()}
            socket_mode = mode(agent.socket)
            assert agent.stop() == 0
    assert mode(state) == 0o750
    assert modes["outbox.sqlite"] == 0o640
    assert modes["outbox.sqlite-wal"] == 0o640
    assert modes["outbox.sqlite.lock"] == 0o640
    assert modes["audit.log"] == 0o600
    assert modes["nonces.sqlite"] == 0o600
    assert modes["nonces.sqlite-wal"] == 0o600
    assert socket_mode == 0o660
    assert not [name for name, m in modes.items() if m & 0o007], "nothing is open to others"
