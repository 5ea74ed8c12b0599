"""Agents on boards told apart by `[gateway] board_id_file` (agent.board_change), each with its
state on its own 'card' (a directory): for the tests of a card copied or moved to another board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.testing import agent_config

# A fake PLC whose one tag changes every poll: rows to send, seqs to count.
FLOW_PLC: dict[str, Any] = {
    "name": "plc",
    "kind": "fake",
    "poll_interval_ms": 100,
    "tags": [{"name": "flow", "offset": 50.0, "amplitude": 5.0, "period_s": 7.0}],
}


def card_config(card: Path, board: Path, broker_port: int | None = None) -> Path:
    """`card/agent.toml`: an agent whose state is `card/state`, on the board whose ID `board`
    holds (`broker_port` None: a port nothing listens on, the agent runs offline)."""
    text = agent_config(
        card / "state", broker_port=broker_port, status_socket=card / "status.sock", devices=[FLOW_PLC]
    )
    config = card / "agent.toml"
    config.write_text(text.replace("[gateway]\n", f'[gateway]\nboard_id_file = "{board}"\n', 1))
    return config


def board_id_file(directory: Path, name: str) -> Path:
    """A board's ID file holding `name`."""
    path = directory / f"{name}.id"
    path.write_text(f"{name}\n")
    return path
