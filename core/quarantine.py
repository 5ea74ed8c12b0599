"""Telling a damaged SQLite state file, and moving an unusable one aside (renamed with a UTC
timestamp).

A corrupt, foreign or too-new SQLite file (the outbox, the nonce store, a pump's or a machine's
history) must not keep the agent from collecting or a model from working: the file and its
`-wal`/`-shm` companions are renamed to `<name>.quarantined-<UTC time><suffix>` in the same
directory, kept for a person to inspect or recover, the owner creates a fresh one in its place, and
an event names the kept file. The `KEEP_QUARANTINED` newest copies of each file are kept: a card
that keeps damaging the outbox would otherwise fill itself with copies of it (each up to the
outbox's quota, outside it).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import structlog

from water_edge.core.reading import Event, Severity, now_ns

log = structlog.get_logger(__name__)

KEEP_QUARANTINED = 3
_COMPANIONS = ("-wal", "-shm")


def quarantine(path: Path, now_s: float | None = None) -> Path:
    """Rename `path` (and its WAL and shared-memory files) aside; return the new main path.
    `OSError` when it cannot be moved (the caller says what the file was)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now_s is None else now_s))
    target = path.with_name(f"{path.name}.quarantined-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.quarantined-{stamp}-{n}")
    # WAL first: a main file without its WAL would lose committed rows if opened alone.
    for suffix in (*_COMPANIONS, ""):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{target}{suffix}"))
    _prune(path)
    return target


def _stamp_order(copy: Path) -> tuple[str, int]:
    stamp, _, n = copy.name.rpartition(".quarantined-")[2].partition("-")
    return stamp, int(n) if n.isdigit() else 1


def _prune(path: Path) -> None:
    """Delete all but the `KEEP_QUARANTINED` newest copies of `path` (with their companions)."""
    copies = [p for p in path.parent.glob(f"{path.name}.quarantined-*") if not p.name.endswith(_COMPANIONS)]
    for old in sorted(copies, key=_stamp_order)[:-KEEP_QUARANTINED]:
        for suffix in (*_COMPANIONS, ""):
            try:
                Path(f"{old}{suffix}").unlink(missing_ok=True)
            except OSError as exc:
                log.warning("state.quarantined_not_removed", path=f"{old}{suffix}", error=str(exc))
                return
        log.info("state.quarantined_removed", path=str(old), kept=KEEP_QUARANTINED)


def require_intact(db: sqlite3.Connection) -> None:
    """`PRAGMA quick_check` (b-tree and page structure; O(size), no index cross-check):
    `sqlite3.DatabaseError` saying what is damaged (the first five findings)."""
    found = [str(row[0]) for row in db.execute("PRAGMA quick_check(5)")]
    if found != ["ok"]:
        raise sqlite3.DatabaseError(f"quick_check: {'; '.join(found)}")


DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_damaged_file(exc: BaseException) -> bool:
    """Whether SQLite said the file itself is damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`, with
    their extended codes) — not an I/O error, a lock or a full disk, which say nothing about it."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in DAMAGED_CODES


def moved_aside_event(
    kind: str, source: str, severity: Severity, quarantined: tuple[Path, str], **detail: Any
) -> Event:
    """The event that tells the centre a state file was moved aside (`quarantined`: where to and
    why; `detail`: what else it should know), logged as an error too."""
    moved, reason = quarantined
    full = {"moved_to": str(moved), "reason": reason, **detail}
    log.error(kind, source=source, **full)
    return Event(kind, source, now_ns(), severity, detail=full)
