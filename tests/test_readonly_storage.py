"""The card under the state directory goes read-only while the agent runs: the usual end of a
Raspberry Pi's SD card (ext4 meets I/O errors and the kernel stops all writes, `errors=remount-ro`).

The real thing, not a directory made unwritable: an ext4 image on a loop device, mounted with
`errors=remount-ro`, and ext4's own error path (`/sys/fs/ext4/<dev>/trigger_fs_error`, what a
failed block read does) turning it read-only under the running agent. A `mount -o remount,ro`
would not do: the kernel refuses it while files are open for writing (the outbox is). Recovery is
what a technician does, or a reboot: the file system unmounted, checked (`e2fsck`) and mounted again.
Skipped, with the reason, where this machine may not mount or lacks the tools.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import AgentProcess, start_agent
from tests.support.broker import Mosquitto, Subscriber
from tests.support.ext4_card import Card
from tests.support.testing import agent_config, outbox_last_seqs
from water_edge.buffer import async_outbox
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.types import Batch, OutboxRow
from water_edge.core.files import WRITE_PROBE, read_only_error
from water_edge.core.reading import Reading

pytestmark = pytest.mark.slow

PLC: dict[str, Any] = {
    "name": "plc", "kind": "fake", "poll_interval_ms": 100, "tags": [{"name": "flow", "amplitude": 1.0}]
}  # fmt: skip


def test_the_probe_tells_a_read_only_file_system(card: Card) -> None:
    state = card.mount / "state"
    state.mkdir()
    assert read_only_error(state) is None
    card.fail()
    error = read_only_error(state)
    assert error is not None
    assert error.errno == errno.EROFS
    assert list(state.iterdir()) == []  # no probe file left behind
    card.replace()
    assert read_only_error(state) is None
    # The journal may bring back the probe of before the failure; never more than that one.
    assert [p.name for p in state.iterdir()] in ([], [WRITE_PROBE])


def _bodies(subscriber: Subscriber, stream: str) -> list[dict[str, Any]]:
    return [m.json() for m in subscriber.snapshot() if m.topic.endswith(f"/{stream}")]


def _readings(subscriber: Subscriber) -> int:
    return sum(len(body["readings"]) for body in _bodies(subscriber, "plc"))


def _event_kinds(subscriber: Subscriber) -> list[str]:
    return [e["kind"] for body in _bodies(subscriber, "events") for e in body["events"]]


def _storage_lines(status: dict[str, Any]) -> list[str]:
    return [p for p in status["verdict"]["problems"] if p.startswith("storage read-only")]


def test_a_card_gone_read_only_the_agent_runs_on_sends_live_says_so_and_recovers(
    card: Card, tmp_path: Path
) -> None:
    state = card.mount / "state"
    config = tmp_path / "agent.toml"
    broker = Mosquitto()  # started later: the first readings wait in the outbox on the card
    config.write_text(
        agent_config(
            state,
            broker_port=broker.port,
            status_socket=tmp_path / "status.sock",  # not on the card: asked after it is replaced
            devices=[
                {
                    "name": "plc",
                    "kind": "fake",
                    "poll_interval_ms": 100,
                    "tags": [{"name": "flow", "amplitude": 1.0}],
                }
            ],
        )
    )
    agent: AgentProcess | None = None
    try:
        agent = start_agent(config)
        kept = agent.wait_status(lambda s: s["buffer"].get("rows", 0) >= 20, timeout=30)["buffer"]["rows"]
        # The plc rows committed to the card before it fails (the other rows are events: the agent's
        # start, and the 64 MiB card's own low space, host_disk_low).
        plc_kept = outbox_last_seqs(state / "outbox.sqlite")["plc"]

        card.fail()
        failed = agent.wait_status(lambda s: bool(_storage_lines(s)), timeout=30)
        # The alarm a technician reads, and the verdict monitoring reads.
        assert failed["verdict"]["state"] == "degraded"
        (line,) = _storage_lines(failed)
        assert f"{state}: Read-only file system" in line
        assert "the SD card may be failing" in line
        # Nothing on the card was lost: its rows are still counted.
        assert failed["buffer"]["rows"] >= kept
        card_epoch = failed["buffer"]["epoch"]
        assert agent.process.poll() is None

        # Held while the broker and the subscriber start, so that it sends nothing before the
        # subscriber listens (it reconnects at once otherwise, and the first messages are missed).
        agent.process.send_signal(signal.SIGSTOP)
        broker.start()
        with Subscriber(broker.host, broker.port, "water/#") as subscriber:
            agent.process.send_signal(signal.SIGCONT)
            # The alarm reaches the centre, and readings taken since flow live.
            subscriber.wait_until(lambda _m: "storage_read_only" in _event_kinds(subscriber), 30)
            status = agent.wait_status(lambda s: s["buffer"].get("not_durable_readings", 0) >= 30, timeout=30)
            assert status["buffer"]["read_only"] == f"{state}: Read-only file system"
            committed = status["pipeline"]["committed_readings"]
            subscriber.wait_until(lambda _m: _readings(subscriber) >= committed, 30)
            # The rows kept on the card came too (from the card, read-only as it is).
            on_card = {b["seq"] for b in _bodies(subscriber, "plc") if b["epoch"] == card_epoch}
            assert on_card >= set(range(1, plc_kept + 1))
            assert agent.process.poll() is None
            assert agent.log().count('"pipeline.append_failed"') == 0  # no stream of errors
            assert agent.log().count('"buffer.storage_read_only"') == 1

            card.replace()
            subscriber.wait_until(lambda _m: "storage_writable" in _event_kinds(subscriber), 30)
            back = agent.wait_status(lambda s: not _storage_lines(s), timeout=30)
            assert back["buffer"]["read_only"] is None
            assert back["buffer"]["not_durable_readings"] >= 30  # the count stays, since start

            assert agent.stop() == 0
            agent = None
            # The file on the card is whole, its seqs its own: the rows from memory came under an
            # epoch of their own, as from any new outbox.
            conn = sqlite3.connect(state / "outbox.sqlite")
            try:
                assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
                (last_seq,) = conn.execute("SELECT last_seq FROM streams WHERE stream = 'plc'").fetchone()
            finally:
                conn.close()
            sent = _bodies(subscriber, "plc")
            assert last_seq >= max(b["seq"] for b in sent if b["epoch"] == card_epoch)
            (memory_epoch,) = {b["epoch"] for b in sent} - {card_epoch}

            # A start after it: new seqs, never one the centre already has with other readings
            # (the centre drops a repeat of (epoch, stream, seq) unread).
            agent = start_agent(config)
            before = len(sent)
            subscriber.wait_until(lambda _m: len(_bodies(subscriber, "plc")) >= before + 5, 30)
            assert agent.stop() == 0
            agent = None
            by_key: dict[tuple[int, int], str] = {}
            for body in _bodies(subscriber, "plc"):
                readings = json.dumps(body["readings"], sort_keys=True)
                key = (body["epoch"], body["seq"])
                assert by_key.setdefault(key, readings) == readings, f"epoch and seq {key} reused"
            assert {epoch for epoch, _ in by_key} == {card_epoch, memory_epoch}
            for epoch in (card_epoch, memory_epoch):
                seqs = sorted(seq for e, seq in by_key if e == epoch)
                assert seqs == list(range(1, seqs[-1] + 1)), f"a gap in epoch {epoch}'s seqs"
    finally:
        if agent is not None:
            agent.kill()
        broker.stop()


def test_a_stop_on_a_read_only_card_is_clean(card: Card, tmp_path: Path) -> None:
    """The status socket in the state directory, as by default: it cannot be removed at the stop
    (before: `edge-agent: Read-only file system: .../status.sock`, exit code 1)."""
    state = card.mount / "state"
    config = tmp_path / "agent.toml"
    config.write_text(agent_config(state, devices=[PLC]))
    agent = start_agent(config)
    try:
        agent.wait_status(lambda s: s["pipeline"]["committed_readings"] > 0, timeout=30)
        card.fail()
        agent.wait_status(lambda s: bool(_storage_lines(s)), timeout=30)
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert "Read-only file system: " + str(state / "status.sock") not in agent.log()


async def test_the_outbox_goes_on_in_memory_and_back_to_the_card(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AsyncOutbox` alone: ids run on across the two files, the one in memory is an outbox of its
    own (its epoch, its seqs from 1), every row is leased once in order, acks of rows on the
    read-only card do not fail, and the card is used again with its own seqs."""
    path = card.mount / "state" / "outbox.sqlite"
    path.parent.mkdir()
    one = [Batch("plc", readings=[Reading("plc", "flow", 1, 1.0)])]
    box = await AsyncOutbox.open(path, max_bytes=2**24)
    monkeypatch.setattr(async_outbox, "PROBE_EVERY_S", 0.0)  # try the card at every append
    try:
        for _ in range(3):
            await box.append(one)
        epoch = box.epoch
        card.fail()
        for _ in range(3):
            await box.append(one)
        stats = await box.stats()
        assert stats.read_only == f"{path.parent}: Read-only file system"
        assert stats.not_durable_readings == 3
        rows = await box.lease(0, 100)
        assert [(r.stream, r.seq, r.epoch) for r in rows] == [("plc", q, epoch) for q in (1, 2, 3)]
        rows += await box.lease(rows[-1].id, 100)
        memory = rows[3:]
        assert [(r.stream, r.seq) for r in memory] == [("events", 1), ("plc", 1), ("plc", 2), ("plc", 3)]
        (memory_epoch,) = {r.epoch for r in memory}
        assert memory_epoch not in (epoch, None)
        assert [r.id for r in rows] == sorted(r.id for r in rows)
        assert await box.lease(rows[-1].id, 100) == []
        await box.ack([r.id for r in rows])  # the card's three stay on it; no error
        card.replace()
        await box.append(one)
        stats = await box.stats()
        assert stats.read_only is None
        assert box.epoch == epoch
        later = await box.lease(rows[-1].id, 100)
        assert [(r.stream, r.seq, r.epoch) for r in later] == [("events", 1, epoch), ("plc", 4, epoch)]
    finally:
        await box.close()
    with Outbox(path, max_bytes=2**24) as again:
        assert again.last_seqs() == {"plc": 4, "events": 1}
        assert [(r.seq, r.stream) for r in again.lease(0, 100)][:3] == [(1, "plc"), (2, "plc"), (3, "plc")]


