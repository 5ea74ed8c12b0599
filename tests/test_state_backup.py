"""The agent sends its learnt state to the centre by itself (agent/state_backup.py, `[state_backup]`).

Real parts: a real Mosquitto, a real `MqttUplink` (or `SparkplugUplink`), a real export of a state
directory; a subscriber stands in for the centre, collects the parts on `water/+/+/state_backup`,
joins them by their headers, and the joined archive must be taken by `edge-agent state import`
(`state_transfer.import_state`) into an empty directory with every file byte-identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.impaired_link import ImpairedLink
from tests.support.sparkplug import edge_config
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, STATUS_SCHEMA, eventually, write_agent_config
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config
from tests.test_status_document import as_received
from water_edge.agent.backup_parts import FORMAT
from water_edge.agent.config.load import load_config
from water_edge.agent.config.schema import StateBackupSection
from water_edge.agent.metrics_export import exposition_text
from water_edge.agent.state_backup import RECORD, WORK_DIR, Outcome, StateBackup, fingerprint
from water_edge.agent.state_transfer import import_state, learnt_files
from water_edge.agent.status_document import StatusDocument
from water_edge.agent.uplink.config import SparkplugConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.agent.uplink.sparkplug.catalog import Catalog
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.agent.uplink.transport import TooLargeError
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core import units
from water_edge.core.errors import ConfigError
from water_edge.core.reading import Event

BACKUPS = "water/+/+/state_backup"
TOPIC = f"water/{SITE}/{GATEWAY}/state_backup"


def learn(state_dir: Path, seed: int = 1) -> dict[str, bytes]:
    """A state directory with learnt files (one SQLite history among them) and files that are not
    learnt state; the learnt files' relative names and bytes as an import must give them back."""
    rng = hashlib.sha256(str(seed).encode()).digest()
    files = {
        "leak/hp1/baseline.json": json.dumps({"nights": 7, "seed": seed}).encode(),
        # incompressible, so the archive takes several 4 KiB parts
        "pump/p1/calibration.bin": b"".join(
            hashlib.sha256(rng + i.to_bytes(4, "big")).digest() for i in range(600)
        ),
        "learnt_tags.json": b'{"meter1": ["volume", "flow"]}',
    }
    for name, data in files.items():
        (state_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (state_dir / name).write_bytes(data)
    history = state_dir / "flow_leak" / "history.sqlite"
    history.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(history) as db:
        db.execute("CREATE TABLE IF NOT EXISTS nights (night TEXT, litres REAL)")
        db.execute("INSERT INTO nights VALUES (?, ?)", (f"2026-12-0{seed}", 12.5 * seed))
    db.close()
    files["flow_leak/history.sqlite"] = _content(history)
    (state_dir / "outbox.sqlite").write_bytes(b"not learnt state")  # never in a backup
    return files


def section(**overrides: Any) -> StateBackupSection:
    """Settings with the short times a test needs (the loader takes an interval of an hour at least)."""
    values: dict[str, Any] = {"first_after": 0.0, "part_size": 4096, "interval": 3600.0}
    values.update(overrides)
    return StateBackupSection.model_construct(**values)


def joined(messages: list[Received], site: str = SITE, gateway: str = GATEWAY) -> dict[str, bytes]:
    """The archives the parts make, by backup id; each part checked against its header."""
    parts: dict[str, dict[int, bytes]] = {}
    counts: dict[str, int] = {}
    for message in messages:
        head, _, body = message.payload.partition(b"\n")
        header = json.loads(head)
        assert header["format"] == FORMAT
        assert (header["site"], header["gateway"]) == (site, gateway)
        assert hashlib.sha256(body).hexdigest() == header["part_sha256"]
        assert (message.qos, message.retain) == (1, False)
        parts.setdefault(header["backup"], {})[header["part"]] = body
        counts[header["backup"]] = header["parts"]
    archives = {}
    for backup, got in parts.items():
        assert sorted(got) == list(range(counts[backup])), f"{backup}: parts missing"
        archives[backup] = b"".join(got[i] for i in range(counts[backup]))
    return archives


def imported(archive: bytes, into: Path, site: str = SITE, gateway: str = GATEWAY) -> dict[str, bytes]:
    """What `edge-agent state import` of `archive` puts into the empty directory `into`."""
    import_state(into / "backup.tar.gz", into, site, gateway, content=archive)
    return {path.as_posix(): _content(into / path) for path in learnt_files(into)}


def _content(path: Path) -> bytes:
    """A file's bytes; a SQLite database's SQL dump (the export copies one with SQLite's backup
    API, which writes its own header counters: the same rows, not the same bytes)."""
    if path.suffix != ".sqlite":
        return path.read_bytes()
    db = sqlite3.connect(path)
    try:
        return "\n".join(db.iterdump()).encode()
    finally:
        db.close()


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.seen.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.seen]


