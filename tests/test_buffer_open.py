"""Opening an outbox file: new, reopened, or refused with an error naming the path (and untouched)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.schema import MAX_EPOCH, SCHEMA_VERSION, OutboxUnusableError
from water_edge.buffer.stats import read_stats
from water_edge.buffer.types import Batch
from water_edge.core.errors import BufferError
from water_edge.core.reading import Reading

BIG = 1 << 30


def one_batch() -> list[Batch]:
    return [Batch("a", readings=[Reading("plc1", "t", 1, 1.0)])]


def test_a_new_file_and_an_empty_file_become_outboxes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (tmp_path / "new.db", empty):
        with Outbox(path, max_bytes=BIG) as outbox:
            outbox.append(one_batch())
        with Outbox(path, max_bytes=BIG) as outbox:
            assert len(outbox.lease(0, 10)) == 1


def test_a_non_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    content = b"this is not a database, it is a shopping list\n" * 100
    path.write_bytes(content)
    with pytest.raises(BufferError, match=re.escape(str(path))) as info:
        Outbox(path, max_bytes=BIG)
    assert "not a usable SQLite database" in str(info.value)
    with pytest.raises(BufferError, match=re.escape(str(path))):
        read_stats(path)
    assert path.read_bytes() == content


def test_another_applications_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    content = path.read_bytes()
    with pytest.raises(BufferError, match=re.escape(str(path))) as info:
        Outbox(path, max_bytes=BIG)
    assert "customers" in str(info.value)
    assert path.read_bytes() == content  # in particular, not switched to WAL


def test_another_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    with pytest.raises(BufferError, match="application_id"):
        Outbox(path, max_bytes=BIG)


def test_every_new_outbox_has_an_epoch_of_its_own_for_life(tmp_path: Path) -> None:
    """The centre tells a new outbox's seqs (from 1 again) from an old one's by the epoch."""
    epochs = []
    for name in ("first.db", "replaced-card.db"):
        with Outbox(tmp_path / name, max_bytes=BIG) as outbox:
            outbox.append(one_batch())
            epochs.append(outbox.epoch)
        with Outbox(tmp_path / name, max_bytes=BIG) as outbox:
            assert outbox.epoch == epochs[-1], "reopened, the same outbox"
            (row,) = outbox.lease(0, 10)
            assert row.seq == 1
    assert all(1 <= e <= MAX_EPOCH for e in epochs)
    assert epochs[0] != epochs[1]


def test_an_outbox_from_before_epochs_is_epoch_0_and_seqs_on(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=BIG) as outbox:
        outbox.append(one_batch())
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'epoch'")
    conn.close()
    with Outbox(path, max_bytes=BIG) as outbox:
        outbox.append(one_batch())
        assert outbox.epoch == 0
        assert [r.seq for r in outbox.lease(0, 10)] == [1, 2]


@pytest.mark.parametrize("epoch", [0, -5, 2**53, "seven", 1.5])
def test_an_outbox_whose_epoch_is_not_one_is_unusable(tmp_path: Path, epoch: object) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, max_bytes=BIG).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
    conn.close()
    with pytest.raises(OutboxUnusableError, match=f"{re.escape(str(path))}: 'meta' epoch"):
        Outbox(path, max_bytes=BIG)


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=BIG) as outbox:
        outbox.append(one_batch())
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(BufferError, match=re.escape(str(path))) as info:
        Outbox(path, max_bytes=BIG)
    assert "newer" in str(info.value)
    with pytest.raises(BufferError, match="newer"):
        read_stats(path)
    # The rows are still there for a newer agent.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    conn.close()


def test_a_damaged_outbox_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, max_bytes=BIG).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE streams")
    conn.commit()
    conn.close()
    with pytest.raises(BufferError, match="streams"):
        Outbox(path, max_bytes=BIG)


def test_a_missing_directory_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "outbox.db"
    with pytest.raises(BufferError, match=re.escape(str(path))):
        Outbox(path, max_bytes=BIG)


def test_a_non_positive_quota_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match="max_bytes"):
        Outbox(tmp_path / "outbox.db", max_bytes=0)


def test_a_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=BIG), pytest.raises(BufferError, match="in use"):
        Outbox(path, max_bytes=BIG)
    Outbox(path, max_bytes=BIG).close()  # free again once the first is closed


def test_the_agent_refuses_an_outbox_from_a_newer_agent_and_keeps_it(tmp_path: Path) -> None:
    # After a rollback the older agent meets the outbox its newer successor wrote: it must say so
    # and leave the rows alone, not quarantine the file and start an empty outbox.
    from tests.support.testing import write_agent_config
    from water_edge.agent.config import load_config

    config = write_agent_config(
        tmp_path, devices=[{"name": "plc", "kind": "fake", "tags": [{"name": "flow"}]}]
    )
    path = load_config(config).buffer_path
    path.parent.mkdir(parents=True)
    with Outbox(path, max_bytes=BIG) as outbox:
        outbox.append(one_batch())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    done = subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"schema version {SCHEMA_VERSION + 1} is newer than this agent supports" in done.stderr
    assert "a newer agent wrote it" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in path.parent.iterdir() if "quarantined" in p.name] == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


async def test_a_card_that_keeps_damaging_the_outbox_keeps_the_three_newest_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each copy may be as large as the outbox's quota, outside it: kept for ever, a failing card
    # filled itself with them.
    path = tmp_path / "outbox.sqlite"
    clock = iter(range(1_764_000_000, 1_764_000_000 + 3600 * 6, 3600))
    monkeypatch.setattr("water_edge.core.quarantine.time.time", lambda: float(next(clock)))
    moved = []
    for damage in range(6):
        path.write_bytes(b"not an outbox %d " % damage * 100)
        outbox = await AsyncOutbox.open(path, max_bytes=BIG, quarantine_unusable=True)
        assert outbox.quarantined is not None
        moved.append(outbox.quarantined[0])
        await outbox.close()
        path.unlink()
        Path(f"{path}-wal").unlink(missing_ok=True)
        Path(f"{path}-shm").unlink(missing_ok=True)
    kept = sorted(p.name for p in tmp_path.iterdir() if "quarantined" in p.name)
    assert kept == [m.name for m in moved[-3:]]
    assert moved[-1].read_bytes() == b"not an outbox 5 " * 100