async def test_a_card_mended_without_its_last_commits_never_gives_their_seqs_again(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make test, once: the card's last commits before it failed were read back (and sent) from the
    kernel's cache, but after `e2fsck` the file no longer held them, and the outbox gave their seqs
    again to new readings, which the centre drops as repeats. Here the mended card holds the file
    as it was after the first commit (seqs 2 and 3 lost, as then)."""
    path = card.mount / "state" / "outbox.sqlite"
    path.parent.mkdir()
    one = [Batch("plc", readings=[Reading("plc", "flow", 1, 1.0)])]
    box = await AsyncOutbox.open(path, max_bytes=2**24)
    monkeypatch.setattr(async_outbox, "PROBE_EVERY_S", 0.0)  # try the card at every append
    snapshot = card.mount.parent / "after-the-first-commit.sqlite"
    try:
        await box.append(one)
        with sqlite3.connect(path) as source, sqlite3.connect(snapshot) as copy:
            source.backup(copy)
        await box.append(one)
        await box.append(one)
        epoch = box.epoch
        sent = await box.lease(0, 100)
        assert [(r.stream, r.seq, r.epoch) for r in sent] == [("plc", q, epoch) for q in (1, 2, 3)]
        card.fail()
        await box.append(one)  # into memory
        card.replace()
        for leftover in path.parent.glob("outbox.sqlite*"):
            leftover.unlink()
        shutil.copyfile(snapshot, path)
        await box.append(one)  # back on the card
        assert (await box.stats()).read_only is None
        later = await box.lease(sent[-1].id, 100)  # from memory, then from the card
        later += await box.lease(later[-1].id, 100)
        on_card = [(r.stream, r.seq) for r in later if r.epoch == epoch]
        assert on_card == [("events", 1), ("plc", 4)]
    finally:
        await box.close()
    with Outbox(path, max_bytes=2**24) as again:
        assert again.last_seqs()["plc"] == 4


async def test_a_restart_or_a_reboot_before_the_card_is_back_never_gives_a_seq_of_memory_again(
    card: Card,
) -> None:
    """The process ends while the card is read-only (a stop, the watchdog, a reboot: nothing in
    memory survives it); the card is mended and the agent starts on it. New readings must never
    get an (epoch, stream, seq) the centre already had from memory: it would drop them as repeats.
    They cannot: the outbox in memory had an epoch of its own."""
    path = card.mount / "state" / "outbox.sqlite"
    path.parent.mkdir()
    one = [Batch("plc", readings=[Reading("plc", "flow", 1, 1.0)])]
    box = await AsyncOutbox.open(path, max_bytes=2**24)
    await box.append(one)
    card.fail()
    for _ in range(3):
        await box.append(one)  # from memory
    leased: list[OutboxRow] = []
    while more := await box.lease(leased[-1].id if leased else 0, 100):  # the card's, then memory's
        leased += more
    await box.close()
    card.replace()
    box = await AsyncOutbox.open(path, max_bytes=2**24)
    try:
        await box.append(one)
        rows = await box.lease(0, 100)
    finally:
        await box.close()
    assert [(r.stream, r.seq) for r in rows] == [("plc", 1), ("plc", 2)]
    from_memory = {(r.epoch, r.stream, r.seq) for r in leased[1:]}  # all but the card's plc 1
    assert len(from_memory) == 4
    assert {(r.epoch, r.stream, r.seq) for r in rows}.isdisjoint(from_memory)
    assert len({r.epoch for r in leased}) == 2


def test_a_start_on_a_card_already_read_only_runs_from_memory_and_takes_the_card_back(
    card: Card, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What systemd's restart meets when the card failed and the agent stopped: before, it exited
    with one line (`cannot open lock file: ... Read-only file system`, code 1) at every start."""
    state = card.mount / "state"
    config = tmp_path / "agent.toml"
    config.write_text(agent_config(state, status_socket=tmp_path / "status.sock", devices=[PLC]))
    agent = start_agent(config)  # no broker: what it reads stays on the card
    try:
        agent.wait_status(lambda s: s["buffer"].get("rows", 0) >= 5, timeout=30)
        assert agent.stop() == 0
    finally:
        agent.kill()
    on_card = outbox_last_seqs(state / "outbox.sqlite")["plc"]
    card.fail()
    agent = start_agent(config)
    try:
        failed = agent.wait_status(lambda s: s["pipeline"]["committed_readings"] >= 10, timeout=30)
        (line,) = _storage_lines(failed)
        assert "the SD card may be failing" in line
        assert failed["buffer"]["rows"] >= on_card  # the card's rows, still there
        card.replace()
        agent.wait_status(lambda s: not _storage_lines(s), timeout=30)
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert "Traceback" not in agent.log()
    # The card's rows are all there, and its seqs go on from its own (those from memory were
    # under the memory outbox's epoch).
    conn = sqlite3.connect(state / "outbox.sqlite")
    try:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
        seqs = [seq for (seq,) in conn.execute("SELECT seq FROM outbox WHERE stream = 'plc' ORDER BY id")]
    finally:
        conn.close()
    assert len(seqs) >= on_card
    assert seqs == list(range(1, len(seqs) + 1))
