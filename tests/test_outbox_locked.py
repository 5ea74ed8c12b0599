"""An outbox another process holds, or this user may not open, is said to be so: never taken for a
corrupt file, never quarantined, and its rows are all there once it is free again."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from water_edge.buffer import outbox as outbox_module
from water_edge.buffer import stats as stats_module
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.schema import OutboxLockedError
from water_edge.buffer.stats import read_stats
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading

BIG = 1 << 30
NOBODY = 65534

# What a technician's `sqlite3` shell in exclusive locking mode does to the live file. A second
# process: SQLite's locks between connections of one process do not behave the same.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE meta SET value = value WHERE key = 'max_bytes'")
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real 5 s wait for the lock, shortened: the outcome is the same.
    monkeypatch.setattr(outbox_module, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(stats_module, "BUSY_TIMEOUT_MS", 200)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "locked\n"
        yield
    finally:
        proc.stdin.close()  # the locker's readline returns: it exits and the lock goes with it
        proc.wait(timeout=30)


def outbox_with_rows(path: Path, n: int) -> tuple[int, list[int]]:
    """An outbox at `path` holding `n` rows: its epoch and row ids."""
    with Outbox(path, max_bytes=BIG) as box:
        ids = box.append([Batch("plc1", readings=[Reading("plc1", "flow", i, float(i))]) for i in range(n)])
        return box.epoch, ids


def quarantined(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if "quarantined" in p.name]


async def test_the_agents_open_of_a_locked_outbox_fails_and_keeps_the_file_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    epoch, ids = outbox_with_rows(path, 3)
    with locked(path), pytest.raises(OutboxLockedError) as info:
        await AsyncOutbox.open(path, max_bytes=BIG, quarantine_unusable=True)
    assert str(info.value) == (f"outbox {path} is locked by another process (an sqlite3 session?): close it")
    assert quarantined(tmp_path) == []
    # The lock released, the next start (systemd's restart) carries on with the same outbox.
    async with await AsyncOutbox.open(path, max_bytes=BIG, quarantine_unusable=True) as box:
        assert box.quarantined is None
        assert box.epoch == epoch
        assert [row.id for row in await box.lease(0, 10)] == ids
    assert quarantined(tmp_path) == []


def test_buffer_stats_of_a_locked_outbox_says_it_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox_with_rows(path, 2)
    with locked(path), pytest.raises(OutboxLockedError, match="is locked by another process") as info:
        read_stats(path)
    assert "not a usable" not in str(info.value)
    assert read_stats(path).rows == 2


# Root reads and writes any file whatever its mode: a user's view needs a step run as somebody else.
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a step as an unprivileged user",
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="outbox-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def rows_in(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    conn.close()
    return count


OPEN_AS_THE_AGENT = """
import asyncio, sys
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core.errors import BufferError
async def main():
    try:
        box = await AsyncOutbox.open(sys.argv[1], max_bytes=1 << 30, quarantine_unusable=True)
    except BufferError as exc:
        print(type(exc).__name__, exc)
    else:
        print("opened", box.quarantined)
        await box.close()
asyncio.run(main())
"""


@needs_setpriv
def test_an_outbox_the_agents_user_may_not_write_is_refused_not_quarantined(shared_dir: Path) -> None:
    # The agent once started by hand as root left a root-owned outbox in the service user's directory.
    path = shared_dir / "outbox.sqlite"
    outbox_with_rows(path, 4)
    (shared_dir / "outbox.sqlite.lock").unlink()
    path.chmod(0o644)
    os.chown(shared_dir, NOBODY, NOBODY)
    done = as_nobody("-c", OPEN_AS_THE_AGENT, str(path))
    expected = f"OutboxUnavailableError cannot open outbox {path}: permission denied on {path}\n"
    assert done.stdout == expected, done.stderr
    assert quarantined(shared_dir) == []
    assert rows_in(path) == 4


@needs_setpriv
def test_buffer_stats_in_a_directory_the_user_may_not_read_says_so(shared_dir: Path) -> None:
    state = shared_dir / "state"
    state.mkdir()
    state.chmod(0o750)  # whatever the umask
    path = state / "outbox.sqlite"
    outbox_with_rows(path, 1)
    done = as_nobody("-m", "water_edge.agent.cli", "buffer", "stats", "--db", str(path))
    assert done.returncode == 1
    assert done.stderr == (
        f"edge-agent: cannot read {path}: permission denied (run as root or as the agent's service user)\n"
    )


def copy_without_shm(source: Path, target: Path) -> int:
    """Copy a live outbox's file and `-wal` (rows committed only to the WAL) to `target`, as `cp`
    of the two would; the number of rows."""
    with Outbox(source, max_bytes=BIG) as box:
        box.append([Batch("plc1", readings=[Reading("plc1", "flow", i, 1.0)]) for i in range(5)])
        shutil.copy(source, target)
        shutil.copy(f"{source}-wal", f"{target}-wal")
    return 5


@needs_setpriv
def test_buffer_stats_of_a_copy_with_a_wal_but_no_shm(tmp_path: Path, shared_dir: Path) -> None:
    copy = shared_dir / "outbox.sqlite"
    rows = copy_without_shm(tmp_path / "outbox.sqlite", copy)
    for file in (copy, Path(f"{copy}-wal")):
        file.chmod(0o644)
    before = {p.name: p.read_bytes() for p in shared_dir.iterdir()}

    # A user who cannot create the -shm SQLite needs to read the WAL is told so; nothing is created.
    done = as_nobody("-m", "water_edge.agent.cli", "buffer", "stats", "--db", str(copy))
    assert done.returncode == 1
    assert done.stderr == (
        f"edge-agent: cannot read {copy}: it has a -wal but no -shm, and reading the -wal needs "
        f"outbox.sqlite-shm created in {shared_dir}: permission denied (run as root or as the "
        "directory's owner)\n"
    )
    assert {p.name: p.read_bytes() for p in shared_dir.iterdir()} == before

    # Root reads the rows in the WAL too; the -shm SQLite creates belongs to the file's owner.
    os.chown(copy, NOBODY, NOBODY)
    os.chown(f"{copy}-wal", NOBODY, NOBODY)
    assert read_stats(copy).rows == rows
    for name, content in before.items():
        assert (shared_dir / name).read_bytes() == content
    shm = Path(f"{copy}-shm").stat()
    assert (shm.st_uid, shm.st_gid, shm.st_mode & 0o777) == (NOBODY, NOBODY, 0o644)
