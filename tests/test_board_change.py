"""A card on another board than the one its state was made on (agent.board_change): a copy of a
running gateway's card (a rollout from one prepared image taken after the agent ran) and a card
moved to a replacement board. Real agents, a real Mosquitto, the outbox on disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.agent_proc import running_agent
from tests.support.boards import board_id_file, card_config
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.cli import edge_agent
from tests.support.ext4_card import Card
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE
from water_edge.agent.board_change import BOARD_FILE, Board, check_board, this_board
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading
from water_edge.provisioning.identity import hardware_serial

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"


def _plc(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"{TOPIC}/plc"]


def _board_changes(messages: list[Received]) -> list[dict[str, Any]]:
    return [
        e["detail"]
        for m in messages if m.topic == f"{TOPIC}/events"
        for e in m.json()["events"] if e["kind"] == "board_changed"
    ]  # fmt: skip


def test_a_copy_of_a_gateways_card_on_another_board_sends_under_its_own_epoch_and_says_so(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Before: the copy numbered its rows as the original did, under the original's epoch, and the
    centre kept one gateway's readings and refused the other's as conflicts (docs/fleet.md)."""
    board_a, board_b = board_id_file(tmp_path, "BOARD-A"), board_id_file(tmp_path, "BOARD-B")
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub:
        with running_agent(card_config(original, board_a, mosquitto.port)) as agent:
            sub.wait_until(lambda m: len(_plc(m)) >= 3, timeout=20)
            assert agent.stop() == 0
        (epoch,) = {m["epoch"] for m in _plc(sub.snapshot())}
        # The image: the card as it was when the agent had run, on another board.
        shutil.copytree(original, copy, ignore=shutil.ignore_patterns("*.sock", "agent.toml"))
        seen = len(sub.snapshot())
        with running_agent(card_config(copy, board_b, mosquitto.port)) as agent:
            got = sub.wait_until(lambda m: len(_plc(m[seen:])) >= 3 and _board_changes(m[seen:]), timeout=20)
            assert agent.stop() == 0
        (change,) = _board_changes(got[seen:])
        copy_epochs = {m["epoch"] for m in _plc(sub.snapshot()[seen:])}
        copy_seqs = {m["seq"] for m in _plc(sub.snapshot()[seen:])}
        seen = len(sub.snapshot())
        # The original goes on where it was, on its own board: same epoch, no change said.
        with running_agent(card_config(original, board_a, mosquitto.port)) as agent:
            sub.wait_until(lambda m: len(_plc(m[seen:])) >= len(copy_seqs) + 2, timeout=20)
            assert agent.stop() == 0
        after = sub.snapshot()[seen:]
    assert change["previous_board"] == "BOARD-A"
    assert change["board"] == "BOARD-B"
    assert change["previous_epoch"] == epoch
    assert change["epoch"] != epoch
    assert change["client_certificate"] is None  # no TLS here: nothing of the original's to share
    assert copy_epochs == {change["epoch"]}
    assert not _board_changes(after)
    assert {m["epoch"] for m in _plc(after)} == {epoch}
    # Both numbered on from the image: the same seqs, which only the epoch tells apart.
    assert copy_seqs & {m["seq"] for m in _plc(after)}


def test_a_card_moved_to_a_replacement_board_sends_every_row_it_held(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    board_a, board_b = board_id_file(tmp_path, "BOARD-A"), board_id_file(tmp_path, "BOARD-B")
    card = tmp_path / "card"
    card.mkdir()
    # The old board, its link down: rows wait in the outbox, then the board fails.
    with running_agent(card_config(card, board_a, broker_port=None)) as agent:
        agent.wait_status(lambda s: s["pipeline"]["committed_readings"] >= 10, timeout=20)
        assert agent.stop() == 0
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub,
        running_agent(card_config(card, board_b, mosquitto.port)) as agent,
    ):
        got = sub.wait_until(lambda m: _board_changes(m) and len(_plc(m)) >= 15, timeout=20)
        assert agent.stop() == 0
    (change,) = _board_changes(got)
    plc = _plc(sub.snapshot())
    assert {m["epoch"] for m in plc} == {change["epoch"]}
    seqs = sorted(m["seq"] for m in plc)
    assert seqs == list(range(1, len(seqs) + 1))  # from the first row the old board committed


# --- the parts -------------------------------------------------------------------------------------


def test_the_boards_own_id_is_a_pis_cpu_serial_else_the_machine_id(tmp_path: Path) -> None:
    cpuinfo, machine_id = tmp_path / "cpuinfo", tmp_path / "machine-id"
    machine_id.write_text("4c4c4544003610458058b4c04f4e3432\n")
    cpuinfo.write_text("processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000c0ffee42\n")
    assert hardware_serial(cpuinfo, machine_id) == ("10000000c0ffee42", f"{cpuinfo} Serial")
    cpuinfo.write_text("Serial\t\t: 0000000000000000\n")  # a board without one
    assert hardware_serial(cpuinfo, machine_id) == ("4c4c4544003610458058b4c04f4e3432", str(machine_id))
    machine_id.write_text("")
    assert hardware_serial(cpuinfo, machine_id) == (None, f"no Serial in {cpuinfo}, {machine_id} is empty")


