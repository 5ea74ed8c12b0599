"""The agent sends its learnt state to the centre by itself (`[state_backup]`).

`edge-agent state export` needs the old card alive, and a dead SD card is the common case. So,
`first_after` the agent starts, then every `interval` and `after_change` after the learnt files
changed (looked at every minute: a recalibration reaches the centre within the hour, not the next
day), and when a signed `state_backup` command asks, `StateBackup` exports the learnt state
(agent/state_transfer.py, in a thread) into a file under `{state_dir}/.state_backup/`, reads it
back one part at a time (agent/backup_parts.py: the wire format) and publishes the parts at QoS 1
on `{prefix}/{site}/{gateway}/state_backup` over the uplink's own connection (`publish_acked`),
each waiting for its PUBACK. The centre keeps the latest backups per gateway; a
technician fetches one and runs `edge-agent state import`.

- Nothing learnt yet (no learnt files): nothing is sent.
- The same learnt files (by the manifest's names and SHA-256, not the archive's bytes, which carry
  a time) as the last backup the broker acknowledged, younger than `resend_after`: not sent again.
- An archive over `max_size`: not sent, its export stopped as it grows over; a failure whose reason
  the status says.
- Every part PUBACKed with success: a success, recorded in `{state_dir}/state_backup.json`
  (outside the learnt directories, so never exported itself), which also carries the last backup
  over a restart. Not MQTT 5's 0x10 "No matching subscribers" (a success code, which Mosquitto and
  EMQX answer when no one subscribes to the topic): the centre has not got it, a failure.
- Due while the uplink is offline: it waits for the uplink (no failure: the uplink says it is offline).
- A failure (the connection lost during it, a PUBACK refusal such as 0x87 Not authorized from an
  ACL older than the topic, no PUBACK in time, an unreadable file): tried again after 15 min, the
  wait doubling up to `interval`; one `state_backup_failed` event (warning) when backups start
  failing, none again until one succeeds. No event on success: the status line, the metric and an
  `info` log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, Protocol, cast

import structlog

from water_edge.agent import __version__
from water_edge.agent.backup_parts import FileParts, file_parts
from water_edge.agent.config.schema import StateBackupSection
from water_edge.agent.state_restore import RestoreRecord, load_last
from water_edge.agent.state_transfer import StateTransferError, learnt_files, write_export
from water_edge.agent.uplink.health import UplinkHealth
from water_edge.agent.uplink.topics import Topics
from water_edge.agent.uplink.transport import Reason, TooLargeError
from water_edge.core import units
from water_edge.core.files import read_record_state, write_json_state
from water_edge.core.instants import minute_utc
from water_edge.core.reading import Event, now_ns

log = structlog.get_logger(__name__)

RECORD: Final = "state_backup.json"
WORK_DIR: Final = ".state_backup"
ARCHIVE: Final = "archive.tar.gz"
# A 64 KiB part over GPRS (20-40 kbit/s up), behind the outbox's rows in the socket, takes 15-30 s;
# a link that died is found sooner by the keep-alive, which closes the connection and ends the wait.
ACK_TIMEOUT_S: Final = 120.0
RETRY_MIN_S: Final = 900.0
UPLINK_POLL_S: Final = 2.0  # how often a backup that is due looks whether the uplink is online
NOT_AUTHORIZED: Final = 0x87
NO_MATCHING_SUBSCRIBERS: Final = 0x10  # MQTT 5 PUBACK: taken, and delivered to no one
NS: Final = 1_000_000_000
# How often the learnt files are looked at for a change (`after_change`), at most.
CHANGE_POLL_S: Final = 60.0
# A `state_backup` command is answered within this (the command's own time limit is 30 s).
COMMAND_ANSWER_S: Final = 20.0


class BackupCommandError(Exception):
    """Why a `state_backup` command did not get the learnt state to the centre."""


class _OverMaxSizeError(Exception):
    """The archive being written grew over `[state_backup] max_size`."""


class _Capped(io.RawIOBase):
    """A file that refuses to grow over `limit` bytes (the export stops there, not at its end)."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        super().__init__()
        self._file = file
        self._limit = limit
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if self._written + size > self._limit:
            raise _OverMaxSizeError
        self._written += size
        return self._file.write(data)


