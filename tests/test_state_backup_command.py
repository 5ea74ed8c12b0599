"""A backup now, by signed command (`state_backup`; docs/fleet.md, "State backups").

A real agent with learnt state on its card, a real Mosquitto, a subscriber standing in for the
centre; the operator's signed `state_backup` is published to the gateway's command topic and its
`command_result` read back from the gateway's `events`. The parts the centre receives must put
together an archive `state import` takes, every learnt file byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Publisher, Subscriber
from tests.support.commands import command_results, operator_security
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, write_agent_config
from tests.test_state_backup import imported, joined, learn
from water_edge.core import envelope

pytestmark = pytest.mark.slow

BASE = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
# The schedule's first backup far away: what arrives is the command's.
LATE = '[state_backup]\nfirst_after = "12h"\npart_size = "4KiB"\n'


class Operator:
    """Signs and publishes `state_backup` commands and waits for their answers."""

    def __init__(self, broker: Mosquitto, key: Ed25519PrivateKey, events: Subscriber) -> None:
        self.broker, self.key, self.events = broker, key, events

    def send(self, **args: Any) -> dict[str, Any]:
        payload = envelope.sign(
            self.key, "control-room", "state_backup", f"{AGENT_SITE}/{AGENT_GATEWAY}", args
        )
        command_id = envelope.parse(payload).id
        with Publisher(self.broker.host, self.broker.port) as publisher:
            publisher.publish(f"{BASE}/cmd/state_backup", payload)

        def answered(messages: list[Any]) -> bool:
            return any(r["id"] == command_id for r in command_results(messages))

        messages = self.events.wait_until(answered, timeout=30)
        return next(r for r in command_results(messages) if r["id"] == command_id)


def card(tmp_path: Path, broker: Mosquitto, key: Ed25519PrivateKey, *, backup: str = LATE) -> Path:
    tmp_path.mkdir(exist_ok=True)
    return write_agent_config(
        tmp_path,
        broker_port=broker.port,
        extra=backup + operator_security(key, ["state_backup", "read_now"]),
    )


def test_a_signed_state_backup_sends_the_learnt_state_now_and_says_which_backup_the_centre_has(
    tmp_path: Path,
) -> None:
    files = learn(tmp_path / "state")
    key = Ed25519PrivateKey.generate()
    with Mosquitto() as broker:
        config = card(tmp_path, broker, key)
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/state_backup") as centre,
            Subscriber(broker.host, broker.port, f"{BASE}/events") as events,
            running_agent(config) as agent,
        ):
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            operator = Operator(broker, key, events)

            first = operator.send()
            assert first["status"] == "ok", first
            sent = first["result"]
            assert sent["outcome"] == "sent"
            assert (sent["files"], sent["topic"]) == (len(files), f"{BASE}/state_backup")
            received = centre.wait_until(lambda ms: len(ms) >= sent["parts"], 10)
            archives = joined(received, AGENT_SITE, AGENT_GATEWAY)
            assert list(archives) == [sent["backup"]]
            assert (
                imported(archives[sent["backup"]], tmp_path / "new-card", AGENT_SITE, AGENT_GATEWAY) == files
            )
            status = agent.wait_status(lambda s: s["state_backup"]["backup"] == sent["backup"], timeout=10)
            assert status["state_backup"]["state"] == "sent"

            # The same state: the centre has it already, and the answer says which backup that is.
            again = operator.send()["result"]
            assert again["outcome"] == "unchanged"
            assert (again["backup"], again["sent_ns"]) == (sent["backup"], sent["sent_ns"])
            assert len(centre.snapshot()) == sent["parts"]

            forced = operator.send(force=True)["result"]
            assert forced["outcome"] == "sent"
            assert forced["backup"] != sent["backup"]
            centre.wait_until(lambda ms: len(ms) >= sent["parts"] + forced["parts"], 10)

            assert operator.send(force="yes")["reason"] == "argument 'force' must be true or false"
            assert agent.stop() == 0


def test_a_gateway_with_backups_off_or_nothing_learnt_says_so(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with Mosquitto() as broker:
        off = card(tmp_path / "off", broker, key, backup="[state_backup]\nenabled = false\n")
        learn(tmp_path / "off" / "state")
        with Subscriber(broker.host, broker.port, f"{BASE}/events") as events, running_agent(off) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            answer = Operator(broker, key, events).send()
            assert agent.stop() == 0
        assert (answer["status"], answer["reason"]) == (
            "failed",
            "state backups are off on this gateway ([state_backup] enabled = false)",
        )

        empty = card(tmp_path / "empty", broker, key)
        with Subscriber(broker.host, broker.port, f"{BASE}/events") as events, running_agent(empty) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            answer = Operator(broker, key, events).send()
            assert agent.stop() == 0
        assert answer["status"] == "ok"
        assert answer["result"] == {"outcome": "nothing", "reason": "nothing learnt yet"}
