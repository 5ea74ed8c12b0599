"""The outbox database's schema: creating it, recognising it (or refusing a file that is not it),
and the stats query shared by the writer and the read-only `edge-agent buffer stats`.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any, Final

from water_edge.buffer.types import OutboxStats
from water_edge.core.errors import BufferError
from water_edge.core.quarantine import require_intact

SCHEMA_VERSION: Final = 1

# Written into the SQLite header so that `file` and our own open can tell an outbox from any other
# SQLite file; ASCII "WEAO" (water-edge-agent outbox).
APPLICATION_ID: Final = 0x5745414F

# Quota accounting charges each row its body length plus this much. It stands for what a row costs
# besides its body: the record header, the integer columns, the stream name, the b-tree cell and
# the (row_class, id) index entry. It keeps many tiny rows from slipping past the quota.
ROW_OVERHEAD: Final = 64

COUNTER_NAMES: Final = ("evicted_rows", "evicted_readings")

# An outbox made before epochs existed keeps seq-ing where it was: its epoch reads as this.
LEGACY_EPOCH: Final = 0
# Epochs fit a JSON number exactly (consumers in JavaScript read integers up to 2^53).
MAX_EPOCH: Final = 2**53 - 1


class OutboxUnusableError(BufferError):
    """The file is not a usable outbox (not SQLite, foreign, damaged, corrupt pages).

    The agent quarantines such a file (renames and keeps it) and starts a fresh outbox; other
    `BufferError`s (a missing directory, `OutboxUnavailableError`) are not this.
    """


class OutboxUnavailableError(BufferError):
    """The outbox cannot be opened now, for a reason outside the file: its (or its directory's)
    permissions, an I/O error, a full disk. Says nothing about the rows, so never quarantined: the
    agent exits with the one-line error and systemd starts it again later.
    """


class OutboxLockedError(OutboxUnavailableError):
    """Another process holds the outbox: an agent already running, or an sqlite3 session."""


class OutboxDamagedError(BufferError):
    """SQLite found the outbox file damaged while the agent was using it (a malformed page).

    The agent restarts (exit code 75, systemd starts it again) so that its open moves the file
    aside as it would any unusable outbox: every append until then would fail.
    """


class OutboxTooNewError(BufferError):
    """The outbox was written by a newer agent (its schema is newer than this code's).

    Never quarantined: its rows are intact and a newer agent can send them. An older agent (after
    a rollback, say) refuses to start on it and says so, rather than starting an empty outbox.
    """


_OUTBOX_COLUMNS: Final = {
    "id",
    "stream",
    "seq",
    "row_class",
    "created_ns",
    "count",
    "body",
}
_TABLES: Final = {"meta", "outbox", "streams", "counters"}


# SQLite's answers about the file's surroundings rather than its content (matched on the primary
# code, the low byte of an extended one). Every other error at open is about the file itself.
_LOCKED: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_NO_ACCESS: Final = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH}
)
_NOT_NOW: Final = frozenset(
    {
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_INTERRUPT,
    }
)


def open_error(
    exc: sqlite3.Error, path: Path, *, write: bool = True, unusable: str = "not a usable SQLite database"
) -> BufferError:
    """The error for `exc`, raised by SQLite while opening or inspecting the outbox at `path` (to
    write to it, or only to read it).

    A lock is `OutboxLockedError`; permissions, I/O, a full disk or no memory are
    `OutboxUnavailableError`; anything else SQLite says (not a database, corrupt, a schema the
    queries cannot use) is `OutboxUnusableError` ("outbox PATH: <unusable>: <exc>").
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in _LOCKED:
        return OutboxLockedError(
            f"outbox {path} is locked by another process (an sqlite3 session?): close it"
        )
    if primary in _NO_ACCESS:
        if not write:
            return OutboxUnavailableError(f"cannot open outbox {path} read-only: {exc}")
        return OutboxUnavailableError(f"cannot open outbox {path}: {_no_access(path) or exc}")
    if primary in _NOT_NOW:
        return OutboxUnavailableError(f"outbox {path}: cannot use it now: {exc}")
    if not isinstance(exc, sqlite3.DatabaseError):
        return BufferError(f"outbox {path}: {exc}")
    return OutboxUnusableError(f"outbox {path}: {unusable}: {exc}")


def _no_access(path: Path) -> str | None:
    """What a writer may not open or create of the outbox at `path` (the file, its `-wal` and
    `-shm`, which SQLite creates when missing), as "permission denied ..."; None if nothing."""
    if not os.access(path.parent, os.X_OK):
        return f"permission denied on {path.parent}"
    companions = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    for file in [path, *companions]:
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            return f"permission denied on {file}"
    missing = [file.name for file in companions if not file.exists()]
    if missing and not os.access(path.parent, os.W_OK | os.X_OK):
        return f"permission denied: cannot create {' and '.join(missing)} in {path.parent}"
    return None


def _meta(conn: sqlite3.Connection, key: str) -> Any:
    """The `meta` value under `key` as stored (SQLite may hold any type there), or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def inspect(conn: sqlite3.Connection, path: Path, *, write: bool = True) -> int | None:
    """The schema version of an existing outbox, or None for an empty database.

    Raises `BufferError` naming `path` for anything else: not SQLite, another application's
    database, a newer schema than this code knows, or an outbox with tables or columns missing;
    or, as `open_error` says, that the file is locked or cannot be opened (`write`: `conn` was
    opened to write). Only reads, so it is safe on a read-only connection and never alters a
    foreign file.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = _table_names(conn) - {"sqlite_sequence"}
    except sqlite3.Error as exc:
        raise open_error(exc, path, write=write) from exc
    if app_id not in (0, APPLICATION_ID):
        raise OutboxUnusableError(
            f"outbox {path}: is another application's SQLite database "
            f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x})"
        )
    if not tables and app_id == 0:
        return None
    if "meta" not in tables:
        raise OutboxUnusableError(
            f"outbox {path}: not an outbox database (no 'meta' table; tables: "
            f"{', '.join(sorted(tables)) or 'none'})"
        )
    version = _meta(conn, "schema_version")
    if type(version) is not int:
        raise OutboxUnusableError(f"outbox {path}: 'meta' table has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise OutboxTooNewError(
            f"outbox {path}: schema version {version} is newer than this agent supports "
            f"({SCHEMA_VERSION}): a newer agent wrote it (an update rolled back?). The file is left "
            "as it is, rows included; run a release that reads it (edge-agent update status) or "
            "move the file away to start an empty outbox"
        )
    if version < 1:
        raise OutboxUnusableError(f"outbox {path}: invalid schema version {version}")
    epoch = _meta(conn, "epoch")
    if epoch is not None and not (type(epoch) is int and LEGACY_EPOCH < epoch <= MAX_EPOCH):
        raise OutboxUnusableError(f"outbox {path}: 'meta' epoch {epoch!r} is not in 1..{MAX_EPOCH}")
    missing = _TABLES - tables
    if missing:
        raise OutboxUnusableError(f"outbox {path}: damaged, tables missing: {', '.join(sorted(missing))}")
    missing_cols = _OUTBOX_COLUMNS - _columns(conn, "outbox")
    if missing_cols:
        raise OutboxUnusableError(
            f"outbox {path}: damaged, 'outbox' columns missing: {', '.join(sorted(missing_cols))}"
        )
    return version


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """`core.quarantine.require_intact`, as an `OutboxUnusableError` (a lock or an I/O error on the
    way is `open_error`'s `OutboxUnavailableError`)."""
    try:
        require_intact(conn)
    except sqlite3.DatabaseError as exc:
        raise open_error(exc, path, unusable="corrupt") from exc


