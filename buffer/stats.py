"""Outbox statistics for people: `edge-agent buffer stats` reads them from the database file,
read-only, while the agent may be running and writing, and prints them as text or JSON; and
`BufferHealth`, the running agent's view of its outbox (the status document's `buffer` section).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from water_edge.buffer import schema
from water_edge.buffer.types import OutboxStats
from water_edge.core import units
from water_edge.core.errors import BufferError

# A reader waits this long for a lock held by someone else (the running agent never holds one that
# long: WAL readers do not wait for the writer).
BUSY_TIMEOUT_MS: Final = 5000


@dataclass(frozen=True, slots=True)
class BufferHealth:
    """The outbox at one moment (`core.health.Health`), as the running agent measures it."""

    rows: int
    readings: int
    bytes: int
    max_bytes: int
    used_pct: float
    oldest_age_s: float | None  # how far behind the centre is; None when the outbox is empty
    evicted_rows: int
    evicted_readings: int
    expired_rows: int
    expired_readings: int
    disk_full: int
    quarantined: str | None  # where a corrupt outbox found at start was moved to
    epoch: int  # the outbox's, in every message it sends: which of a gateway's outboxes the centre sees
    # While the card under the state directory is read-only: "<directory>: <error>", for how long;
    # readings (since start) stored in memory only, not on the card; rows in memory now.
    read_only: str | None = None
    read_only_for_s: float | None = None
    not_durable_readings: int = 0
    memory_rows: int = 0

    def status_lines(self) -> list[str]:
        pct = _pct_of(self.bytes, self.max_bytes)
        oldest = "-" if self.oldest_age_s is None else units.duration(self.oldest_age_s)
        # Readings past max_age_s are removed too: a technician reading "evicted 0" must not take
        # that for "nothing lost".
        expired = f"  expired {self.expired_readings} readings (max age)" if self.expired_readings else ""
        lines = [
            f"{self.rows} rows / {self.readings} readings  {units.size(self.bytes)} of "
            f"{units.size(self.max_bytes)} ({pct:.1f} %)  oldest {oldest}  "
            f"evicted {self.evicted_readings} readings{expired}",
            f"epoch {self.epoch}",
        ]
        if self.read_only is not None or self.not_durable_readings:
            lines.append(
                f"not stored on the card: {self.not_durable_readings} readings since start  "
                f"in memory now {self.memory_rows} rows"
            )
        return lines

    def alarm_lines(self) -> list[str]:
        """Conditions someone must act on, each one line."""
        lines = [] if self.quarantined is None else [f"corrupt outbox quarantined to {self.quarantined}"]
        if self.read_only is not None:
            since = "" if self.read_only_for_s is None else f" for {units.duration(self.read_only_for_s)}"
            lines.append(
                f"storage read-only{since}: {self.read_only}; the SD card may be failing. Readings go "
                f"to the centre from memory, not stored ({self.not_durable_readings} so far)"
            )
        return lines


def buffer_health(stats: OutboxStats, now_ns: int, quarantined: Path | None = None) -> BufferHealth:
    age = _age_s(stats, now_ns)
    return BufferHealth(
        rows=stats.rows,
        readings=stats.readings,
        bytes=stats.bytes,
        max_bytes=stats.max_bytes,
        used_pct=round(_pct(stats), 1),
        oldest_age_s=None if age is None else round(age, 1),
        evicted_rows=stats.evicted_rows,
        evicted_readings=stats.evicted_readings,
        expired_rows=stats.expired_rows,
        expired_readings=stats.expired_readings,
        disk_full=stats.disk_full,
        quarantined=None if quarantined is None else str(quarantined),
        epoch=stats.epoch,
        read_only=stats.read_only,
        read_only_for_s=None
        if stats.read_only_since_ns is None
        else round(max(0, now_ns - stats.read_only_since_ns) / 1e9, 1),
        not_durable_readings=stats.not_durable_readings,
        memory_rows=stats.memory_rows,
    )


# Who may read an outbox: the agent's files are owner read-write, group read (docs/buffer.md).
_AS_WHOM = "run as root or as the agent's service user"


def read_only_uri(path: Path) -> str:
    """The SQLite URI that reads an outbox beside its writer and changes nothing: read-only, and
    immutable when there is no `-wal`. No writer is connected then (a connected writer always has
    a -wal file), and a plain read-only open would create -wal and -shm files owned by whoever
    reads (often root), which the agent's service user could then not open."""
    uri = f"{path.resolve().as_uri()}?mode=ro"  # never create, convert (WAL) or lock out the writer
    return uri if Path(f"{path}-wal").exists() else f"{uri}&immutable=1"


