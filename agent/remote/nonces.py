"""Persistent nonce store: a command's nonce is accepted once; entries are pruned after they expire.

Kept in SQLite (synchronous=FULL) so a replay is refused after a restart or a power cut too. It stays
small because commands live at most `max_command_ttl_s`: a nonce past its command's expiry can be
forgotten, since the expiry check alone refuses that command.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

from water_edge.core.errors import AgentError


class NonceStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise AgentError(f"cannot open the nonce store {path}: {exc}") from exc
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", 0o600)
        self._lock = threading.Lock()

    def claim(self, nonce: str, expires_at: int, now: int) -> bool:
        """Record `nonce`; False if it was already used (a replay). Prunes expired entries."""
        with self._lock:
            self._db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            cur = self._db.execute(
                "INSERT OR IGNORE INTO nonces (nonce, expires_at) VALUES (?, ?)", (nonce, expires_at)
            )
            return cur.rowcount == 1

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM nonces").fetchone()
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
