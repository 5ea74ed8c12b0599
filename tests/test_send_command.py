"""`edge-agent ca send-command`: a signed command to a real agent through a real Mosquitto, and
the gateway's answer printed (agent.command_sender; docs/security.md, "Signed commands")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Subscriber
from tests.support.commands import operator_security
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, write_agent_config
from tests.test_state_backup import learn

pytestmark = pytest.mark.slow

BASE = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"


def pem(tmp_path: Path, name: str) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / f"{name}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key, path


def send(key: Path, port: int, command_type: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "ca", "send-command", "--key", str(key),
         "--key-id", "control-room", "--type", command_type, "--target", f"{AGENT_SITE}/{AGENT_GATEWAY}",
         "--broker", "127.0.0.1", "--port", str(port), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_console_sends_a_command_and_prints_the_gateways_answer(tmp_path: Path) -> None:
    learn(tmp_path / "state")
    operator, key = pem(tmp_path, "ops")
    _, stranger = pem(tmp_path, "stranger")
    with Mosquitto() as broker:
        config = write_agent_config(
            tmp_path,
            broker_port=broker.port,
            extra='[state_backup]\nfirst_after = "12h"\n' + operator_security(operator, ["state_backup"]),
        )
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/state_backup") as centre,
            running_agent(config) as agent,
        ):
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            done = send(key, broker.port, "state_backup")
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert (answer["status"], answer["result"]["outcome"]) == ("ok", "sent")
            centre.wait_until(lambda ms: len(ms) >= answer["result"]["parts"], 10)

            refused = send(key, broker.port, "restart")
            assert refused.returncode == 1
            assert json.loads(refused.stdout)["status"] == "refused"
            assert (
                "the gateway answered refused: not_authorised: key 'control-room' may not send 'restart'"
                in refused.stderr
            )
            assert agent.process.poll() is None  # not restarted

            forged = send(stranger, broker.port, "state_backup")
            assert forged.returncode == 1
            assert "the gateway refused the command without reading it: bad_signature" in forged.stderr
            assert agent.stop() == 0

        # Nobody answers (the gateway offline): said, and not sent again.
        unanswered = send(key, broker.port, "state_backup", "--wait", "2")
    assert unanswered.returncode == 1
    assert f"no answer from {BASE} within 2 s on {BASE}/events: is the gateway online" in unanswered.stderr
    assert unanswered.stdout == ""


def test_a_broker_that_will_not_take_the_command_is_said_at_once(tmp_path: Path) -> None:
    """A console login the broker's ACL lets read the gateway's events but not write its cmd/
    topics: MQTT 5 PUBACK 0x87, said at once rather than waited out as a gateway not answering."""
    _, key = pem(tmp_path, "ops")
    acl = tmp_path / "acl"
    acl.write_text("user console\ntopic read water/#\n")
    with Mosquitto(users={"console": "secret"}, extra_config=f"acl_file {acl}\n") as broker:
        refused = subprocess.run(
            [sys.executable, "-m", "water_edge.agent.cli", "ca", "send-command", "--key", str(key),
             "--key-id", "control-room", "--type", "read_now", "--target", f"{AGENT_SITE}/{AGENT_GATEWAY}",
             "--broker", "127.0.0.1", "--port", str(broker.port), "--username", "console",
             "--password-env", "CONSOLE_PASSWORD", "--wait", "60"],
            capture_output=True, text=True, timeout=30, check=False,
            env={"PATH": "/usr/bin:/bin", "CONSOLE_PASSWORD": "secret"},
        )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert (
        f"the broker refused the message on {BASE}/cmd/read_now: Not authorized (0x87); may this "
        "console's broker login write the gateway's cmd/ topics (its ACL)?"
    ) in refused.stderr