def create(conn: sqlite3.Connection, max_bytes: int) -> None:
    """Create every table in one transaction, so a crash leaves either nothing or a whole schema.

    (Plain SQL on purpose: sqlite-utils would pull numpy, click and dateutil into the agent's
    process, about 25 MB of RSS on a gateway, for four CREATE TABLEs.)
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", SCHEMA_VERSION), ("max_bytes", max_bytes), ("epoch", new_epoch())],
        )
        # AUTOINCREMENT: ids are never reused, even after the newest row is acked, because the
        # uplink's lease cursor is an id and must never skip a row.
        conn.execute(
            "CREATE TABLE outbox ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " stream TEXT NOT NULL,"
            " seq INTEGER NOT NULL,"
            " row_class TEXT NOT NULL,"
            " created_ns INTEGER NOT NULL,"
            " count INTEGER NOT NULL,"
            " body BLOB NOT NULL)"
        )
        conn.execute("CREATE INDEX outbox_class_id ON outbox (row_class, id)")
        conn.execute("CREATE TABLE streams (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)")
        conn.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.executemany("INSERT INTO counters (name, value) VALUES (?, 0)", [(n,) for n in COUNTER_NAMES])
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def new_epoch() -> int:
    """A random epoch for a new outbox: the centre tells its seqs from an earlier outbox's by it."""
    return 1 + secrets.randbelow(MAX_EPOCH)


def read_epoch(conn: sqlite3.Connection) -> int:
    """The outbox's epoch; `LEGACY_EPOCH` for an outbox created before epochs."""
    epoch = _meta(conn, "epoch")
    return LEGACY_EPOCH if epoch is None else int(epoch)  # `inspect` checked it


def query_stats(conn: sqlite3.Connection, max_bytes: int) -> OutboxStats:
    """What the outbox holds, from the database (a full pass over the rows, not over the bodies)."""
    streams: dict[str, int] = {}
    rows = readings = body_bytes = 0
    for stream, n_rows, n_readings, n_bytes in conn.execute(
        "SELECT stream, COUNT(*), SUM(count), SUM(length(body)) FROM outbox GROUP BY stream"
    ):
        streams[stream] = n_rows
        rows += n_rows
        readings += n_readings
        body_bytes += n_bytes
    oldest = conn.execute("SELECT created_ns FROM outbox ORDER BY id LIMIT 1").fetchone()
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    return OutboxStats(
        rows=rows,
        readings=readings,
        bytes=body_bytes + ROW_OVERHEAD * rows,
        max_bytes=max_bytes,
        oldest_created_ns=oldest[0] if oldest else None,
        evicted_rows=counters.get("evicted_rows", 0),
        evicted_readings=counters.get("evicted_readings", 0),
        streams=streams,
        expired_rows=counters.get("expired_rows", 0),
        expired_readings=counters.get("expired_readings", 0),
        disk_full=counters.get("disk_full", 0),
        epoch=read_epoch(conn),
    )


def stored_max_bytes(conn: sqlite3.Connection) -> int:
    """The quota the writer last opened the outbox with (recorded for read-only readers)."""
    max_bytes = _meta(conn, "max_bytes")
    return 0 if max_bytes is None else int(max_bytes)