def read_stats(path: str | Path) -> OutboxStats:
    """Stats from the outbox at `path`, opened read-only. Changes no file and creates none, but
    one: the `-shm` index SQLite needs to read a `-wal` found without it (a copied outbox).

    Raises `BufferError`: `OutboxLockedError` while another process holds the file,
    `OutboxUnavailableError` when this user may not read it, `OutboxUnusableError` for a file
    that is not an outbox.
    """
    path = Path(path)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    try:
        is_dir, is_file, has_wal, has_shm = path.is_dir(), path.is_file(), wal.exists(), shm.exists()
    except OSError as exc:  # a directory on the way this user may not search
        raise schema.OutboxUnavailableError(f"cannot read {path}: {_why(exc)}") from exc
    if is_dir:
        raise BufferError(f"outbox {path}: a directory, not an outbox file")
    if not is_file:
        raise BufferError(f"outbox {path}: no such file")
    for file in (path, wal, shm):
        if file.exists() and not os.access(file, os.R_OK):
            raise schema.OutboxUnavailableError(f"cannot read {file}: permission denied ({_AS_WHOM})")
    uri = read_only_uri(path)
    if has_wal and not has_shm and not os.access(path.parent, os.W_OK | os.X_OK):
        # Immutable would ignore the -wal and its committed rows; SQLite reads a WAL only through
        # a -shm, creating it if missing (as root, with the database file's owner and mode).
        raise schema.OutboxUnavailableError(
            f"cannot read {path}: it has a -wal but no -shm, and reading the -wal needs {shm.name} "
            f"created in {path.parent}: permission denied (run as root or as the directory's owner)"
        )
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise schema.open_error(exc, path, write=False) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if schema.inspect(conn, path, write=False) is None:
            raise BufferError(f"outbox {path}: empty database, not an outbox")
        # One read transaction, so the figures are one consistent snapshot.
        conn.execute("BEGIN")
        try:
            max_bytes = schema.stored_max_bytes(conn)
        except (ValueError, TypeError) as exc:  # a value the writer never stores: edited or damaged
            raise BufferError(f"outbox {path}: damaged: 'meta' max_bytes is not a whole number") from exc
        return _whole_numbers(schema.query_stats(conn, max_bytes), path)
    except sqlite3.Error as exc:
        raise schema.open_error(exc, path, write=False, unusable="cannot read stats") from exc
    finally:
        conn.close()


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({_AS_WHOM})"
    return exc.strerror or str(exc)


_COUNTS = (
    "rows",
    "readings",
    "bytes",
    "max_bytes",
    "oldest_created_ns",
    "evicted_rows",
    "evicted_readings",
    "expired_rows",
    "expired_readings",
    "disk_full",
)


def _whole_numbers(stats: OutboxStats, path: Path) -> OutboxStats:
    """`stats`, or BufferError naming the first figure that is no 64-bit whole number (SQLite keeps
    any value in any column: text or a blob written into a counter by hand)."""
    for name in _COUNTS:
        value = getattr(stats, name)
        if value is not None and (type(value) is not int or not -(2**63) <= value < 2**63):
            raise BufferError(f"outbox {path}: damaged: {name} is {value!r:.40}, not a 64-bit whole number")
    return stats


def stats_to_json(stats: OutboxStats, now_ns: int) -> dict[str, Any]:
    """The stats as a JSON-ready dict for `--json`, with the derived percentage and age."""
    return {
        "rows": stats.rows,
        "readings": stats.readings,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "used_pct": round(_pct(stats), 2),
        "oldest_created_ns": stats.oldest_created_ns,
        "oldest_age_s": _age_s(stats, now_ns),
        "evicted_rows": stats.evicted_rows,
        "evicted_readings": stats.evicted_readings,
        "expired_rows": stats.expired_rows,
        "expired_readings": stats.expired_readings,
        "disk_full": stats.disk_full,
        "streams": dict(sorted(stats.streams.items())),
        "epoch": stats.epoch,
    }


def format_stats(stats: OutboxStats, now_ns: int) -> str:
    """The stats as a few lines of text for a terminal."""
    age = _age_s(stats, now_ns)
    lines = [
        f"depth:    {stats.rows:,} rows, {stats.readings:,} readings",
        f"bytes:    {units.size(stats.bytes)} of {units.size(stats.max_bytes)} ({_pct(stats):.1f} %)",
        f"oldest:   {'-' if age is None else units.duration(age) + ' ago'}",
        f"evicted:  {stats.evicted_rows:,} rows, {stats.evicted_readings:,} readings",
    ]
    if stats.expired_rows:
        lines.append(f"expired:  {stats.expired_rows:,} rows, {stats.expired_readings:,} readings (max age)")
    if stats.disk_full:
        lines.append(f"disk full: {stats.disk_full:,} times (evicted to make room)")
    if stats.streams:
        lines.append("streams:")
        width = max(len(name) for name in stats.streams)
        lines += [f"  {name:<{width}}  {rows:,} rows" for name, rows in sorted(stats.streams.items())]
    else:
        lines.append("streams:  none")
    lines.append(f"epoch:    {stats.epoch}")
    return "\n".join(lines)


def _pct(stats: OutboxStats) -> float:
    return _pct_of(stats.bytes, stats.max_bytes)


def _pct_of(used: int, quota: int) -> float:
    return 100.0 * used / quota if quota else 0.0


def _age_s(stats: OutboxStats, now_ns: int) -> float | None:
    if stats.oldest_created_ns is None:
        return None
    # A clock stepped back (NTP after a cold boot) must not print a negative age.
    return max(0.0, (now_ns - stats.oldest_created_ns) / 1e9)
