"""The synchronous SQLite outbox: every batch is committed here before anything else happens to it.

One `Outbox` is used from exactly one thread (sqlite3 enforces it). `append` commits all its
batches in one transaction, evicting the oldest telemetry (then events) when the byte quota would
be exceeded; `lease` reads the oldest rows after a cursor; `ack` deletes rows once delivered.
See docs/buffer.md for the rules.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from agent.errors import BufferError
from agent.model import EVENTS_STREAM, Event, now_ns
from buffer import schema
from buffer.codec import encode_events, encode_readings
from buffer.types import Batch, OutboxRow, OutboxStats, RowClass

Synchronous = Literal["full", "normal"]

BUSY_TIMEOUT_MS: Final = 5000
# Keeps the WAL file from staying large after a burst; SD cards prefer a reused, bounded file.
JOURNAL_SIZE_LIMIT: Final = 8 * 1024 * 1024
# SQLite's historical bound on host parameters per statement (999) is the safe chunk for IN (...).
_IN_CHUNK: Final = 500
_EVICT_SCAN: Final = 256

_INSERT: Final = (
    "INSERT INTO outbox (id, stream, seq, row_class, created_ns, count, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_SEQ: Final = (
    "INSERT INTO streams (stream, last_seq) VALUES (?, ?)"
    " ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq"
)
_LEASE: Final = (
    "SELECT id, stream, seq, row_class, created_ns, count, body FROM outbox"
    " WHERE id > ? ORDER BY id LIMIT ?"
)

_Row = tuple[int, str, int, str, int, int, bytes]


@dataclass
class _Victims:
    """Rows chosen for eviction, oldest first, and what the eviction event will say about them."""

    rows: int = 0
    readings: int = 0
    bytes: int = 0
    last_id: dict[str, int] = field(default_factory=dict)  # row_class -> newest evicted id
    seqs: dict[str, list[int]] = field(default_factory=dict)  # stream -> [first, last]

    def add(self, candidate: tuple[int, str, int, str, int, int]) -> None:
        row_id, stream, seq, row_class, count, size = candidate
        self.rows += 1
        self.readings += count
        self.bytes += size + schema.ROW_OVERHEAD
        self.last_id[row_class] = row_id
        span = self.seqs.setdefault(stream, [seq, seq])
        span[0] = min(span[0], seq)
        span[1] = max(span[1], seq)


class Outbox:
    """A bounded, durable outbox in one SQLite file; see the module docstring."""

    def __init__(
        self, path: str | Path, *, max_bytes: int, synchronous: Synchronous = "full"
    ) -> None:
        if max_bytes <= 0:
            raise BufferError(f"outbox {path}: max_bytes must be positive, got {max_bytes}")
        if synchronous not in ("full", "normal"):
            raise BufferError(f"outbox {path}: synchronous must be 'full' or 'normal'")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock_fd = self._lock()
        try:
            self._conn = self._open(synchronous)
        except BaseException:
            os.close(self._lock_fd)
            raise
        try:
            with self._guard("load state"):
                self._load_state()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> int:
        # Seq and id assignment are cached in memory, so a second writer would collide; the
        # lock turns that into a clear error. It is a separate file because closing any other
        # descriptor of the database file would drop SQLite's own POSIX locks.
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BufferError(f"outbox {self.path}: cannot open lock file: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise BufferError(
                f"outbox {self.path}: in use by another writer ({lock_path} is locked)"
            ) from exc
        return fd

    def _open(self, synchronous: Synchronous) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise BufferError(f"outbox {self.path}: cannot open: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Inspect before changing anything, so a foreign file is refused untouched.
            version = schema.inspect(conn, self.path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise BufferError(f"outbox {self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            if version is None:
                schema.create(conn, self.max_bytes)
            else:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'max_bytes'", (self.max_bytes,)
                )
        except sqlite3.Error as exc:
            conn.close()
            raise BufferError(f"outbox {self.path}: cannot open: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _load_state(self) -> None:
        conn = self._conn
        body_bytes, rows = conn.execute(
            "SELECT COALESCE(SUM(length(body)), 0), COUNT(*) FROM outbox"
        ).fetchone()
        # The quota check uses this running total, so appends never scan the table.
        self._bytes: int = body_bytes + schema.ROW_OVERHEAD * rows
        self._last_seq: dict[str, int] = dict(
            conn.execute("SELECT stream, last_seq FROM streams").fetchall()
        )
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        # Ids are assigned here rather than read back, so append knows them without a query.
        self._next_id: int = (row[0] if row else 0) + 1

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise BufferError(f"outbox {self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._guard(what):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def append(self, batches: Sequence[Batch]) -> list[int]:
        """Commit every batch as one row each, in one transaction; return their row ids.

        Raises `BufferError` (and commits nothing) if a batch cannot be encoded or if the
        batches together are larger than the whole quota.
        """
        if not batches:
            return []
        encoded = [_encode(b) for b in batches]
        new_bytes = sum(len(body) + schema.ROW_OVERHEAD for _, _, _, body in encoded)
        if new_bytes > self.max_bytes:
            raise BufferError(
                f"outbox {self.path}: append of {new_bytes} bytes exceeds the whole quota "
                f"of {self.max_bytes} bytes; nothing was stored"
            )
        created = now_ns()
        last_seq: dict[str, int] = {}
        next_id = self._next_id
        rows: list[_Row] = []
        freed = 0

        def add_row(stream: str, row_class: str, count: int, body: bytes) -> None:
            nonlocal next_id
            seq = last_seq.get(stream, self._last_seq.get(stream, 0)) + 1
            last_seq[stream] = seq
            rows.append((next_id, stream, seq, row_class, created, count, body))
            next_id += 1

        with self._transaction("append") as conn:
            if self._bytes + new_bytes > self.max_bytes:
                victims, event_body = self._evict(conn, new_bytes, created)
                freed = victims.bytes
                new_bytes += len(event_body) + schema.ROW_OVERHEAD
                add_row(EVENTS_STREAM, "event", 1, event_body)
            for stream, row_class, count, body in encoded:
                add_row(stream, row_class, count, body)
            conn.executemany(_INSERT, rows)
            conn.executemany(_UPSERT_SEQ, last_seq.items())
        # Memory follows the database only once the commit has succeeded.
        self._bytes += new_bytes - freed
        self._next_id = next_id
        self._last_seq.update(last_seq)
        first = len(rows) - len(encoded)
        return [row[0] for row in rows[first:]]

    def _evict(
        self, conn: sqlite3.Connection, new_bytes: int, now: int
    ) -> tuple[_Victims, bytes]:
        """Delete the oldest rows (telemetry first) until the append and its event fit."""
        victims = _Victims()
        candidates = self._candidates(conn)
        while True:
            event_body = encode_events([_eviction_event(victims, now)])
            excess = (
                self._bytes + new_bytes + len(event_body) + schema.ROW_OVERHEAD
                - victims.bytes - self.max_bytes
            )
            if excess <= 0:
                break
            goal = victims.bytes + excess
            for candidate in candidates:
                victims.add(candidate)
                if victims.bytes >= goal:
                    break
            else:
                raise BufferError(
                    f"outbox {self.path}: append of {new_bytes} bytes does not fit the quota of "
                    f"{self.max_bytes} bytes even after evicting every row; nothing was stored"
                )
        for row_class, last_id in victims.last_id.items():
            conn.execute(
                "DELETE FROM outbox WHERE row_class = ? AND id <= ?", (row_class, last_id)
            )
        conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'evicted_rows'", (victims.rows,)
        )
        conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'evicted_readings'",
            (victims.readings,),
        )
        return victims, event_body

    @staticmethod
    def _candidates(conn: sqlite3.Connection) -> Iterator[tuple[int, str, int, str, int, int]]:
        # Telemetry is expendable before events and alarms; within a class, oldest first.
        for row_class in ("telemetry", "event"):
            after = 0
            while True:
                chunk = conn.execute(
                    "SELECT id, stream, seq, row_class, count, length(body) FROM outbox"
                    " WHERE row_class = ? AND id > ? ORDER BY id LIMIT ?",
                    (row_class, after, _EVICT_SCAN),
                ).fetchall()
                if not chunk:
                    break
                yield from chunk
                after = chunk[-1][0]

    def lease(self, after_id: int, limit: int) -> list[OutboxRow]:
        """The oldest rows with id > after_id, at most `limit`; a read, nothing is marked."""
        with self._guard("lease"):
            return [OutboxRow(*row) for row in self._conn.execute(_LEASE, (after_id, limit))]

    def ack(self, row_ids: Sequence[int]) -> None:
        """Delete exactly these rows, in one transaction; ids already gone are ignored."""
        ids = list(dict.fromkeys(row_ids))
        if not ids:
            return
        freed = 0
        with self._transaction("ack") as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                body_bytes, rows = conn.execute(
                    f"SELECT COALESCE(SUM(length(body)), 0), COUNT(*) FROM outbox"  # noqa: S608 - only '?' marks are interpolated
                    f" WHERE id IN ({marks})",
                    chunk,
                ).fetchone()
                conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608 - only '?' marks
                freed += body_bytes + schema.ROW_OVERHEAD * rows
        self._bytes -= freed

    def stats(self) -> OutboxStats:
        """Depth, bytes, age and eviction counters (a pass over the rows; not for the hot path)."""
        with self._guard("stats"):
            return schema.query_stats(self._conn, self.max_bytes)

    def pragmas(self) -> dict[str, int | str]:
        """The connection's journal_mode, synchronous (0 off, 1 normal, 2 full) and busy_timeout."""
        with self._guard("pragmas"):
            return {
                name: self._conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "busy_timeout")
            }

    @property
    def bytes_used(self) -> int:
        """The running byte total the quota is checked against (bodies plus per-row overhead)."""
        return self._bytes

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL); closing twice is harmless."""
        try:
            with self._guard("close"):
                self._conn.close()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _encode(batch: Batch) -> tuple[str, RowClass, int, bytes]:
    if not isinstance(batch.stream, str) or not batch.stream:
        raise BufferError(f"batch stream must be a non-empty string, got {batch.stream!r}")
    if batch.events is not None:
        if batch.readings is not None:
            raise BufferError(f"batch for stream {batch.stream!r} has both readings and events")
        return batch.stream, "event", len(batch.events), encode_events(batch.events)
    if batch.readings is None:
        raise BufferError(f"batch for stream {batch.stream!r} has neither readings nor events")
    return batch.stream, "telemetry", len(batch.readings), encode_readings(batch.readings)


def _eviction_event(victims: _Victims, now: int) -> Event:
    return Event(
        kind="buffer_eviction",
        source="buffer",
        ts_ns=now,
        severity="warning",
        detail={
            "rows": victims.rows,
            "readings": victims.readings,
            "bytes": victims.bytes,
            "streams": {s: list(span) for s, span in victims.seqs.items()},
        },
    )