@pytest.fixture
async def online(mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink) -> MqttUplink:
    run = await start_uplink(mqtt_config(mosquitto), outbox)
    await eventually(lambda: run.uplink.health().connected, 10, what="the uplink online")
    return run.uplink


async def test_the_learnt_state_reaches_the_centre_and_imports_byte_identical(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    files = learn(state)
    backup = StateBackup(section(), state, SITE, GATEWAY, online)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        outcome = await backup.attempt()
        assert outcome.result == "sent", outcome
        sent = outcome.sent
        assert sent is not None
        assert sent.parts >= 5, sent  # several 4 KiB parts
        received = await centre.wait_until_async(lambda ms: len(ms) >= sent.parts, 10)
    assert {m.topic for m in received} == {TOPIC}
    archives = joined(received)
    assert list(archives) == [sent.backup]
    assert len(archives[sent.backup]) == sent.bytes
    assert imported(archives[sent.backup], tmp_path / "new-card") == files
    # What the centre acknowledged is recorded, outside the learnt state (never exported itself).
    record = json.loads((state / RECORD).read_text())
    assert (record["backup"], record["parts"], record["files"]) == (sent.backup, sent.parts, 4)
    assert Path(RECORD) not in set(learnt_files(state))
    health = backup.health()
    assert (health.state, health.backup, health.failures, health.sent) == ("sent", sent.backup, 0, 1)
    line = health.status_lines()[0]
    assert line.startswith("state backup: sent "), line
    assert f"({units.size(sent.bytes)}, {sent.parts} parts, 4 files); next " in line, line


async def test_an_unchanged_state_is_not_sent_again_and_a_changed_one_is(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(), state, SITE, GATEWAY, online)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        first = await backup.attempt()
        assert first.sent is not None
        await centre.wait_until_async(lambda ms: len(ms) >= first.sent.parts, 10)
        # The archive's bytes differ at every export (they carry the time): the files do not.
        assert (await backup.attempt()).result == "unchanged"
        # ...nor after a restart: the record says what the centre has.
        again = StateBackup(section(), state, SITE, GATEWAY, online)
        assert (await again.attempt()).result == "unchanged"
        assert again.health().backup == first.sent.backup
        await asyncio.sleep(0.5)
        assert len(centre.snapshot()) == first.sent.parts, "an unchanged state was sent again"

        files = learn(state, seed=2)  # a night later: the baselines moved
        second = await backup.attempt()
        assert second.sent is not None
        assert second.sent.backup != first.sent.backup
        total = first.sent.parts + second.sent.parts
        received = await centre.wait_until_async(lambda ms: len(ms) >= total, 10)
    archives = joined(received)
    assert imported(archives[second.sent.backup], tmp_path / "new-card") == files


def rolling_history(state_dir: Path, name: str, rows: int) -> None:
    """A pump's or machine's rolling feature history, as its store keeps one (a row a sample)."""
    path = state_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS samples (ts INTEGER, features BLOB)")
        db.executemany("INSERT INTO samples VALUES (?, ?)", ((i, os.urandom(32)) for i in range(rows)))
    db.close()


async def test_the_rolling_histories_stay_on_the_card_unless_asked_for(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    # ~75 MB a pump over 14 days at 1 s: sent daily they would cost a cellular link that much, and
    # a new card needs only the calibrations beside them to detect.
    state = tmp_path / "state"
    files = learn(state)
    histories = ("pump/p1/history.sqlite", "machine_sound/m1/history.sqlite")
    for name in histories:
        rolling_history(state, name, 2000)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        lean = await StateBackup(section(part_size=64 * 1024), state, SITE, GATEWAY, online).attempt()
        assert lean.sent is not None
        received = await centre.wait_until_async(lambda ms: len(ms) >= lean.sent.parts, 10)
    assert imported(joined(received)[lean.sent.backup], tmp_path / "new-card") == files
    assert lean.sent.files == len(files)

    other = tmp_path / "other"
    other.mkdir()
    rolling_history(other, "pump/p1/history.sqlite", 10)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        whole = await StateBackup(section(histories=True), other, SITE, GATEWAY, online).attempt()
        assert whole.sent is not None
        received = await centre.wait_until_async(lambda ms: len(ms) >= whole.sent.parts, 10)
    assert list(imported(joined(received)[whole.sent.backup], tmp_path / "new-card-2")) == [
        "pump/p1/history.sqlite"
    ]


@contextlib.contextmanager
def running(backup: StateBackup) -> Iterator[StateBackup]:
    """`backup.run()` as the agent runs it, a task on the test's loop, cancelled at the end."""
    task = asyncio.create_task(backup.run())
    try:
        yield backup
    finally:
        task.cancel()


async def attempt_with_peak(backup: StateBackup) -> tuple[Outcome, int]:
    """One attempt, and the peak of Python memory (bytes objects included) while it ran."""
    tracemalloc.start()
    try:
        outcome = await backup.attempt()
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def large_history(state_dir: Path) -> Path:
    """A pump's rolling history of 16 MiB of random (incompressible) rows."""
    history = state_dir / "pump" / "p1" / "history.sqlite"
    history.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(history)) as db:
        db.execute("CREATE TABLE samples (sample BLOB)")
        db.executemany("INSERT INTO samples VALUES (?)", ((os.urandom(4096),) for _ in range(4000)))
        db.commit()
    return history


class PartsOnDisk(Subscriber):
    """The centre, keeping each part on disk instead of in this process's memory."""

    def __init__(self, mosquitto: Mosquitto, into: Path) -> None:
        super().__init__(mosquitto.host, mosquitto.port, BACKUPS)
        self.into = into
        into.mkdir()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            (self.into / f"{len(self.messages):06d}").write_bytes(msg.payload)
            self.messages.append(Received(msg.topic, b"", bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def parts(self) -> list[Received]:
        messages = self.snapshot()
        return [
            dataclasses.replace(m, payload=(self.into / f"{i:06d}").read_bytes())
            for i, m in enumerate(messages)
        ]


async def test_a_large_backup_is_streamed_through_a_file_not_held_in_memory(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    """`histories = true` with a large `max_size` can make the archive hundreds of MiB, inside an
    agent under MemoryMax=256M: the archive is written to a file and read back a part at a time.
    Before, the attempt held it whole, and its parts once more (peak over 2x its size)."""
    state = tmp_path / "state"
    files = learn(state)
    history = large_history(state)
    files["pump/p1/history.sqlite"] = _content(history)
    size = history.stat().st_size
    assert size > 15 * 2**20
    backup = StateBackup(
        section(histories=True, max_size=64 * 2**20, part_size=64 * 1024), state, SITE, GATEWAY, online
    )
    with PartsOnDisk(mosquitto, tmp_path / "centre") as centre:
        outcome, peak = await attempt_with_peak(backup)
        assert outcome.sent is not None, outcome.reason
        await centre.wait_until_async(lambda ms: len(ms) >= outcome.sent.parts, 10)
    assert peak < size / 4, (
        f"peak {peak / 2**20:.1f} MiB of Python memory for a {size / 2**20:.1f} MiB history"
    )
    assert outcome.sent.bytes > 15 * 2**20  # random rows do not compress: held whole, it would show
    assert imported(joined(centre.parts())[outcome.sent.backup], tmp_path / "new-card") == files
    assert not (state / WORK_DIR).exists(), "the archive and the export's copies were left on the card"


async def test_an_archive_growing_over_max_size_stops_its_export_and_leaves_nothing(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    learn(state)
    size = large_history(state).stat().st_size
    # what a power cut during an earlier send left: removed when the agent starts
    (state / WORK_DIR / "stale").mkdir(parents=True)
    backup = StateBackup(section(histories=True, max_size=256 * 1024), state, SITE, GATEWAY, online)
    assert not (state / WORK_DIR).exists()
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        outcome, peak = await attempt_with_peak(backup)
        await asyncio.sleep(0.3)
        assert centre.snapshot() == []
    assert outcome.result == "failing"
    assert outcome.reason == (
        "the export stopped as the archive grew over [state_backup] max_size (256.0 KiB): not sent"
    )
    assert peak < size / 4, f"peak {peak / 2**20:.1f} MiB of Python memory, {size / 2**20:.1f} MiB history"
    assert not (state / WORK_DIR).exists()
    # Without the histories it fits, and goes.
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS):
        lean = StateBackup(section(max_size=256 * 1024), state, SITE, GATEWAY, online)
        assert (await lean.attempt()).result == "sent"


async def test_a_commanded_backup_still_sending_is_answered_sending_and_goes_on(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    """The `state_backup` command's answer: the gateway's one command worker does not wait for a
    backup over a slow link (8 kB/s up here, GPRS is slower); the backup is sent all the same."""
    link = ImpairedLink(mosquitto.host, mosquitto.port, up_bps=8000)
    port = await link.start()
    try:
        run = await start_uplink(mqtt_config(mosquitto, host="127.0.0.1", port=port), outbox)
        await eventually(lambda: run.uplink.health().connected, 10, what="the uplink online")
        state = tmp_path / "state"
        files = learn(state)
        backup = StateBackup(section(), state, SITE, GATEWAY, run.uplink)
        with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
            answer = await backup.on_command(False, answer_within_s=0.5)
            assert answer == {
                "outcome": "sending",
                "reason": "still sending after 0.5 s: the status's state_backup says when the centre has it",
            }
            # A second command waits for the first attempt (one at a time), then finds it sent.
            after = await backup.on_command(False, answer_within_s=60)
            assert after["outcome"] == "unchanged", after
            received = await centre.wait_until_async(lambda ms: len(ms) >= after["parts"], 10)
        assert imported(joined(received)[after["backup"]], tmp_path / "new-card") == files
        assert backup.health().sent == 1
    finally:
        await link.stop()


async def test_a_change_to_the_learnt_state_is_sent_after_change_not_a_day_later(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    """A recalibration in the morning was at the centre only with the next daily backup: a card
    dying that afternoon took it with it. Now a change is sent `after_change` after it is seen."""
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(after_change=0.4), state, SITE, GATEWAY, online)  # interval: 1 h
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre, running(backup):
        await eventually(lambda: backup.health().sent == 1, 10, what="the first backup")
        first = backup.last
        assert first is not None
        # the same bytes written again (a record saved unchanged): looked at, not sent
        calibration = state / "pump" / "p1" / "calibration.bin"
        calibration.write_bytes(calibration.read_bytes())
        await eventually(lambda: backup.outcome is not None and backup.outcome.result == "unchanged", 10,
                         what="the rewrite looked at")  # fmt: skip
        # a new calibration: sent well before the hour
        files = learn(state, seed=2)
        await eventually(lambda: backup.health().sent == 2, 10, what="the new calibration sent")
        second = backup.last
        assert second is not None
        received = await centre.wait_until_async(lambda ms: len(ms) >= first.parts + second.parts, 10)
        # a rolling history growing is no change that makes a backup due
        rolling_history(state, "pump/p1/history.sqlite", 100)
        await asyncio.sleep(1.5)
        assert backup.health().sent == 2
    assert imported(joined(received)[second.backup], tmp_path / "new-card") == files


async def test_without_after_change_a_change_waits_for_the_interval(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(after_change=0.0), state, SITE, GATEWAY, online)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS), running(backup):
        await eventually(lambda: backup.health().sent == 1, 10, what="the first backup")
        learn(state, seed=2)
        await asyncio.sleep(1.5)
        assert backup.health().sent == 1


async def test_an_unchanged_state_is_sent_again_after_resend_after(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(resend_after=0.3), state, SITE, GATEWAY, online)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS):
        assert (await backup.attempt()).result == "sent"
        assert (await backup.attempt()).result == "unchanged"
        await asyncio.sleep(0.4)
        assert (await backup.attempt()).result == "sent"  # in case the centre lost it
    assert backup.health().sent == 2


async def test_a_backup_nobody_subscribes_to_is_a_failure(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    """MQTT 5's PUBACK 0x10 "No matching subscribers" is a success code, and the centre has
    nothing: not recorded as sent, tried again."""
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(), state, SITE, GATEWAY, online)
    outcome = await backup.attempt()
    assert outcome.result == "failing"
    assert f"nobody at the centre took part 1/5 on {TOPIC}" in str(outcome.reason)
    assert "No matching subscribers (0x10)" in str(outcome.reason)
    assert not (state / RECORD).exists()
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS):
        assert (await backup.attempt()).result == "sent"


async def test_nothing_learnt_yet_sends_nothing(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(b"not learnt state")
    backup = StateBackup(section(), state, SITE, GATEWAY, online)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        outcome = await backup.attempt()
        await asyncio.sleep(0.3)
        assert centre.snapshot() == []
    assert (outcome.result, outcome.reason) == ("nothing", "nothing learnt yet")
    assert not (state / RECORD).exists()
    assert backup.health().status_lines()[0].startswith("state backup: nothing learnt yet; next")


async def test_an_archive_over_max_size_is_not_sent_and_the_status_says_why(
    mosquitto: Mosquitto, online: MqttUplink, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    learn(state)
    events = Events()
    backup = StateBackup(section(max_size=8192), state, SITE, GATEWAY, online, emit=events)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        outcome = await backup.attempt()
        await asyncio.sleep(0.3)
        assert centre.snapshot() == []
    assert outcome.result == "failing"
    assert "over [state_backup] max_size (8.0 KiB): not sent" in str(outcome.reason)
    line = backup.health().status_lines()[0]
    assert line.startswith("state backup: failing since "), line
    assert "max_size (8.0 KiB): not sent; next try " in line, line
    assert line.endswith("(none acknowledged yet)"), line
    assert events.kinds() == ["state_backup_failed"]
    assert events.seen[0].severity == "warning"
    assert events.seen[0].detail["reason"] == outcome.reason


async def test_a_broker_acl_that_refuses_the_topic_fails_warns_once_and_is_tried_again(
    outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    """An ACL made before the state backups: MQTT 5 PUBACK 0x87 on every part. The first failure
    says so in one event; the retries (15 min, doubling, shortened here) say nothing more; once the
    ACL allows the topic, the next retry sends the backup."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic deny {TOPIC}\ntopic write water/#\ntopic read #\n")
    # Mosquitto answers the denied part 0x87 and keeps the connection (with the suite's
    # `max_queued_messages 0` it would also close it: that is "not acknowledged", another failure).
    broker = Mosquitto(extra_config=f"acl_file {acl}\nmax_queued_messages 1000\n")
    state = tmp_path / "state"
    files = learn(state)
    events = Events()
    with broker, Subscriber(broker.host, broker.port, BACKUPS) as centre:
        run = await start_uplink(mqtt_config(broker), outbox)
        await eventually(lambda: run.uplink.health().connected, 10, what="the uplink online")
        backup = StateBackup(section(), state, SITE, GATEWAY, run.uplink, emit=events, retry_min_s=0.2)
        task = asyncio.create_task(backup.run())
        try:
            await eventually(lambda: backup.failures >= 3, 10, what="three failed attempts")
            health = backup.health()
            assert health.state == "failing"
            assert "the broker refused part 1/" in str(health.last_error)
            assert "Not authorized (0x87)" in str(health.last_error), health.last_error
            assert "ACL" in str(health.last_error)
            assert events.kinds() == ["state_backup_failed"], "one event, not one per retry"
            assert "0x87" in events.seen[0].detail["reason"]
            assert run.uplink.health().connected, "the refusal did not cost the connection"

            acl.write_text("topic write water/#\ntopic read #\n")
            broker.reload()
            await eventually(lambda: backup.sent == 1, 10, what="the backup once the ACL allows it")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sent = backup.last
        assert sent is not None
        received = await centre.wait_until_async(lambda ms: len(ms) >= sent.parts, 10)
    assert imported(joined(received)[sent.backup], tmp_path / "new-card") == files
    health = backup.health()
    assert (health.state, health.last_error, health.failing_since_ns) == ("sent", None, None)
    assert events.kinds() == ["state_backup_failed"]


async def test_the_retry_waits_double_up_to_the_interval(tmp_path: Path) -> None:
    """15 min after a failure (here 0.2 s), doubling, never beyond `interval`; back to the interval
    after a success."""
    learn(tmp_path / "state")
    offline = _Offline()
    backup = StateBackup(section(interval=1.0), tmp_path / "state", SITE, GATEWAY, offline, retry_min_s=0.2)
    failed = await backup.attempt()
    assert failed.result == "failing"
    delays = [backup._next_delay(failed) for _ in range(5)]
    assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]
    (tmp_path / "empty").mkdir()
    nothing = await StateBackup(section(), tmp_path / "empty", SITE, GATEWAY, offline).attempt()
    assert nothing.result == "nothing"
    assert backup._next_delay(nothing) == 1.0
    assert backup._next_delay(failed) == 0.2


async def test_an_uplink_that_is_offline_is_a_failure_with_its_reason(tmp_path: Path) -> None:
    state = tmp_path / "state"
    learn(state)
    events = Events()
    backup = StateBackup(section(), state, SITE, GATEWAY, _Offline(), emit=events)
    first = await backup.attempt()
    second = await backup.attempt()
    assert first.result == second.result == "failing"
    assert "the uplink is not connected (offline): not sent" in str(first.reason)
    assert events.kinds() == ["state_backup_failed"]
    assert backup.health().failures == 2


async def test_a_backup_due_while_the_uplink_is_offline_waits_for_it_and_is_no_failure(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    # The agent's first backup falls due as its uplink is still connecting (a slow cellular link, a
    # broker down): it waits for the uplink instead of failing and waiting 15 min.
    mosquitto.stop()
    run = await start_uplink(mqtt_config(mosquitto), outbox)
    state = tmp_path / "state"
    files = learn(state)
    events = Events()
    backup = StateBackup(section(), state, SITE, GATEWAY, run.uplink, emit=events)
    task = asyncio.create_task(backup.run())
    try:
        await eventually(lambda: backup.health().waiting_for_uplink, 10, what="the backup waiting")
        await asyncio.sleep(1.0)
        health = backup.health()
        assert (health.failures, health.sent, events.kinds()) == (0, 0, [])
        assert health.status_lines()[0].startswith("state backup: due since "), health.status_lines()
        assert "waits for the uplink; none sent yet" in health.status_lines()[0]
        mosquitto.start()
        with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
            await eventually(lambda: backup.health().sent == 1, 30, what="the backup sent once online")
            sent = backup.last
            assert sent is not None
            received = await centre.wait_until_async(lambda ms: len(ms) >= sent.parts, 10)
    finally:
        task.cancel()
    assert imported(joined(received)[sent.backup], tmp_path / "new-card") == files
    assert (backup.health().failures, backup.health().waiting_for_uplink, events.kinds()) == (0, False, [])


async def test_a_part_over_the_brokers_packet_limit_is_not_sent(
    mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink, tmp_path: Path
) -> None:
    """The broker would drop the connection for it (AWS IoT Core: 128 KiB): refused before sending."""
    run = await start_uplink(mqtt_config(mosquitto, broker_max_packet_size=8192), outbox)
    await eventually(lambda: run.uplink.health().connected, 10, what="the uplink online")
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(part_size=16384), state, SITE, GATEWAY, run.uplink)
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
        outcome = await backup.attempt()
        await asyncio.sleep(0.3)
        assert centre.snapshot() == []
    assert outcome.result == "failing"
    assert "over the broker's Maximum Packet Size (8192): not sent" in str(outcome.reason)
    assert "lower [state_backup] part_size" in str(outcome.reason)
    assert run.uplink.health().connected
    # Parts that fit go.
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS):
        fits = StateBackup(section(), state, SITE, GATEWAY, run.uplink)
        assert (await fits.attempt()).result == "sent"


async def test_an_unreadable_learnt_file_is_a_failure_not_a_crash(online: MqttUplink, tmp_path: Path) -> None:
    state = tmp_path / "state"
    learn(state)
    broken = state / "flow_leak" / "broken.sqlite"
    broken.write_bytes(b"SQLite format 3\x00" + os.urandom(2000))
    backup = StateBackup(section(), state, SITE, GATEWAY, online)
    outcome = await backup.attempt()
    assert outcome.result == "failing"
    assert str(outcome.reason).startswith("the learnt state cannot be exported: ")
    assert "broken.sqlite" in str(outcome.reason)


async def test_the_sparkplug_uplink_sends_the_backup_too(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """In Sparkplug mode the gateway's ACL still lets it write {prefix}/{site}/{gateway}/+: the
    parts go there, outside the Sparkplug namespace and its seq."""
    uplink = SparkplugUplink(
        edge_config(mosquitto, sparkplug=SparkplugConfig()),
        MemoryOutbox(),
        SITE,
        GATEWAY,
        catalog=Catalog([]),
        bdseq_path=tmp_path / "bdseq",
    )
    task = asyncio.create_task(uplink.run())
    state = tmp_path / "state"
    files = learn(state)
    try:
        await eventually(lambda: uplink.health().connected, 10, what="the edge node online")
        backup = StateBackup(section(), state, SITE, GATEWAY, uplink)
        with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre:
            outcome = await backup.attempt()
            assert outcome.result == "sent", outcome
            assert outcome.sent is not None
            parts = outcome.sent.parts
            received = await centre.wait_until_async(lambda ms: len(ms) >= parts, 10)
    finally:
        await uplink.stop(drain_timeout_s=1.0)
        await asyncio.wait_for(task, 10)
    assert imported(joined(received)[outcome.sent.backup], tmp_path / "new-card") == files


async def test_publish_acked_says_none_when_offline_and_refuses_an_oversized_message(
    mosquitto: Mosquitto, online: MqttUplink, outbox: AsyncOutbox
) -> None:
    reason = await online.publish_acked(TOPIC, b"x" * 100, 5.0)
    assert reason is not None
    assert not reason.is_failure
    # Mosquitto announces no limit here: as if it had (or [uplink] broker_max_packet_size said so)
    online._session.max_packet = 1000  # type: ignore[union-attr]
    with pytest.raises(TooLargeError, match=r"2\d\d\d bytes, over the broker's Maximum Packet Size \(1000\)"):
        await online.publish_acked(TOPIC, b"x" * 2000, 5.0)
    never = MqttUplink(mqtt_config(mosquitto), outbox, SITE, GATEWAY)
    assert await never.publish_acked(TOPIC, b"x", 1.0) is None  # not running: not connected


def test_off_says_so_and_sends_nothing(tmp_path: Path) -> None:
    backup = StateBackup(section(enabled=False), tmp_path, SITE, GATEWAY, _Offline())
    asyncio.run(asyncio.wait_for(backup.run(), 1))  # returns at once
    health = backup.health()
    assert (health.state, health.next_ns) == ("off", None)
    assert health.status_lines() == ["state backup: off ([state_backup] enabled = false)"]


async def test_the_status_document_and_the_metrics_carry_it(
    mosquitto: Mosquitto,
    online: MqttUplink,
    tmp_path: Path,
    status_document: Callable[..., StatusDocument],
) -> None:
    state = tmp_path / "state"
    learn(state)
    backup = StateBackup(section(), state, SITE, GATEWAY, online)
    doc = status_document(state_backup=backup.health())
    text = exposition_text(doc.to_json())
    assert "edge_agent_state_backup_failures_total 0.0" in text
    assert "edge_agent_state_backup_age_seconds" not in text, "no backup yet: no age (not NaN, not 0)"
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS):
        assert (await backup.attempt()).result == "sent"
    document = status_document(state_backup=backup.health())
    jsonschema.validate(as_received(document), STATUS_SCHEMA)
    snap = document.to_json()
    assert snap["state_backup"]["state"] == "sent"
    assert any(line.startswith("state backup: sent ") for line in snap["agent"]["lines"])
    assert "edge_agent_state_backup_age_seconds 0." in exposition_text(snap)


def test_fingerprint_is_of_the_files_not_of_the_archive(tmp_path: Path) -> None:
    from water_edge.agent.state_transfer import export_state

    learn(tmp_path)
    one, two = export_state(tmp_path, SITE, GATEWAY), export_state(tmp_path, SITE, GATEWAY)
    a, b = one.manifest["files"], two.manifest["files"]
    assert fingerprint(a) == fingerprint(b)
    (tmp_path / "learnt_tags.json").write_bytes(b"{}")
    c = export_state(tmp_path, SITE, GATEWAY).manifest["files"]
    assert fingerprint(c) != fingerprint(a)


def test_the_agent_sends_its_state_by_itself(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The agent runs the backup as one of its tasks, over its uplink, and its status says so."""
    files = learn(tmp_path / "state")
    config = write_agent_config(
        tmp_path,
        broker_port=mosquitto.port,
        extra='[state_backup]\nfirst_after = 0\npart_size = "4KiB"\n',
    )
    with Subscriber(mosquitto.host, mosquitto.port, BACKUPS) as centre, running_agent(config) as agent:
        snap = agent.wait_status(lambda s: (s.get("state_backup") or {}).get("state") == "sent", 30)
        part_count = snap["state_backup"]["parts"]
        received = centre.wait_until(lambda ms: len(ms) >= part_count, 10)
        assert agent.stop() == 0
    assert {m.topic for m in received} == {f"water/{AGENT_SITE}/{AGENT_GATEWAY}/state_backup"}
    archive = joined(received, AGENT_SITE, AGENT_GATEWAY)[snap["state_backup"]["backup"]]
    assert imported(archive, tmp_path / "new-card", AGENT_SITE, AGENT_GATEWAY) == files
    assert any(line.startswith("state backup: sent ") for line in snap["agent"]["lines"]), snap["agent"]
    jsonschema.validate(snap, STATUS_SCHEMA)


# ---------------------------------------------------------------------- config


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        "schema_version = 1\n"
        f'[gateway]\nsite = "{SITE}"\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[uplink]\nhost = "127.0.0.1"\n' + body
    )
    return path


def test_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "")).state_backup
    assert (cfg.enabled, cfg.interval, cfg.first_after, cfg.resend_after) == (True, 86400, 600, 7 * 86400)
    assert (cfg.part_size, cfg.max_size, cfg.histories, cfg.after_change) == (
        64 * 1024,
        32 * 2**20,
        False,
        3600,
    )


def test_config_takes_durations_and_sizes_with_units(tmp_path: Path) -> None:
    body = (
        '[state_backup]\ninterval = "12h"\nfirst_after = "30s"\nresend_after = "3d"\n'
        'part_size = "100KiB"\nmax_size = "8MiB"\nenabled = false\n'
    )
    cfg = load_config(_config(tmp_path, body)).state_backup
    assert (cfg.interval, cfg.first_after, cfg.resend_after) == (43200, 30, 3 * 86400)
    assert (cfg.part_size, cfg.max_size, cfg.enabled) == (100 * 1024, 8 * 2**20, False)
    assert load_config(_config(tmp_path, "[state_backup]\ninterval = 7200\n")).state_backup.interval == 7200
    assert (
        load_config(_config(tmp_path, '[state_backup]\nafter_change = "15min"\n')).state_backup.after_change
        == 900
    )
    assert load_config(_config(tmp_path, "[state_backup]\nafter_change = 0\n")).state_backup.after_change == 0


def test_config_errors_name_the_file_the_key_and_what_is_expected(tmp_path: Path) -> None:
    body = (
        '[state_backup]\ninterval = "10min"\nfirst_after = "soon"\nresend_after = true\n'
        'part_size = "1KiB"\nmax_size = "2GiB"\nenabeld = false\nafter_change = "10s"\n'
    )
    path = _config(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert sorted(problems) == sorted(
        [
            f"{path}: state_backup.interval: expected at least 1 h ('1h') and at most a year (got '10min')",
            f"{path}: state_backup.first_after: expected a duration such as 3600 (seconds), '30s', "
            "'10min', '24h' or '7d' (got 'soon')",
            f"{path}: state_backup.resend_after: expected a number (got True)",
            f"{path}: state_backup.part_size: expected 4 KiB to 16 MiB, e.g. '64KiB' (got '1KiB')",
            f"{path}: state_backup.max_size: expected 4 KiB to 1 GiB, e.g. '32MiB' (got '2GiB')",
            f"{path}: state_backup.enabeld: unknown key (not part of the schema; check the spelling)",
            f"{path}: state_backup.after_change: expected 0 (off), or 1 min ('1min') to a day ('24h') "
            "(got '10s')",
        ]
    )


def test_state_backup_is_a_reserved_stream_name(tmp_path: Path) -> None:
    body = '[[devices]]\nkind = "fake"\nname = "state_backup"\n[[devices.tags]]\nname = "t"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, body))
    assert any(
        "devices[0] (state_backup).stream: 'state_backup' is reserved for the agent's own messages" in p
        for p in caught.value.problems
    ), caught.value.problems


class _Offline:
    """An uplink that never connects (the backup asks its health first)."""

    from water_edge.agent.uplink.topics import Topics

    topics = Topics("water", SITE, GATEWAY)

    async def publish_acked(self, topic: str, payload: bytes, timeout_s: float) -> Any:
        raise AssertionError("not connected: nothing is published")

    def health(self) -> Any:
        class _Health:
            connected = False
            state = "offline"

        return _Health()


@pytest.fixture
def status_document() -> Callable[..., StatusDocument]:
    """The status document of tests/test_status_document.py with the given parts."""
    from tests.test_status_document import realistic_document

    return lambda **parts: dataclasses.replace(realistic_document(), **parts)
