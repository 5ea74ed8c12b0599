"""Persistent nonce store: a command's nonce is accepted once; entries are pruned after they expire.

Kept in SQLite (synchronous=FULL) so a replay is refused after a restart or a power cut too. It stays
small because commands live at most `max_command_ttl_s`: a nonce past its command's expiry can be
forgotten, since the expiry check alone refuses that command - judged by the latest time the store
has pruned at (`latest_claim`, kept with the nonces), not by the clock alone: a gateway without a
real-time clock comes back from a power cut with its clock behind, where a forgotten command would
look unexpired again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from water_edge.core.errors import AgentError
from water_edge.core.quarantine import is_damaged_file, quarantine, require_intact


class NonceStoreError(AgentError):
    """The store could not be read or written (an I/O error, a lock, a damaged file): the command
    whose nonce it was to record must be refused, never run unrecorded."""


class NonceStore:
    """`reset_at`: when the store was last started afresh because its file was unreadable (unix
    s), else None. Until every command issued before then has expired, only the time rule could
    refuse its replay, so the processor refuses every command issued by then (`quarantined`
    says where the old file was kept and why, for the start-up alarm)."""

    def __init__(self, path: Path, now_s: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.quarantined: tuple[Path, str] | None = None
        # Set at the first claim that found the file damaged while the agent ran; `on_damaged` is
        # then called once (the agent restarts, and its start moves the file aside as above).
        self.damaged: str | None = None
        self.on_damaged: Callable[[str], None] | None = None
        try:
            self._db = _open(path)
        except sqlite3.OperationalError as exc:  # locked, no permission, no space: not the file's fault
            raise AgentError(f"cannot open the nonce store {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            # A corrupt store must not keep the gateway from collecting: keep it aside, start afresh.
            # The old store's last write is no earlier than its last claim: a clock that booted
            # behind (no RTC, a saved time from before the power cut) must not reset to before it.
            last_write = max((_mtime(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")), default=0.0)
            try:
                self.quarantined = (quarantine(path), str(exc))
                self._db = _open(path)
            except (OSError, sqlite3.Error) as again:
                raise AgentError(f"cannot open the nonce store {path}: {exc}; then: {again}") from exc
            reset = int(max(time.time() if now_s is None else now_s, last_write))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('reset_at', ?)", (str(reset),))
        except (OSError, sqlite3.Error) as exc:
            raise AgentError(f"cannot open the nonce store {path}: {exc}") from exc
        row = self._db.execute("SELECT value FROM meta WHERE key = 'reset_at'").fetchone()
        self.reset_at: int | None = None if row is None else int(row[0])
        row = self._db.execute("SELECT value FROM meta WHERE key = 'latest_claim'").fetchone()
        # The latest `now` a claim pruned at: every nonce forgotten expired before it.
        self.latest_claim: int | None = None if row is None else int(row[0])
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", 0o600)
        self._lock = threading.Lock()

    def claim(self, nonce: str, expires_at: int, now: int) -> bool:
        """Record `nonce`; False if it was already used (a replay). Prunes expired entries.
        `NonceStoreError` when the store cannot be read or written."""
        with self._lock:
            latest = max(now, self.latest_claim or now)
            try:
                # One transaction: the prune and the time it pruned at are on disk together.
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
                if latest != self.latest_claim:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('latest_claim', ?)", (str(latest),))
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO nonces (nonce, expires_at) VALUES (?, ?)", (nonce, expires_at)
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise self._failed(exc, "record it") from exc
            self.latest_claim = latest
            return cur.rowcount == 1

    def seen(self, nonce: str) -> bool:
        """True if `nonce` was claimed and is still kept (a replay); only reads the store.
        `NonceStoreError` when it cannot be read."""
        with self._lock:
            try:
                row = self._db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
            except sqlite3.Error as exc:
                raise self._failed(exc, "read it") from exc
            return row is not None

    def _failed(self, exc: sqlite3.Error, doing: str) -> NonceStoreError:
        """The error to raise for `exc`; damage found the first time asks for the restart."""
        if is_damaged_file(exc) and self.damaged is None:
            self.damaged = str(exc)
            if self.on_damaged is not None:
                self.on_damaged(self.damaged)
        return NonceStoreError(f"the nonce store {self.path} cannot {doing}: {exc}")

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM nonces").fetchone()
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _open(path: Path) -> sqlite3.Connection:
    """The store at `path`, created 0600 if new; `sqlite3.DatabaseError` when the file is not a
    usable database (`quick_check` included)."""
    # Created 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        require_intact(db)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    except BaseException:
        db.close()
        raise
    return db


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
