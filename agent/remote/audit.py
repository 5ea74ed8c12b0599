"""The security audit log: one JSON line per security-relevant decision, in the state dir, mode 0600.

Each line is flushed and fsynced before the decision takes effect, so a command or PLC write that
happened is always on record. Values that may be secret (command args, configs) are never written,
only their digests. Every field is bounded (`MAX_FIELD_CHARS` per string, `MAX_ITEMS` per list or
object), so whatever a sender puts in an envelope costs at most a few hundred bytes of log; and the
file is rotated at `max_bytes` keeping `keep` old files (`audit.log.1` the newest), so the log never
takes more than `(keep + 1) * max_bytes` of the SD card.

The root updater appends to the agent's log, in a directory the agent owns: it opens it with
`in_owners_directory=True`, which never follows a link at the log's name, accepts only a regular
file with one link that the directory's owner holds, and gives a file it makes there to that
owner through its own descriptor (a link planted there would otherwise have root create, chmod
and hand over any file the agent names, e.g. a `.pth` the updater's Python runs).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from water_edge.core.reading import now_ns

log = structlog.get_logger(__name__)

MAX_FIELD_CHARS: Final = 200
MAX_ITEMS: Final = 32
DEFAULT_MAX_BYTES: Final = 4 * 2**20
DEFAULT_KEEP: Final = 3


def bounded(value: Any, chars: int = MAX_FIELD_CHARS) -> Any:
    """`value` with long strings cut (the cut marked with its full length) and long lists cut."""
    if isinstance(value, str):
        return value if len(value) <= chars else f"{value[:chars]}…(+{len(value) - chars} chars)"
    if isinstance(value, bytes):
        return bounded(value.decode("utf-8", "replace"), chars)
    if isinstance(value, list | tuple):
        items = [bounded(v, chars) for v in value[:MAX_ITEMS]]
        return items + ([f"…(+{len(value) - MAX_ITEMS} items)"] if len(value) > MAX_ITEMS else [])
    if isinstance(value, dict):
        keys = list(value)[:MAX_ITEMS]
        return {bounded(str(k), 64): bounded(value[k], chars) for k in keys}
    return value


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        in_owners_directory: bool = False,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._guarded = in_owners_directory
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rotations = 0
        self.last_error: str | None = None

    def _open(self) -> int:
        if self._guarded:
            return _open_in_owners_directory(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # explicitly, whatever the umask or a previous mode
        return fd

    def record(self, action: str, outcome: str, **fields: Any) -> bool:
        """Append `{ts, action, outcome, ...fields}`; `outcome` is ok, refused, failed or mismatch.
        False when the line could not be written (a full or failing card: logged with the line,
        `last_error` says why); a caller that must not act unaudited checks it."""
        entry = {"ts": now_ns(), "action": action, "outcome": outcome, **bounded(fields)}
        line = orjson.dumps(entry, default=str) + b"\n"
        written = True
        with self._lock:
            try:
                if self._fd < 0:  # a rotation that failed half way: the file is opened afresh
                    self._fd = self._open()
                    self._size = os.fstat(self._fd).st_size
                if self._size + len(line) > self.max_bytes and self._size > 0:
                    self._rotate()
                os.write(self._fd, line)
                os.fsync(self._fd)
                self._size += len(line)
                self.counts[f"{action}.{outcome}"] += 1
            except OSError as exc:
                written = False
                self.last_error = f"cannot write {self.path}: {exc.strerror or exc}"
        if not written:
            log.error(
                "audit.write_failed", error=self.last_error, **{k: v for k, v in entry.items() if k != "ts"}
            )
            return False
        level = log.info if outcome in ("ok", "accepted") else log.warning
        level("audit", **{k: v for k, v in entry.items() if k != "ts"})
        return True

    def _rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.<keep> (dropped); a new audit.log."""
        # Forgotten before it is closed: if a rename or the new file fails (a failing card), the
        # number must not be closed or written again, as another file (the outbox) may have it.
        fd, self._fd = self._fd, -1
        os.close(fd)
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            with contextlib.suppress(FileNotFoundError):
                if n == self.keep:
                    older.unlink(missing_ok=True)
                os.replace(newer, older)
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()
        self._size = 0
        self.rotations += 1
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _open_in_owners_directory(path: Path) -> int:
    """`path` opened for appending by a process more privileged than its directory's owner; OSError
    for a link, a FIFO or device, a file with other links, or one its directory's owner does not hold."""
    owner = os.stat(path.parent)
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd, made = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        fd, made = os.open(path, flags), False  # ELOOP for a link, ENXIO for a FIFO
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(errno.EPERM, "not a regular file with a single link", str(path))
        if not made and st.st_uid != owner.st_uid:
            raise OSError(errno.EPERM, f"held by uid {st.st_uid}, not by its directory's owner", str(path))
        if made and st.st_uid != owner.st_uid:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


RECENT_TAIL_BYTES: Final = 256 * 1024


def recent_entries(path: Path, action: str, within_ns: int, now: int | None = None) -> list[dict[str, Any]]:
    """Entries of `action` from the last `within_ns` (and any stamped later: a clock set back), in
    the log and its newest rotated file; only their last `RECENT_TAIL_BYTES` are read. A line that
    does not parse (one cut short by a power cut) is skipped."""
    since = (now_ns() if now is None else now) - within_ns
    found: list[dict[str, Any]] = []
    for file in (path.with_name(f"{path.name}.1"), path):
        try:
            with file.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - RECENT_TAIL_BYTES))
                tail = f.read()
        except OSError:
            continue
        lines = tail.splitlines()[1:] if size > RECENT_TAIL_BYTES else tail.splitlines()
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(entry, dict) or entry.get("action") != action:
                continue
            if isinstance(entry.get("ts"), int) and entry["ts"] >= since:
                found.append(entry)
    return found


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit log file (for `edge-agent` tooling and tests)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