class Publisher(Protocol):
    """What the backup needs of the uplink (`MqttUplink`, `SparkplugUplink`)."""

    topics: Topics

    async def publish_acked(self, topic: str, payload: bytes, timeout_s: float) -> Reason | None: ...

    def health(self) -> UplinkHealth: ...


@dataclass(frozen=True, slots=True)
class Sent:
    """The last backup the broker acknowledged (every part PUBACKed), as `state_backup.json` keeps it."""

    backup: str
    created_ns: int
    sent_ns: int
    bytes: int
    parts: int
    files: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did: `sent`, `unchanged`, `nothing` (nothing learnt yet) or `failing`."""

    result: Literal["sent", "unchanged", "nothing", "failing"]
    reason: str | None = None
    sent: Sent | None = None


# off; waiting: no attempt yet; nothing: nothing learnt yet; unchanged: this state was sent already
BackupState = Literal["off", "waiting", "sent", "unchanged", "nothing", "failing"]


@dataclass(frozen=True, slots=True)
class StateBackupHealth:
    """The state backup to the centre (`core.health.Health`)."""

    enabled: bool
    state: BackupState
    backup: str | None  # the last acknowledged backup's id (kept over restarts)
    sent_ns: int | None  # when the broker acknowledged its last part
    age_s: float | None  # since then
    bytes: int | None
    parts: int | None
    files: int | None
    next_ns: int | None  # the next attempt
    waiting_for_uplink: bool  # due, and waiting for the uplink to be online
    failing_since_ns: int | None
    last_error: str | None  # why the last attempt failed; None after a success
    failures: int  # attempts that failed since the agent started
    sent: int  # backups sent since the agent started
    restore: RestoreRecord | None  # the last restore this card took from a backup (agent.state_restore)

    def status_lines(self) -> list[str]:
        restored = [] if self.restore is None else self.restore.status_lines()
        return self._backup_lines() + restored

    def _backup_lines(self) -> list[str]:
        if not self.enabled:
            return ["state backup: off ([state_backup] enabled = false)"]
        nxt = "" if self.next_ns is None else minute_utc(self.next_ns)
        last = (
            ""
            if self.sent_ns is None
            else f"sent {minute_utc(self.sent_ns)} ({units.size(self.bytes or 0)}, {self.parts} parts, "
            f"{self.files} files)"
        )
        if self.waiting_for_uplink:
            return [f"state backup: due since {nxt}, waits for the uplink; {last or 'none sent yet'}"]
        if self.state == "failing" and self.failing_since_ns is not None:
            before = f" (last {last})" if last else " (none acknowledged yet)"
            return [
                f"state backup: failing since {minute_utc(self.failing_since_ns)}: {self.last_error}; "
                f"next try {nxt}{before}"
            ]
        if self.state == "nothing":
            return [f"state backup: nothing learnt yet; next {nxt}"]
        if last:
            return [f"state backup: {last}; next {nxt}"]
        return [f"state backup: first {nxt}"]


Stamp = tuple[tuple[str, int, int], ...]


def learnt_stamp(state_dir: Path) -> Stamp:
    """The learnt files' names, sizes and modification times, without the rolling histories (they
    change every second; a recalibration writes the calibration beside them): a few stat calls,
    cheap enough to look every minute whether a backup is due early."""
    stamp = []
    for relative in learnt_files(state_dir, histories=False):
        with contextlib.suppress(OSError):  # replaced or removed between the listing and here
            info = (state_dir / relative).stat()
            stamp.append((relative.as_posix(), info.st_size, info.st_mtime_ns))
    return tuple(stamp)


def fingerprint(files: dict[str, Any]) -> str:
    """SHA-256 of the manifest's sorted (name, sha256) list: the same learnt files, the same print."""
    pairs = sorted((str(name), str(entry.get("sha256"))) for name, entry in files.items())
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


