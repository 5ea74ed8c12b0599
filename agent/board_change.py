"""A card found on another board than the one its state was made on.

Utilities roll gateways out from one prepared card image, and replace a failed board by moving its
card to a new one. An image taken after the agent had run once holds that gateway's outbox, its
epoch and seqs, and its identity: every copy would send under the same (epoch, stream, seq) as
the original, and the centre keeps one of them and refuses the other's readings as conflicts
(docs/fleet.md). The agent records the board it runs on (`<state_dir>/board.json`); at a start on
another board it names the outbox by a new epoch before anything is sent, so that neither the
copy's readings nor the original's are taken for the other's, logs and sends a `board_changed`
warning saying what to do if the card is a copy (its own identity and config), and records the new
board. A card moved to a replacement board loses nothing: the rows it holds go under the new epoch.
`edge-agent status` shows the board, and the previous one when this start found the card moved
(`BoardStatus`, from what the check found: status reads no file).

The board's ID is `[gateway] board_id_file`'s content when configured (hardware whose machine id
is copied with the image, a unique ID written at manufacture), else a Raspberry Pi's CPU serial,
else `/etc/machine-id` (`provisioning.identity.hardware_serial`). Without any, nothing is checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core import units
from water_edge.core.errors import BufferError
from water_edge.core.files import read_json_state, write_json_state
from water_edge.core.reading import Event, now_ns
from water_edge.provisioning.identity import hardware_serial

log = structlog.get_logger(__name__)

BOARD_FILE: Final = "board.json"
MAX_BOARD_ID: Final = 256  # characters kept of a configured ID file's content


@dataclass(frozen=True, slots=True)
class Board:
    id: str
    source: str  # where the ID was read: a file, or /proc/cpuinfo's Serial


@dataclass(frozen=True, slots=True)
class BoardStatus:
    """The board as the agent's start found it: what `edge-agent status` shows (`board`)."""

    id: str
    source: str  # where the ID was read
    previous_board: str | None  # the board the card was on before, when this start found it moved
    # when that start found it (board.json's `since_ns`); None with a previous board: the card
    # could not be written, so the change is neither recorded nor the epoch renewed yet
    changed_ns: int | None

    def status_lines(self) -> list[str]:
        """`board    1000000c0ffee42 (/proc/cpuinfo Serial)`, and when this start found the card
        moved: `  card moved from board 10000000deadbeef at this start (2026-12-07 15:40:25.123)`."""
        line = f"board    {self.id} ({self.source})"
        if self.previous_board is None:
            return [line]
        moved = f"{line}  card moved from board {self.previous_board}"
        if self.changed_ns is None:
            return [f"{moved}: not recorded, the card takes no writes"]
        return [f"{moved} at this start ({units.timestamp(self.changed_ns)})"]


@dataclass(frozen=True, slots=True)
class BoardCheck:
    """What `board_check` found: the `board_changed` event to send, if any, and the board for status."""

    events: list[Event]
    status: BoardStatus | None  # None when the board's ID cannot be read


def this_board(configured_file: Path | None) -> Board | None:
    """The board the agent runs on, or None (logged) when its ID cannot be read."""
    if configured_file is None:
        found, source = hardware_serial()
        if found is None:
            log.info("gateway.board_unknown", reason=source)
            return None
        return Board(found, source)
    try:
        text = configured_file.read_text(errors="replace").strip()
        error = None if text else "the file is empty"
    except OSError as exc:
        text, error = "", exc.strerror or str(exc)
    if error is not None:
        log.error(
            "gateway.board_id_unreadable", key="gateway.board_id_file", path=str(configured_file), error=error
        )
        return None
    return Board(text[:MAX_BOARD_ID], str(configured_file))


def _recorded(state_dir: Path) -> str | None:
    record = read_json_state(state_dir / BOARD_FILE, "gateway.board_record")
    board = record.get("board_id") if isinstance(record, dict) else None
    return board if isinstance(board, str) and board else None


async def check_board(
    state_dir: Path, board: Board | None, outbox: AsyncOutbox, client_certificate: Path | None
) -> list[Event]:
    """`board_check`'s event, if any."""
    return (await board_check(state_dir, board, outbox, client_certificate)).events


async def board_check(
    state_dir: Path, board: Board | None, outbox: AsyncOutbox, client_certificate: Path | None
) -> BoardCheck:
    """Compare the board with the one recorded; on another board, renew the outbox's epoch and
    return the `board_changed` event (`client_certificate`: the uplink's, which a copy of the card
    shares with the original), with the board as status shows it. Run before the uplink is made:
    it reads the epoch once."""
    if board is None:
        return BoardCheck([], None)
    same = BoardCheck([], BoardStatus(board.id, board.source, None, None))
    previous = await asyncio.to_thread(_recorded, state_dir)
    if previous == board.id:
        return same
    since_ns = now_ns()
    record: dict[str, Any] = {"board_id": board.id, "source": board.source, "since_ns": since_ns}
    if previous is None:
        # A first start, an install from before the record, or a record lost: this board is where
        # the state is from now on (a copy made before it existed is caught at its next start).
        await asyncio.to_thread(write_json_state, state_dir / BOARD_FILE, record, "gateway.board_record")
        return same
    old_epoch = outbox.epoch
    why: str | None
    try:
        new_epoch = await outbox.renew_epoch()
    except BufferError as exc:  # a full card: the agent runs on; the next start tries again
        new_epoch, why = None, str(exc)
    else:
        why = outbox.read_only
    if new_epoch is None:
        # A read-only card's outbox in memory sends under an epoch of its own already. The board
        # is recorded, and the epoch renewed, at a start that can write.
        log.warning("gateway.board_changed_not_recorded", previous=previous, board=board.id, reason=why)
        return BoardCheck([], BoardStatus(board.id, board.source, previous, None))
    record["previous"] = {"board_id": previous, "epoch": old_epoch}
    await asyncio.to_thread(write_json_state, state_dir / BOARD_FILE, record, "gateway.board_record")
    shared = client_certificate is not None and await asyncio.to_thread(client_certificate.exists)
    detail: dict[str, Any] = {
        "previous_board": previous,
        "board": board.id,
        "board_source": board.source,
        "previous_epoch": old_epoch,
        "epoch": new_epoch,
        "client_certificate": str(client_certificate) if shared else None,
        "what_to_do": (
            "a card moved to a replacement board: nothing; a copy of another gateway's card: give "
            "it its own [gateway] id and identity (edge-agent provision), as it shares the "
            "original's"
        ),
    }
    log.warning("gateway.board_changed", **detail)
    return BoardCheck(
        [Event("board_changed", "agent", now_ns(), "warning", detail=detail)],
        BoardStatus(board.id, board.source, previous, since_ns),
    )
