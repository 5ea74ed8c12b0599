"""Signed commands to the agent a test runs (`write_agent_config`'s gateway): an operator's public
key as `[[security.operators]]` takes it (`operator_security`: the whole `[security]` of one
operator), and the events that come back on the gateway's topic."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.broker import Received
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE

EVENTS_TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/events"


def public_b64(key: Ed25519PrivateKey) -> str:
    """The operator's raw public key, base64: an operator's `public_key`."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def operator_security(key: Ed25519PrivateKey, commands: Sequence[str]) -> str:
    """A `[security]` fragment with one operator, `control-room`, whose `key` may sign `commands`."""
    return (
        "[security]\n[[security.operators]]\n"
        f'name = "control-room"\npublic_key = "{public_b64(key)}"\ncommands = {json.dumps(list(commands))}\n'
    )


def events(messages: Sequence[Received], kind: str) -> list[dict[str, Any]]:
    """The gateway's events of `kind` among `messages`, in order."""
    return [
        event
        for m in messages if m.topic == EVENTS_TOPIC
        for event in m.json()["events"] if event["kind"] == kind
    ]  # fmt: skip


def command_results(messages: Sequence[Received]) -> list[dict[str, Any]]:
    """The details of the gateway's `command_result` events among `messages`, in order."""
    return [event["detail"] for event in events(messages, "command_result")]