class StateBackup:
    """Sends the learnt state to the centre: `run()` as a task of the agent; `attempt()` once."""

    def __init__(
        self,
        config: StateBackupSection,
        state_dir: Path,
        site: str,
        gateway: str,
        uplink: Publisher,
        *,
        emit: Callable[[Event], Awaitable[None]] | None = None,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        retry_min_s: float = RETRY_MIN_S,
    ) -> None:
        """`retry_min_s`: the first wait after a failure (15 min; tests shorten it, and may give a
        `config` made with `StateBackupSection.model_construct` for intervals under the hour)."""
        self.config = config
        self.state_dir = state_dir
        self.site = site
        self.gateway = gateway
        self.uplink = uplink
        self.record_path = state_dir / RECORD
        # The archive being sent and the export's copies; removed after each attempt and at a start
        # (a power cut during a send leaves them).
        self.work_dir = state_dir / WORK_DIR
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self._emit = emit
        self._ack_timeout_s = ack_timeout_s
        self._retry_min_s = retry_min_s
        self._retry_s = retry_min_s
        self.last = read_record_state(self.record_path, Sent, "state_backup.record")
        # Read once: a restore is applied at a start only (before this is made).
        self.restored = load_last(state_dir)
        self.outcome: Outcome | None = None
        self.next_ns: int | None = None
        self.waiting_for_uplink = False
        self.failing_since_ns: int | None = None
        self.failures = 0
        self.sent = 0
        self._lock = asyncio.Lock()
        self._stamp: Stamp | None = None  # the learnt files when the last attempt began
        self._commanded: set[asyncio.Task[Outcome]] = set()

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Back up `first_after` the start, then every `interval` (sooner after a failure, and
        `after_change` after the learnt files changed). Never raises."""
        if not self.config.enabled:
            log.info("state_backup.off")
            return
        self._stamp = await asyncio.to_thread(learnt_stamp, self.state_dir)
        delay = self.config.first_after
        while True:
            self.next_ns = now_ns() + int(delay * NS)
            await self._wait(delay)
            await self._until_online()
            try:
                outcome = await self.attempt()
            except Exception as exc:  # a bug here must not end the agent
                log.exception("state_backup.crashed")
                outcome = await self._failed(f"{type(exc).__name__}: {exc}")
            delay = self._next_delay(outcome)

    async def _wait(self, delay: float) -> None:
        """Sleep `delay`, or less when the learnt files change meanwhile (a new calibration, a
        night's baseline): the backup is then due `after_change` after the change was first seen,
        so that a card dying later that day does not take a day's learning with it. Not while
        failing: the retry's wait stands."""
        after = self.config.after_change
        failing = self.outcome is not None and self.outcome.result == "failing"
        if after <= 0 or failing:
            await asyncio.sleep(delay)
            return
        poll = min(CHANGE_POLL_S, after / 4)
        end = time.monotonic() + delay
        due = end
        while (left := due - time.monotonic()) > 0:
            await asyncio.sleep(min(left, poll))
            if due < end:
                continue  # a change is seen already: only its time is awaited
            stamp = await asyncio.to_thread(learnt_stamp, self.state_dir)
            if stamp != self._stamp:
                due = min(end, time.monotonic() + after)
                self.next_ns = now_ns() + int((due - time.monotonic()) * NS)
                log.info("state_backup.learnt_state_changed", due_in_s=round(due - time.monotonic(), 1))

    async def _until_online(self) -> None:
        """A backup that falls due while the uplink is offline waits for it: the uplink's own status
        says it is offline; a backup that found it so would only add a failure and 15 min of wait."""
        if self.uplink.health().connected:
            return
        self.waiting_for_uplink = True
        try:
            # The uplink has no event to wait on (its state hook is the agent's); a poll of its
            # health every 2 s costs nothing.
            while not self.uplink.health().connected:  # noqa: ASYNC110
                await asyncio.sleep(UPLINK_POLL_S)
        finally:
            self.waiting_for_uplink = False

    def _next_delay(self, outcome: Outcome) -> float:
        interval = self.config.interval
        if outcome.result != "failing":
            self._retry_s = self._retry_min_s
            return interval
        delay = min(self._retry_s, interval)
        self._retry_s = min(self._retry_s * 2, interval)
        return delay

    def health(self) -> StateBackupHealth:
        last, outcome = self.last, self.outcome
        state: BackupState = "off"
        if self.config.enabled:
            state = "waiting" if outcome is None else outcome.result
        now = now_ns()
        return StateBackupHealth(
            enabled=self.config.enabled,
            state=state,
            backup=None if last is None else last.backup,
            sent_ns=None if last is None else last.sent_ns,
            age_s=None if last is None else round(max(0, now - last.sent_ns) / NS, 1),
            bytes=None if last is None else last.bytes,
            parts=None if last is None else last.parts,
            files=None if last is None else last.files,
            next_ns=self.next_ns if self.config.enabled else None,
            waiting_for_uplink=self.waiting_for_uplink,
            failing_since_ns=self.failing_since_ns,
            last_error=outcome.reason if outcome is not None and outcome.result == "failing" else None,
            failures=self.failures,
            sent=self.sent,
            restore=self.restored,
        )

    # ------------------------------------------------------------------ one attempt

    async def attempt(self, *, force: bool = False) -> Outcome:
        """Export, compare, send: one backup attempt, whatever the schedule; `force`: sent even when
        unchanged. One at a time: the schedule's and a command's wait for each other."""
        async with self._lock:
            try:
                return await self._attempt(force)
            finally:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    async def on_command(self, force: bool, answer_within_s: float = COMMAND_ANSWER_S) -> dict[str, Any]:
        """The signed `state_backup` command: an attempt now, its outcome as the answer's result, or
        `sending` when it is still sending after `answer_within_s` (a large backup over a slow link
        takes minutes, and the gateway's one command worker must not wait for it: the attempt goes
        on, and the status says when the centre has it); `BackupCommandError` with the reason when
        it failed or backups are off."""
        if not self.config.enabled:
            raise BackupCommandError("state backups are off on this gateway ([state_backup] enabled = false)")
        task = asyncio.create_task(self.attempt(force=force))
        self._commanded.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._commanded.discard)
        done, _ = await asyncio.wait({task}, timeout=answer_within_s)
        if not done:
            return {
                "outcome": "sending",
                "reason": f"still sending after {answer_within_s:g} s: the status's state_backup says "
                "when the centre has it",
            }
        outcome = task.result()
        if outcome.result == "failing":
            raise BackupCommandError(outcome.reason or "failed")
        result: dict[str, Any] = {"outcome": outcome.result}
        sent = outcome.sent if outcome.sent is not None else self.last
        if outcome.result == "nothing":
            result["reason"] = outcome.reason
        elif sent is not None:  # "unchanged": the backup of this state the centre has had since `sent_ns`
            result |= {
                "backup": sent.backup,
                "sent_ns": sent.sent_ns,
                "bytes": sent.bytes,
                "parts": sent.parts,
                "files": sent.files,
                "topic": self.uplink.topics.state_backup,
            }
        return result

    async def _attempt(self, force: bool) -> Outcome:
        cfg = self.config
        # Before the export: a change while it runs is seen by the next wait.
        self._stamp = await asyncio.to_thread(learnt_stamp, self.state_dir)
        try:
            exported = await asyncio.to_thread(self._export)
        except _OverMaxSizeError:
            return await self._failed(
                "the export stopped as the archive grew over [state_backup] max_size "
                f"({units.size(cfg.max_size)}): not sent"
            )
        except (StateTransferError, OSError, ValueError) as exc:
            # an unreadable file, a full disk: a failure with its reason
            return await self._failed(f"the learnt state cannot be exported: {exc}")
        if exported is None:
            return self._done(Outcome("nothing", "nothing learnt yet"))
        parts, files, print_ = exported
        last = self.last
        young = last is not None and now_ns() - last.sent_ns < cfg.resend_after * NS
        if not force and last is not None and young and last.fingerprint == print_:
            return self._done(Outcome("unchanged", "unchanged"))
        if (why := await self._send(parts)) is not None:
            return await self._failed(why)
        sent = Sent(
            backup=parts.backup,
            created_ns=parts.created_ns,
            sent_ns=now_ns(),
            bytes=parts.size,
            parts=parts.parts,
            files=files,
            fingerprint=print_,
        )
        # Not written (a full card): kept in memory, and sent again after a restart.
        write_json_state(self.record_path, dataclasses.asdict(sent), "state_backup.record")
        self.last = sent
        self.sent += 1
        log.info(
            "state_backup.sent",
            backup=sent.backup,
            bytes=sent.bytes,
            parts=sent.parts,
            files=sent.files,
            topic=self.uplink.topics.state_backup,
        )
        return self._done(Outcome("sent", sent=sent))

    async def _send(self, parts: FileParts) -> str | None:
        """Publish the parts one by one, each PUBACKed before the next; why not, or None when all were."""
        health = self.uplink.health()
        if not health.connected:
            return f"the uplink is not connected ({health.state}): not sent"
        for index in range(parts.parts):
            if (why := await self._send_part(parts, index)) is not None:
                return why
        return None

    async def _send_part(self, parts: FileParts, index: int) -> str | None:
        """Publish one part and wait for its PUBACK; why it failed, or None."""
        topic = self.uplink.topics.state_backup
        which = f"part {index + 1}/{parts.parts}"
        try:
            payload = await asyncio.to_thread(parts.read, index)
        except OSError as exc:
            return f"{which} cannot be read back from {parts.path}: {exc}"
        try:
            reason = await self.uplink.publish_acked(topic, payload, self._ack_timeout_s)
        except TooLargeError as exc:
            return f"{exc} (lower [state_backup] part_size)"
        if reason is None:
            wait = f"{self._ack_timeout_s:g} s"
            return f"{which} not acknowledged (connection lost, or no PUBACK within {wait})"
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            # A success to MQTT, yet nobody took it: the centre would not have this backup.
            return (
                f"nobody at the centre took {which} on {topic}: the broker says {reason} "
                f"(0x{reason.value:02X}); is the centre's state-backup consumer subscribed?"
            )
        if not reason.is_failure:
            return None
        why = f"the broker refused {which} on {topic}: {reason} (0x{reason.value:02X})"
        if reason.value == NOT_AUTHORIZED:
            why += (
                " (its ACL does not let this gateway publish state_backup: an ACL made "
                "before the state backups? see docs/fleet.md#state-backups)"
            )
        return why

    def _export(self) -> tuple[FileParts, int, str] | None:
        """The archive written under `work_dir` and cut into parts, its number of files and its
        fingerprint; None when nothing is learnt (in a thread). Streamed, and stopped at `max_size`:
        memory holds a block at a time, whatever the archive's size (`histories` can make it
        hundreds of MiB, under the service's MemoryMax of 256 MiB)."""
        self.work_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.work_dir / ARCHIVE
        with path.open("wb") as file:
            written = write_export(
                self.state_dir,
                self.site,
                self.gateway,
                # tarfile writes through `write` alone
                cast(BinaryIO, _Capped(file, self.config.max_size)),
                histories=self.config.histories,
                # beside the archive, not in /tmp: a tmpfs there would count the copies as memory
                scratch=self.work_dir,
            )
        if not written.files:
            return None
        manifest = written.manifest
        parts = file_parts(
            path,
            site=self.site,
            gateway=self.gateway,
            created_ns=int(manifest["created_ns"]),
            agent_version=__version__,
            part_bytes=self.config.part_size,
        )
        return parts, written.files, fingerprint(manifest["files"])

    def _done(self, outcome: Outcome) -> Outcome:
        self.outcome = outcome
        self.failing_since_ns = None
        if outcome.result != "sent":
            log.info("state_backup.not_sent", why=outcome.reason)
        return outcome

    async def _failed(self, reason: str) -> Outcome:
        outcome = Outcome("failing", reason)
        self.outcome = outcome
        self.failures += 1
        log.warning("state_backup.failed", reason=reason)
        if self.failing_since_ns is None:
            self.failing_since_ns = now_ns()
            if self._emit is not None:
                detail = {"reason": reason}
                if self.last is not None:
                    detail["last_backup"] = self.last.backup
                try:
                    await self._emit(
                        Event("state_backup_failed", "state_backup", now_ns(), "warning", detail=detail)
                    )
                except Exception:  # the event is a courtesy: the status line says it too
                    log.exception("state_backup.event_failed")
        return outcome