def test_a_board_id_file_that_cannot_be_read_is_named_with_its_key_and_nothing_is_checked(
    tmp_path: Path,
) -> None:
    configured = tmp_path / "board-id"
    configured.write_text("  PLANT7-GW01 \n")
    assert this_board(configured) == Board("PLANT7-GW01", str(configured))
    with capture_logs() as logs:
        assert this_board(tmp_path / "missing") is None
        configured.write_text("\n")
        assert this_board(configured) is None
    assert [(e["event"], e["key"], e["error"]) for e in logs] == [
        ("gateway.board_id_unreadable", "gateway.board_id_file", "No such file or directory"),
        ("gateway.board_id_unreadable", "gateway.board_id_file", "the file is empty"),
    ]


def _batch(stream: str, n: int) -> Batch:
    return Batch(stream, [Reading("plc", "flow", i, float(i)) for i in range(1, n + 1)])


def test_a_renewed_epoch_names_the_rows_already_held_and_the_seqs_count_on(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=2**24)
    try:
        box.append([_batch("plc", 2), _batch("plc", 2)])
        old = box.epoch
        new = box.renew_epoch()
        assert new != old
        assert box.epoch == new
        box.append([_batch("plc", 2)])
        rows = box.lease(0, 10)
        assert [(r.seq, r.epoch) for r in rows] == [(1, new), (2, new), (3, new)]
    finally:
        box.close()
    box = Outbox(path, max_bytes=2**24)
    try:
        assert box.epoch == new  # committed, not only in memory
    finally:
        box.close()


async def test_the_board_is_recorded_at_the_first_start_and_the_epoch_renewed_only_on_another(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    async with await AsyncOutbox.open(state / "outbox.sqlite", max_bytes=2**24) as box:
        first = box.epoch
        assert await check_board(state, Board("A", "test"), box, None) == []
        assert (state / BOARD_FILE).exists()
        assert await check_board(state, Board("A", "test"), box, None) == []
        assert box.epoch == first
        assert await check_board(state, None, box, None) == []  # no ID: nothing checked
        certificate = state / "identity" / "current" / "cert.pem"
        certificate.parent.mkdir(parents=True)
        certificate.write_text("not read, only seen")
        (event,) = await check_board(state, Board("B", "test"), box, certificate)
        assert event.kind == "board_changed"
        assert event.severity == "warning"
        assert event.detail is not None
        assert (event.detail["previous_board"], event.detail["board"]) == ("A", "B")
        assert event.detail["previous_epoch"] == first
        assert event.detail["epoch"] == box.epoch != first
        assert event.detail["client_certificate"] == str(certificate)
        assert await check_board(state, Board("B", "test"), box, None) == []
        # A record that cannot be read is a start without one: recorded again, no change said.
        (state / BOARD_FILE).write_text("{torn")
        renewed = box.epoch
        assert await check_board(state, Board("C", "test"), box, None) == []
        assert box.epoch == renewed


@pytest.mark.slow
async def test_on_a_read_only_card_the_change_waits_for_a_start_that_can_write(card: Card) -> None:
    state = card.mount / "state"
    state.mkdir()
    async with await AsyncOutbox.open(state / "outbox.sqlite", max_bytes=2**24) as box:
        await check_board(state, Board("A", "test"), box, None)
        epoch = box.epoch
    card.fail()
    async with await AsyncOutbox.open(state / "outbox.sqlite", max_bytes=2**24) as box:
        assert box.read_only is not None
        with capture_logs() as logs:
            assert await check_board(state, Board("B", "test"), box, None) == []
        assert [e["event"] for e in logs] == ["gateway.board_changed_not_recorded"]
    card.replace()
    async with await AsyncOutbox.open(state / "outbox.sqlite", max_bytes=2**24) as box:
        assert box.epoch == epoch
        (event,) = await check_board(state, Board("B", "test"), box, None)
        assert event.detail is not None
        assert event.detail["previous_epoch"] == epoch != box.epoch


@pytest.mark.slow
async def test_a_card_failing_as_the_epoch_is_renewed_runs_on_and_tries_again_at_the_next_start(
    card: Card,
) -> None:
    state = card.mount / "state"
    state.mkdir()
    async with await AsyncOutbox.open(state / "outbox.sqlite", max_bytes=2**24) as box:
        await check_board(state, Board("A", "test"), box, None)
        epoch = box.epoch
        card.fail()  # between the outbox's opening and the renewal: nothing has written since
        with capture_logs() as logs:
            assert await check_board(state, Board("B", "test"), box, None) == []
        (said,) = [e for e in logs if e["event"] == "gateway.board_changed_not_recorded"]
        assert "renew_epoch failed" in said["reason"], said
        assert box.epoch == epoch
    card.replace()
    async with await AsyncOutbox.open(state / "outbox.sqlite", max_bytes=2**24) as box:
        (event,) = await check_board(state, Board("B", "test"), box, None)
        assert event.detail is not None
        assert event.detail["previous_epoch"] == epoch != box.epoch


def test_check_config_warns_of_a_board_id_file_it_cannot_use(tmp_path: Path) -> None:
    board = tmp_path / "board-id"
    config = card_config(tmp_path, board, broker_port=None)
    run = edge_agent("check-config", "-c", str(config))
    assert run.returncode == 0, run.stderr  # the agent runs; only the check is lost
    assert f'warning: gateway.board_id_file = "{board}": no such file' in run.stderr
    board.write_text("\n")
    run = edge_agent("check-config", "-c", str(config))
    assert f'warning: gateway.board_id_file = "{board}": empty' in run.stderr
    board.write_text("PLANT7-GW01\n")
    assert "board_id_file" not in edge_agent("check-config", "-c", str(config)).stderr
