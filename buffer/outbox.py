"""The synchronous SQLite outbox: every batch is committed here before anything else happens to it.

One `Outbox` is used from exactly one thread (sqlite3 enforces it). `append` commits all its
batches in one transaction, removing by policy what no longer fits (oldest telemetry first, then
events) when the byte quota would be exceeded, when the disk (or `max_page_count`) is full, or
when telemetry is older than `max_age_s`; `lease` reads the oldest rows after a cursor; `ack`
deletes rows once delivered. Depth and byte figures are kept as running counters, so `stats()`
is cheap enough for a status refresh. See docs/buffer.md and docs/durability.md for the rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from water_edge.buffer import schema
from water_edge.buffer.codec import decode_events, decode_readings, encode_events, encode_readings
from water_edge.buffer.types import Batch, OutboxRow, OutboxStats, RowClass
from water_edge.core.errors import BufferError, QuotaExceededError
from water_edge.core.quarantine import is_damaged_file
from water_edge.core.reading import EVENTS_STREAM, Event, Severity, now_ns

Synchronous = Literal["full", "normal"]
RemovalReason = Literal["quota", "disk_full", "age"]

BUSY_TIMEOUT_MS: Final = 5000
FILE_MODE: Final = 0o640
# Keeps the WAL file from staying large after a burst; SD cards prefer a reused, bounded file.
JOURNAL_SIZE_LIMIT: Final = 8 * 1024 * 1024
# SQLite's historical bound on host parameters per statement (999) is the safe chunk for IN (...).
_IN_CHUNK: Final = 500
_EVICT_SCAN: Final = 256
# On SQLITE_FULL the append is retried after freeing 1/16 of the outbox, then twice as much...
_FULL_ATTEMPTS: Final = 8

_INSERT: Final = (
    "INSERT INTO outbox (id, stream, seq, row_class, created_ns, count, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_SEQ: Final = (
    "INSERT INTO streams (stream, last_seq) VALUES (?, ?)"
    " ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq"
)
_ADD_COUNTER: Final = (
    "INSERT INTO counters (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_LEASE: Final = (
    "SELECT id, stream, seq, row_class, created_ns, count, body FROM outbox"
    " WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"
)
_MAX_ID: Final = 2**63 - 1

_Row = tuple[int, str, int, str, int, int, bytes]
_Candidate = tuple[int, str, int, str, int, int, int]  # id, stream, seq, class, count, size, created


@dataclass
class _Victims:
    """Rows chosen for removal, oldest first, and what the removal event will say about them."""

    rows: int = 0
    readings: int = 0
    bytes: int = 0
    last_id: dict[str, int] = field(default_factory=dict)  # row_class -> newest removed id
    seqs: dict[str, list[int]] = field(default_factory=dict)  # stream -> [first, last]
    stream_rows: dict[str, int] = field(default_factory=dict)

    def add(self, candidate: _Candidate) -> None:
        row_id, stream, seq, row_class, count, size, _created = candidate
        self.rows += 1
        self.readings += count
        self.bytes += size + schema.ROW_OVERHEAD
        self.last_id[row_class] = row_id
        self.stream_rows[stream] = self.stream_rows.get(stream, 0) + 1
        span = self.seqs.setdefault(stream, [seq, seq])
        span[0] = min(span[0], seq)
        span[1] = max(span[1], seq)


@dataclass(frozen=True, slots=True)
class _Notice:
    """A removal notice of this process that no reader has leased yet: the next removal for the
    same reason is added to it rather than announced in a row of its own (docs/buffer.md)."""

    row_id: int
    body: bytes
    event: Event


_Note = Callable[[_Victims, RemovalReason, bytes, _Notice | None], None]


class _DiskFullError(Exception):
    """SQLITE_FULL inside an append: the caller frees more and retries."""


class Outbox:
    """A bounded, durable outbox in one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        synchronous: Synchronous = "full",
        max_age_s: float | None = None,
        max_page_count: int | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        if max_bytes <= 0:
            raise BufferError(f"outbox {path}: max_bytes must be positive, got {max_bytes}")
        if synchronous not in ("full", "normal"):
            raise BufferError(f"outbox {path}: synchronous must be 'full' or 'normal'")
        if max_age_s is not None and max_age_s <= 0:
            raise BufferError(f"outbox {path}: max_age_s must be positive, got {max_age_s}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._synchronous = synchronous
        self._clock = clock
        self._lock_fd = self._lock()
        try:
            self._conn = self._open(synchronous, max_page_count)
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
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise schema.OutboxUnavailableError(f"outbox {self.path}: cannot open lock file: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise schema.OutboxLockedError(
                f"outbox {self.path}: in use by another writer ({lock_path} is locked)"
            ) from exc
        return fd

    def _create(self) -> None:
        """Readings are the utility's data: owner read-write, group read (technicians in the agent's
        group run `buffer stats`), nobody else; set explicitly whatever the umask (an agent started
        by hand as root has 022). SQLite gives the -wal and -shm files the database file's mode."""
        if self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BufferError(f"outbox {self.path}: cannot create: {exc.strerror}") from exc

    def _tighten_modes(self) -> None:
        """An outbox of ours left readable by others (an earlier run under umask 022) is fixed."""
        for suffix in ("", "-wal", "-shm", ".lock"):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                path = f"{self.path}{suffix}"
                if os.stat(path).st_mode & 0o137:
                    os.chmod(path, FILE_MODE)

    def _open(self, synchronous: Synchronous, max_page_count: int | None) -> sqlite3.Connection:
        self._create()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise schema.open_error(exc, self.path) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Inspect before changing anything, so a foreign file is refused untouched.
            version = schema.inspect(conn, self.path)
            if version is not None:
                schema.check_integrity(conn, self.path)
                self._tighten_modes()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise BufferError(f"outbox {self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            if max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
            if version is None:
                schema.create(conn, self.max_bytes)
            else:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'max_bytes'", (self.max_bytes,))
        except sqlite3.Error as exc:
            conn.close()
            # Only an error about the file itself makes it unusable (and quarantined at start);
            # a lock, permissions or I/O say nothing about the rows in it.
            raise schema.open_error(exc, self.path, unusable="cannot open") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _load_state(self) -> None:
        conn = self._conn
        # The one full pass: afterwards depth, bytes and per-stream rows are running counters.
        self._stream_rows: dict[str, int] = {}
        self._rows = self._readings = body_bytes = 0
        for stream, n_rows, n_readings, n_bytes in conn.execute(
            "SELECT stream, COUNT(*), SUM(count), SUM(length(body)) FROM outbox GROUP BY stream"
        ):
            self._stream_rows[stream] = n_rows
            self._rows += n_rows
            self._readings += n_readings
            body_bytes += n_bytes
        self._bytes: int = body_bytes + schema.ROW_OVERHEAD * self._rows
        self._counters: dict[str, int] = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        self._last_seq: dict[str, int] = dict(conn.execute("SELECT stream, last_seq FROM streams").fetchall())
        # With the seqs, the identity of every row it holds; fixed for the life of the file unless
        # the card is found on another board (`renew_epoch`).
        self.epoch: int = schema.read_epoch(conn)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        # Ids are assigned here rather than read back, so append knows them without a query.
        self._next_id: int = (row[0] if row else 0) + 1
        # The newest row this process has handed to a reader: rows after it nobody has seen yet.
        self._max_leased = 0
        # Reason -> row id of this process's latest removal notice. Not rebuilt at open: a notice
        # of an earlier process may have been sent, so it is never added to.
        self._notices: dict[str, int] = {}

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if is_damaged_file(exc):
                raise schema.OutboxDamagedError(f"outbox {self.path}: {what} failed: {exc}") from exc
            raise BufferError(f"outbox {self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Transactions in this block commit without an fsync of their own (see `ack`)."""
        if self._synchronous == "normal":
            yield
            return
        self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
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

        Raises `BufferError` (and commits nothing) if a batch cannot be encoded, if the batches
        together are larger than the whole quota, or if the disk stays full after everything
        that may be removed was removed.
        """
        if not batches:
            return []
        encoded = [_encode(b) for b in batches]
        new_bytes = sum(len(body) + schema.ROW_OVERHEAD for _, _, _, body in encoded)
        if new_bytes > self.max_bytes:
            raise QuotaExceededError(
                f"outbox {self.path}: append of {new_bytes} bytes exceeds the whole quota "
                f"of {self.max_bytes} bytes; nothing was stored"
            )
        free_extra = 0
        for _attempt in range(_FULL_ATTEMPTS):
            try:
                with self._guard("append"):
                    return self._append_once(encoded, new_bytes, free_extra)
            except _DiskFullError:
                # Freed pages are reused by the same transaction, so evicting by policy and
                # retrying turns a full disk into counted evictions instead of lost readings.
                free_extra = max(2 * free_extra, 2 * new_bytes, self._bytes // 16)
        raise BufferError(
            f"outbox {self.path}: the disk is full and evicting what may go did not make room; "
            "nothing was stored"
        )

    def _append_once(
        self, encoded: list[tuple[str, RowClass, int, bytes]], new_bytes: int, free_extra: int
    ) -> list[int]:
        created = self._clock()
        last_seq: dict[str, int] = {}
        next_id = self._next_id
        rows: list[_Row] = []
        removed: list[_Victims] = []
        notices: dict[str, int] = {}

        def add_row(stream: str, row_class: str, count: int, body: bytes) -> None:
            nonlocal next_id
            seq = last_seq.get(stream, self._last_seq.get(stream, 0)) + 1
            last_seq[stream] = seq
            rows.append((next_id, stream, seq, row_class, created, count, body))
            next_id += 1

        def note(victims: _Victims, reason: RemovalReason, body: bytes, into: _Notice | None) -> None:
            nonlocal new_bytes
            removed.append(victims)
            if into is None:
                new_bytes += len(body) + schema.ROW_OVERHEAD
                add_row(EVENTS_STREAM, "event", 1, body)
                notices[reason] = rows[-1][0]
            else:
                new_bytes += len(body) - len(into.body)
                conn.execute("UPDATE outbox SET body = ? WHERE id = ?", (body, into.row_id))
            self._count(conn, reason, victims)

        try:
            with self._transaction() as conn:
                freed = self._age_out(conn, created, note)
                min_free = min(free_extra, self._bytes - freed)
                if self._bytes - freed + new_bytes > self.max_bytes or min_free > 0:
                    reason: RemovalReason = "disk_full" if free_extra else "quota"
                    victims, body, into = self._evict(
                        conn,
                        new_bytes=new_bytes,
                        now=created,
                        min_free=min_free,
                        already_freed=freed,
                        reason=reason,
                    )
                    freed += victims.bytes
                    note(victims, reason, body, into)
                for stream, row_class, count, body in encoded:
                    add_row(stream, row_class, count, body)
                conn.executemany(_INSERT, rows)
                conn.executemany(_UPSERT_SEQ, last_seq.items())
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                self._counters["disk_full"] = self._counters.get("disk_full", 0) + 1
                raise _DiskFullError from exc
            raise
        # Memory follows the database only once the commit has succeeded.
        self._bytes += new_bytes - freed
        for victims in removed:
            self._forget(victims)
        self._remember(rows)
        self._next_id = next_id
        self._notices.update(notices)
        self._last_seq.update(last_seq)
        if free_extra:
            self._persist_counter("disk_full")
        first = len(rows) - len(encoded)
        return [row[0] for row in rows[first:]]

    def _count(self, conn: sqlite3.Connection, reason: RemovalReason, victims: _Victims) -> None:
        prefix = "expired" if reason == "age" else "evicted"
        conn.executemany(
            _ADD_COUNTER,
            [(f"{prefix}_rows", victims.rows), (f"{prefix}_readings", victims.readings)],
        )

    def _remember(self, rows: list[_Row]) -> None:
        for _, stream, _, _, _, count, _ in rows:
            self._stream_rows[stream] = self._stream_rows.get(stream, 0) + 1
            self._readings += count
        self._rows += len(rows)

    def _forget(self, victims: _Victims) -> None:
        self._rows -= victims.rows
        self._readings -= victims.readings
        for stream, n in victims.stream_rows.items():
            left = self._stream_rows.get(stream, 0) - n
            if left > 0:
                self._stream_rows[stream] = left
            else:
                self._stream_rows.pop(stream, None)

    def _persist_counter(self, name: str) -> None:
        """Best effort (the disk was just full): the in-memory count is what status shows."""
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, self._counters.get(name, 0)),
                )
        except sqlite3.Error:
            pass

    def _age_out(self, conn: sqlite3.Connection, now: int, note: _Note) -> int:
        """Remove telemetry older than `max_age_s` and announce it; the bytes freed."""
        if self.max_age_s is None:
            return 0
        aged = self._expire(conn, now - int(self.max_age_s * 1e9))
        if not aged.rows:
            return 0
        notice = self._unseen_notice(conn, "age")
        earlier = None if notice is None else notice.event
        note(aged, "age", encode_events([_removal_event(aged, now, "age", earlier)]), notice)
        return aged.bytes

    def _unseen_notice(self, conn: sqlite3.Connection, reason: RemovalReason) -> _Notice | None:
        """This process's last notice for `reason`, if it is still here and no reader has leased it
        (then it cannot have been sent, and adding to it changes no message anyone has)."""
        row_id = self._notices.get(reason)
        if row_id is None or row_id <= self._max_leased:
            return None
        row = conn.execute("SELECT body FROM outbox WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            return None
        (event,) = decode_events(row[0])
        return _Notice(row_id, row[0], event)

    def _expire(self, conn: sqlite3.Connection, cutoff_ns: int) -> _Victims:
        """Remove telemetry created before `cutoff_ns` (oldest first; stops at the first newer row)."""
        victims = _Victims()
        for candidate in self._candidates(conn, ("telemetry",)):
            if candidate[6] >= cutoff_ns:
                break
            victims.add(candidate)
        self._delete(conn, victims)
        return victims

    def _evict(
        self,
        conn: sqlite3.Connection,
        *,
        new_bytes: int,
        now: int,
        min_free: int,
        already_freed: int,
        reason: RemovalReason,
    ) -> tuple[_Victims, bytes, _Notice | None]:
        """Delete the oldest rows (telemetry first) until the append and its event fit the quota
        and at least `min_free` bytes of rows are gone (disk full: room for the pages). The event
        is added to the unsent notice of `reason` unless that notice had to go too; the notice it
        went into, if any."""
        notice = self._unseen_notice(conn, reason)
        victims = _Victims()
        candidates = self._candidates(conn, ("telemetry", "event"))

        def announce() -> tuple[bytes, _Notice | None]:
            # The notice itself may be among the victims (events go once no telemetry is left).
            into = notice if notice is not None and victims.last_id.get("event", 0) < notice.row_id else None
            return encode_events(
                [_removal_event(victims, now, reason, None if into is None else into.event)]
            ), into

        while True:
            event_body, into = announce()
            event_cost = len(event_body) - len(into.body) if into else len(event_body) + schema.ROW_OVERHEAD
            over_quota = self._bytes - already_freed + new_bytes + event_cost - victims.bytes - self.max_bytes
            excess = max(over_quota, min_free - victims.bytes)
            if excess <= 0:
                break
            goal = victims.bytes + excess
            for candidate in candidates:
                victims.add(candidate)
                if victims.bytes >= goal:
                    break
            else:
                if reason == "disk_full" and victims.rows and over_quota <= 0:
                    break  # all that may go is gone; the retry shows whether the rows now fit
                what = (
                    "the disk is full"
                    if reason == "disk_full"
                    else (f"it does not fit the quota of {self.max_bytes} bytes")
                )
                raise BufferError(
                    f"outbox {self.path}: append of {new_bytes} bytes refused: {what} even after "
                    "evicting every row; nothing was stored"
                )
        self._delete(conn, victims)
        event_body, into = announce()  # the disk-full exit above leaves the loop with more victims
        return victims, event_body, into

    @staticmethod
    def _delete(conn: sqlite3.Connection, victims: _Victims) -> None:
        # Candidates come in id order within a class, so "id <= newest victim" is exactly them.
        for row_class, last_id in victims.last_id.items():
            conn.execute("DELETE FROM outbox WHERE row_class = ? AND id <= ?", (row_class, last_id))

    @staticmethod
    def _candidates(conn: sqlite3.Connection, classes: Sequence[str]) -> Iterator[_Candidate]:
        # Telemetry is expendable before events and alarms; within a class, oldest first.
        for row_class in classes:
            after = 0
            while True:
                chunk = conn.execute(
                    "SELECT id, stream, seq, row_class, count, length(body), created_ns"
                    " FROM outbox WHERE row_class = ? AND id > ? ORDER BY id LIMIT ?",
                    (row_class, after, _EVICT_SCAN),
                ).fetchall()
                if not chunk:
                    break
                yield from chunk
                after = chunk[-1][0]

    def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        """The oldest rows with after_id < id <= upto_id, at most `limit`; nothing is marked."""
        bound = _MAX_ID if upto_id is None else upto_id
        with self._guard("lease"):
            found = self._conn.execute(_LEASE, (after_id, bound, limit)).fetchall()
        epoch = self.epoch
        rows = [OutboxRow(i, s, q, c, t, n, b, epoch) for i, s, q, c, t, n, b in found]
        if rows:
            self._max_leased = max(self._max_leased, *(r.id for r in rows))
        return rows

    def restamp(self, delta_ns: int, before_ns: int, reason: str, new_reason: str) -> tuple[int, int]:
        """Move readings never leased by this process, whose reason starts with `reason` and that
        were stamped at or before `before_ns`, by `delta_ns`, that prefix becoming `new_reason`;
        (rows rewritten, readings moved).

        For a clock that stepped: such rows have not been read by anyone (the uplink leases
        through this same object, one call at a time), so rewriting them changes no message sent.
        """
        moved_rows = moved = 0
        with self._guard("restamp"), self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, body FROM outbox WHERE id > ? AND row_class = 'telemetry' ORDER BY id",
                (self._max_leased,),
            ).fetchall()
            for row_id, body in rows:
                readings = decode_readings(body)
                changed = [
                    replace(r, ts_ns=r.ts_ns + delta_ns, reason=new_reason + r.reason[len(reason) :])
                    if r.reason is not None and r.reason.startswith(reason) and r.ts_ns <= before_ns
                    else r
                    for r in readings
                ]
                count = sum(a is not b for a, b in zip(readings, changed, strict=True))
                if not count:
                    continue
                new_body = encode_readings(changed)
                conn.execute("UPDATE outbox SET body = ? WHERE id = ?", (new_body, row_id))
                self._bytes += len(new_body) - len(body)
                moved_rows += 1
                moved += count
        return moved_rows, moved

    def last_id(self) -> int:
        """The id of the newest row ever committed (0 for a new outbox)."""
        return self._next_id - 1

    def last_seqs(self) -> dict[str, int]:
        """Each stream's newest seq ever committed."""
        return dict(self._last_seq)

    def continue_ids_after(self, last_id: int) -> None:
        """Give the next rows ids after `last_id`: appends move between the outbox on the card and
        the one in memory while the card is read-only (`AsyncOutbox`), and a row's id says which
        file holds it. Seqs and epoch stay this file's own: the one in memory is an outbox of its
        own to the centre (its epoch, its seqs from 1), so that no seq it gave can be given again
        by the card's after a restart or a reboot."""
        self._next_id = max(self._next_id, last_id + 1)

    def continue_seqs_after(self, issued: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Never give a seq at or below `issued` (each stream's newest seq this process committed to
        this file before): a card mended after it went read-only may have lost the last commits
        (the kernel served them from its cache, they were sent, and the file system never got
        them), and the centre drops a repeat of (epoch, stream, seq) unread. The streams whose
        seqs were behind, with the first and last seq the file lost, are returned."""
        behind = {
            stream: (self._last_seq.get(stream, 0) + 1, seq)
            for stream, seq in issued.items()
            if seq > self._last_seq.get(stream, 0)
        }
        if behind:
            with self._guard("continue_seqs_after"), self._transaction() as conn:
                conn.executemany(_UPSERT_SEQ, [(stream, last) for stream, (_, last) in behind.items()])
            self._last_seq.update({stream: last for stream, (_, last) in behind.items()})
        return behind

    def renew_epoch(self) -> int:
        """Name this outbox by a new epoch from now on (`schema.new_epoch`), committed before it
        is used: every row sent after this, those already held too, goes under it, each stream's
        seqs counting on. For a card found on another board than the one it was made on
        (`agent.board_change`): a copy of a running gateway's card must not send under the epoch
        and seqs the original sends, which the centre would take for repeats or conflicts."""
        epoch = schema.new_epoch()
        with self._guard("renew_epoch"), self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        self.epoch = epoch
        return epoch

    def ack(self, row_ids: Sequence[int]) -> None:
        """Delete exactly these rows, in one transaction; ids already gone are ignored.

        The delete is committed without its own fsync (synchronous NORMAL for this transaction):
        the next append's synced commit, or a checkpoint, makes it durable. A delete removes only
        what the broker has, so a power cut before then costs nothing but sending those rows again
        (at least once; the centre drops the copies by epoch, stream and seq), while acks were
        more than half of an SD card's synced writes."""
        ids = list(dict.fromkeys(row_ids))
        if not ids:
            return
        gone: list[tuple[str, int, int]] = []
        with self._guard("ack"), self._unsynced(), self._transaction() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                gone += conn.execute(
                    f"SELECT stream, count, length(body) FROM outbox WHERE id IN ({marks})",  # noqa: S608 - only '?' marks are interpolated
                    chunk,
                ).fetchall()
                conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608 - only '?' marks
        for stream, count, size in gone:
            self._bytes -= size + schema.ROW_OVERHEAD
            self._rows -= 1
            self._readings -= count
            left = self._stream_rows.get(stream, 0) - 1
            if left > 0:
                self._stream_rows[stream] = left
            else:
                self._stream_rows.pop(stream, None)

    def stats(self) -> OutboxStats:
        """Depth, bytes, age and counters: running totals plus one indexed lookup (cheap)."""
        with self._guard("stats"):
            oldest = self._conn.execute("SELECT created_ns FROM outbox ORDER BY id LIMIT 1").fetchone()
            counters = dict(self._conn.execute("SELECT name, value FROM counters").fetchall())
        counters["disk_full"] = max(counters.get("disk_full", 0), self._counters.get("disk_full", 0))
        return OutboxStats(
            rows=self._rows,
            readings=self._readings,
            bytes=self._bytes,
            max_bytes=self.max_bytes,
            oldest_created_ns=oldest[0] if oldest else None,
            evicted_rows=counters.get("evicted_rows", 0),
            evicted_readings=counters.get("evicted_readings", 0),
            streams=dict(self._stream_rows),
            expired_rows=counters.get("expired_rows", 0),
            expired_readings=counters.get("expired_readings", 0),
            disk_full=counters["disk_full"],
            max_age_s=self.max_age_s,
            epoch=self.epoch,
        )

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


_SEVERITY: Final[dict[RemovalReason, Severity]] = {
    "quota": "warning",
    "age": "warning",
    "disk_full": "alarm",
}


def _removal_event(victims: _Victims, now: int, reason: RemovalReason, earlier: Event | None = None) -> Event:
    """The notice of one removal, or of `earlier`'s removals and this one (counts summed, seq spans
    widened, `ts_ns` the first removal and `last_ns` the latest)."""
    detail: dict[str, Any] = {
        "reason": reason,
        "rows": victims.rows,
        "readings": victims.readings,
        "bytes": victims.bytes,
        "streams": {s: list(span) for s, span in victims.seqs.items()},
    }
    if earlier is not None:
        for key in ("rows", "readings", "bytes"):
            detail[key] += int(earlier.detail[key])
        streams = {s: list(span) for s, span in earlier.detail["streams"].items()}
        for stream, (first, last) in detail["streams"].items():
            span = streams.setdefault(stream, [first, last])
            span[0], span[1] = min(span[0], first), max(span[1], last)
        detail["streams"] = streams
        detail["last_ns"] = now
    return Event(
        kind="buffer_eviction",
        source="buffer",
        ts_ns=now if earlier is None else earlier.ts_ns,
        severity=_SEVERITY[reason],
        detail=detail,
    )
