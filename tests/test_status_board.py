"""`edge-agent status` shows the board the card runs on and, when the agent's start found the card
on another board (a card moved to a replacement board, or a copy of another gateway's card), the
board it came from and when that start was (agent.board_change). Real agents, as processes, on
boards told apart by `[gateway] board_id_file`; no broker (they run offline)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from tests.support.agent_proc import running_agent
from tests.support.boards import board_id_file, card_config
from tests.support.cli import edge_agent
from tests.support.testing import STATUS_SCHEMA


def _status(card: Path) -> tuple[list[str], dict[str, Any]]:
    """`edge-agent status`'s text lines and `status --json`'s document for the agent on `card`."""
    socket = str(card / "status.sock")
    text = edge_agent("status", "--socket", socket)
    assert text.returncode in (0, 1), text.stderr
    as_json = edge_agent("status", "--json", "--socket", socket)
    snap: dict[str, Any] = orjson.loads(as_json.stdout)
    jsonschema.validate(snap, STATUS_SCHEMA)
    return text.stdout.splitlines(), snap


def _board_lines(lines: list[str]) -> list[str]:
    """The board's line(s) among the agent's (indented under `edge-agent `)."""
    return [line.strip() for line in lines if line.strip().startswith("board ")]


def test_status_shows_the_board_and_the_one_the_card_was_moved_from(tmp_path: Path) -> None:
    board_a, board_b = board_id_file(tmp_path, "BOARD-A"), board_id_file(tmp_path, "BOARD-B")
    card = tmp_path / "card"
    card.mkdir()
    with running_agent(card_config(card, board_a)) as agent:
        agent.wait_status(lambda s: s["agent"]["uptime_s"] >= 0)
        lines, snap = _status(card)
        assert agent.stop() == 0
    assert _board_lines(lines) == [f"board    BOARD-A ({board_a})"]
    assert snap["board"] == {
        "id": "BOARD-A",
        "source": str(board_a),
        "previous_board": None,
        "changed_ns": None,
    }
    # The card moved to a replacement board.
    before_ns = time.time_ns()
    with running_agent(card_config(card, board_b)) as agent:
        agent.wait_status(lambda s: s["agent"]["uptime_s"] >= 0)
        lines, snap = _status(card)
        assert agent.stop() == 0
    moved = snap["board"]
    assert (moved["id"], moved["source"], moved["previous_board"]) == ("BOARD-B", str(board_b), "BOARD-A")
    assert before_ns <= moved["changed_ns"] <= time.time_ns()
    recorded = json.loads((card / "state" / "board.json").read_text())
    assert moved["changed_ns"] == recorded["since_ns"]
    (line,) = _board_lines(lines)
    assert line.startswith(f"board    BOARD-B ({board_b})  card moved from board BOARD-A at this start (")
    # The next start on the same board found nothing moved.
    with running_agent(card_config(card, board_b)) as agent:
        agent.wait_status(lambda s: s["agent"]["uptime_s"] >= 0)
        lines, snap = _status(card)
        assert agent.stop() == 0
    assert _board_lines(lines) == [f"board    BOARD-B ({board_b})"]
    assert snap["board"]["previous_board"] is None


def test_a_board_whose_id_cannot_be_read_has_no_line(tmp_path: Path) -> None:
    """An unreadable board_id_file (logged, warned of by check-config): nothing to show, and the
    document says null rather than a board it does not know."""
    card = tmp_path / "card"
    card.mkdir()
    with running_agent(card_config(card, tmp_path / "missing.id")) as agent:
        agent.wait_status(lambda s: s["agent"]["uptime_s"] >= 0)
        lines, snap = _status(card)
        assert agent.stop() == 0
    assert _board_lines(lines) == []
    assert snap["board"] is None
