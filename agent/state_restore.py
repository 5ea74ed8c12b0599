"""A replacement card's learning, restored from the centre by a signed command (`state_restore`).

A dead card's learnt state is kept at the centre (`agent.state_backup`, docs/fleet.md). A new card
can take it without a technician carrying the archive: an operator sends it in signed parts
(`agent.restore_sender`: `edge-agent ca send-state-restore`, or `sign-state-restore` for a
publisher of one's own), one `state_restore` command a part (`agent.remote.chunks`). When the
gateway holds every part it puts the archive together, checks it as `edge-agent state import`
does (its SHA-256, every file against the manifest, the manifest's site and gateway against this
gateway's unless the command says `force`), stages it as `<state_dir>/restore/pending.tar.gz` and
restarts (unless `restart` is false). The processors hold what they learnt in memory and write it
back, so the archive is not put in place under a running agent: `apply_pending` imports it at the
next start, before anything reads the state directory, records the outcome in
`restore/last.json` (shown by `status`) and sends `state_restored` (info) or
`state_restore_failed` (warning). A restore that cannot be applied never stops the agent from
starting: it starts on what the card holds.

The archive's files replace the card's files of the same names; what the card learnt that the
archive does not hold (a rolling history of its own) stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from water_edge.agent.remote.chunks import ChunkStore
from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError, CommandResult
from water_edge.agent.state_transfer import (
    Imported,
    OtherGatewayError,
    StateTransferError,
    import_state,
    inspect_archive,
)
from water_edge.core import units
from water_edge.core.envelope import Envelope
from water_edge.core.files import read_json_state, read_record_state, write_json_state
from water_edge.core.instants import iso, minute_utc
from water_edge.core.reading import Event, now_ns

log = structlog.get_logger(__name__)

RESTORE_DIR: Final = "restore"
PENDING: Final = "pending.tar.gz"
PENDING_RECORD: Final = "pending.json"
LAST_RECORD: Final = "last.json"
_INCOMING: Final = "incoming.tar.gz"
_PARTS: Final = "parts"


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    """The last restore this card took at a start (`<state_dir>/restore/last.json`)."""

    outcome: Literal["restored", "failed"]
    at_ns: int  # the start that applied it (or failed to)
    transfer: str  # the archive's sha256
    requested_by: str  # "command <id> from <key>"
    site: str  # whose learning the archive holds
    gateway: str
    created_ns: int  # when that gateway took it
    files: int
    bytes: int
    reason: str | None  # why it failed

    def status_lines(self) -> list[str]:
        if self.outcome == "failed":
            return [
                f"state restore: FAILED at the start of {minute_utc(self.at_ns)}: {self.reason}; the agent "
                f"went on with what the card held ({self.requested_by})"
            ]
        taken = f"taken by {self.site}/{self.gateway} {minute_utc(self.created_ns)}"
        return [
            f"state restore: {self.files} files ({units.size(self.bytes)}) put in place at the start of "
            f"{minute_utc(self.at_ns)}, {taken}; {self.requested_by}"
        ]


def load_last(state_dir: Path) -> RestoreRecord | None:
    """The last restore this card took, or None (never, or an unreadable record)."""
    return read_record_state(state_dir / RESTORE_DIR / LAST_RECORD, RestoreRecord, "state_restore.record")


class StateRestoreReceiver:
    """Answers `state_restore` parts; stages the archive once every part is held."""

    def __init__(
        self,
        state_dir: Path,
        site: str,
        gateway: str,
        *,
        max_bytes: int,
        request_restart: Callable[[str], None] | None,
    ) -> None:
        self.folder = state_dir / RESTORE_DIR
        self.site = site
        self.gateway = gateway
        self.request_restart = request_restart
        # One archive at a time: a part of another drops the parts held of the one before.
        self._chunks = ChunkStore(
            self.folder / _PARTS,
            limit=max_bytes,
            limit_name="[state_backup] max_size",
            max_transfers=1,
            what="archive",
            log_prefix="state_restore",
        )

    async def part(self, env: Envelope) -> CommandResult:
        force, restart = _flag(env, "force", False), _flag(env, "restart", True)
        chunk = self._chunks.parse(env)
        received = await self._chunks.add(chunk)
        detail: dict[str, Any] = {"transfer": chunk.transfer, "received": received, "of": chunk.count}
        if received < chunk.count:
            return CommandResult("ok", detail=detail)
        by = f"command {env.id} from {env.key_id}"
        try:
            staged = await asyncio.to_thread(self._stage, chunk.transfer, force, by)
        finally:
            self._chunks.forget(chunk.transfer, unless_held=True)
        log.info("state_restore.staged", transfer=chunk.transfer[:16], by=by, files=staged.files)
        restarting = restart and self.request_restart is not None
        detail |= {
            "staged": True,
            "site": staged.site,
            "gateway": staged.gateway,
            "taken_at": iso(staged.created_ns),
            "files": staged.files,
            "bytes": staged.bytes,
            "agent_version": staged.agent_version,
            "restarting": restarting,
        }
        result = CommandResult("ok", detail=detail)
        if restarting:
            assert self.request_restart is not None
            result.then_restart(self.request_restart, f"learnt state restored by {by}")
        return result

    def _stage(self, sha: str, force: bool, by: str) -> Imported:
        incoming = self._chunks.assemble(sha, self.folder / _INCOMING)
        try:
            checked = inspect_archive(incoming, self.site, self.gateway, force=force)
        except OtherGatewayError as exc:
            incoming.unlink(missing_ok=True)
            raise CommandRefusedError("other_gateway", f"{exc}; sign it with --force") from None
        except StateTransferError as exc:
            incoming.unlink(missing_ok=True)
            raise CommandRefusedError("bad_archive", str(exc)) from None
        record = {"transfer": sha, "requested_by": by, "received_ns": now_ns(), "force": force}
        if (
            error := write_json_state(self.folder / PENDING_RECORD, record, "state_restore.pending")
        ) is not None:
            incoming.unlink(missing_ok=True)
            raise CommandFailedError(f"cannot stage the restore: {error}")
        incoming.replace(self.folder / PENDING)
        return checked


def _flag(env: Envelope, name: str, default: bool) -> bool:
    value = env.args.get(name, default)
    if not isinstance(value, bool):
        raise CommandFailedError(f"argument {name!r} must be true or false")
    return value


def apply_pending(state_dir: Path, site: str, gateway: str) -> list[Event]:
    """Import a staged restore, before anything reads the state directory; the events to send.
    Blocking (an archive of up to `[state_backup] max_size`): run it in a thread."""
    folder = state_dir / RESTORE_DIR
    archive = folder / PENDING
    if not archive.exists():
        return []
    at_ns = now_ns()
    transfer, by, force = "?", "unknown (no record of the command that staged it)", False
    try:
        with archive.open("rb") as file:
            transfer = hashlib.file_digest(file, "sha256").hexdigest()
        pending = read_json_state(folder / PENDING_RECORD, "state_restore.pending")
        # A record is only believed of the archive it was written with (a second restore staged
        # over the first may have been cut between its two files).
        if isinstance(pending, dict) and pending.get("transfer") == transfer:
            by, force = str(pending.get("requested_by", by)), pending.get("force") is True
        done = import_state(archive, state_dir, site, gateway, force=force)
    except (StateTransferError, OSError) as exc:
        record = RestoreRecord("failed", at_ns, transfer, by, "?", "?", 0, 0, 0, str(exc))
        log.error("state_restore.failed", error=str(exc), transfer=transfer[:16])
        severity: Literal["info", "warning"] = "warning"
        kind = "state_restore_failed"
    else:
        record = RestoreRecord(
            "restored",
            at_ns,
            transfer,
            by,
            done.site,
            done.gateway,
            done.created_ns,
            done.files,
            done.bytes,
            None,
        )
        log.info("state_restore.applied", files=done.files, transfer=transfer[:16])
        severity, kind = "info", "state_restored"
    write_json_state(folder / LAST_RECORD, asdict(record), "state_restore.record")
    for name in (PENDING, PENDING_RECORD):  # applied or not, never tried again at every start
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    detail: dict[str, Any] = {
        "transfer": record.transfer,
        "requested_by": record.requested_by,
        "files": record.files,
        "bytes": record.bytes,
    }
    if record.outcome == "restored":
        detail |= {"site": record.site, "gateway": record.gateway, "taken_at": iso(record.created_ns)}
    else:
        detail["reason"] = record.reason
    return [Event(kind, "agent", record.at_ns, severity, detail=detail)]
