"""Per-pump state on the gateway: the versioned calibration (JSON) and a rolling feature history (SQLite).

Layout under the agent's state dir:

    <state_dir>/pump/<pump>/calibration.json        the calibration in service (highest version)
    <state_dir>/pump/<pump>/calibration.v<N>.json   every version ever written (audit, roll back)
    <state_dir>/pump/<pump>/history.sqlite          1 sample per `sample_interval_s` while running

Why a separate history store and not the outbox: the outbox deletes rows once the uplink has them
acknowledged, so after a normal day online it holds nothing to calibrate from. The history is
small (one float32 per signal per sample, ~60 bytes a row: 14 days at 1 s is ~75 MB per pump),
bounded by `history_days`, and local to the pump so pruning and re-calibration never touch the
outbox's transactions.

On a card gone read-only (ext4 `errors=remount-ro`) the history is what can be read of it (the
file opened read-only, else an empty one in memory), rows are counted as not stored, and the file
is opened afresh once the card takes writes again (a connection opened before the card was
unmounted and mounted again writes to a file system that is gone).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.core.files import read_only_error
from water_edge.core.instants import iso
from water_edge.core.quarantine import is_damaged_file, moved_aside_event, quarantine, require_intact
from water_edge.core.reading import Event
from water_edge.models.manifest import ModelError
from water_edge.models.pump.detector import (
    CALIBRATION_BLOCK_ROWS,
    MAX_CALIBRATION_ROWS,
    Calibration,
    FrozenCount,
    calibration_blocks,
)
from water_edge.models.versioned_store import VersionedJsonStore

log = structlog.get_logger(__name__)

NS = 1_000_000_000
DAY_NS = 86_400 * NS
READ_ROWS = 4096  # rows fetched from SQLite at a time: ~0.7 MB of Python objects at most
# SQLite's primary result codes of a connection whose file system failed under it (a card gone
# read-only, unmounted, or its file no longer there): opened afresh once the card takes writes.
# A full card (SQLITE_FULL) or a lock (SQLITE_BUSY) is not: the same connection writes again.
_CARD_GONE = frozenset(
    {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL}
)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS samples (ts_ns INTEGER PRIMARY KEY, v BLOB NOT NULL)",
)


def _decode(got: Sequence[Any], n_channels: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """`(ts_ns, blob)` rows as int64 (m,) and float32 (m, channels)."""
    ts = np.fromiter((r[0] for r in got), dtype=np.int64, count=len(got))
    values = np.frombuffer(b"".join([r[1] for r in got]), dtype="<f4").reshape(len(got), n_channels)
    return ts, values.astype(np.float32, copy=False)


class Scan:
    """A stretch of a history being read (`FeatureHistory.scan`): `count` rows; iterating gives
    them `rows` at a time as (ts int64 (m,), values float32 (m, channels)), oldest first, NaN
    where a signal was missing. The arrays are read-only (views of the fetched bytes)."""

    def __init__(self, count: int, cursor: sqlite3.Cursor, n_channels: int, rows: int) -> None:
        self.count = count
        self._cursor = cursor
        self._n_channels = n_channels
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        while got := self._cursor.fetchmany(self._rows):
            yield _decode(got, self._n_channels)


@dataclass(frozen=True, slots=True)
class CalibrationRows:
    """The rows of a history stretch a calibration learns from (`FeatureHistory.calibration_rows`)."""

    values: npt.NDArray[np.float32]  # (rows, channels): the kept blocks one after the other
    starts: list[int]  # where each block begins in `values`
    frozen: FrozenCount  # the frozen test's figures over every row in the range, kept or not
    in_range: int  # rows in the range: more than `len(values)` when thinned
    first_ns: int | None  # the range's first and last rows (None: no row)
    last_ns: int | None


def pump_dir(state_dir: Path, pump: str) -> Path:
    return Path(state_dir) / "pump" / pump


class CalibrationStore(VersionedJsonStore[Calibration]):
    """Reads and writes one pump's calibration; each write gets the next version number."""

    def __init__(self, state_dir: Path, pump: str) -> None:
        super().__init__(pump_dir(state_dir, pump), "calibration", Calibration.from_dict)


class FeatureHistory:
    """A pump's recent feature rows. Thread-safe; call from the event loop via `asyncio.to_thread`.

    The channel list is fixed per file: if the pump's signals change (config edit), the old rows
    cannot be read as the new columns and are dropped.
    """

    def __init__(
        self, path: Path, channels: Sequence[str], history_days: float, *, reset_on_change: bool = True
    ) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a new pump on a card gone read-only: an empty history, for now
            if exc.errno != errno.EROFS or not reset_on_change:
                raise
        self.channels = list(channels)
        self.keep_ns = int(history_days * DAY_NS)
        self._lock = threading.Lock()
        # The agent's own history (may be created) moves a damaged file aside and starts anew, at
        # start (a card corrupted by a power cut) and while running (a card going bad under it).
        self._own = reset_on_change
        # (where the damaged file was moved, why); `_unreported` until the owner has sent its event.
        self.quarantined: tuple[Path, str] | None = None
        self._unreported = False
        self.found_while_running = False
        # Rows that could not be written: since the start, and in the failure going on now (0
        # while the history is written), with the reading time of its first row.
        self.not_stored = 0
        self.unstored_rows = 0
        self.unstored_since_ns: int | None = None
        # The connection cannot write (the card went read-only under it, or was read-only at the
        # start): the file is opened afresh at the first write once the card takes writes.
        self._reopen = False
        try:
            self._db = self._connect(reset_on_change)
        except sqlite3.OperationalError:  # locked, no permission, no space: not the file's fault
            if not reset_on_change or _card_read_only(self.path.parent) is None:
                raise
            # A card that takes no writes at the start: the model runs on what can be read.
            self._db = self._read_only_connection()
            self._reopen = True
        except sqlite3.DatabaseError as exc:
            if not reset_on_change:
                raise ModelError(
                    f"{self.path}: not a readable history database ({exc}); the agent moves it "
                    "aside and starts a new history when it next opens it"
                ) from None
            self._move_aside(exc)
        self.pruned = 0

    def _connect(self, reset_on_change: bool) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            if reset_on_change:  # the agent's own open: a damaged file is moved aside, not used
                require_intact(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'channels'").fetchone()
            if row is not None and json.loads(row[0]) != self.channels and not reset_on_change:
                raise ModelError(
                    f"{self.path}: holds signals {', '.join(json.loads(row[0]))}, "
                    f"the config maps {', '.join(self.channels)}"
                )
            if row is None or json.loads(row[0]) != self.channels:
                db.execute("BEGIN")
                db.execute("DELETE FROM samples")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('channels', ?)", (json.dumps(self.channels),))
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _read_only_connection(self) -> sqlite3.Connection:
        """What can be read of the history on a card that takes no writes: the file opened
        read-only (`mode=ro` reads a WAL left by a crash, through its `-shm`; `immutable` a file
        closed cleanly, which has none), else an empty history in memory (no file yet, or one of
        other signals). Rows appended meanwhile are not stored: the file is opened for writing
        once the card takes writes."""
        for how in ("mode=ro", "immutable=1"):
            try:
                db = sqlite3.connect(
                    f"{self.path.as_uri()}?{how}", uri=True, check_same_thread=False, isolation_level=None
                )
            except sqlite3.Error:
                continue
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'channels'").fetchone()
                db.execute("SELECT ts_ns, v FROM samples LIMIT 1").fetchall()
                if row is not None and json.loads(row[0]) == self.channels:
                    return db
            except (sqlite3.Error, ValueError):
                pass
            db.close()
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        for statement in _SCHEMA:
            db.execute(statement)
        return db

    def _writable(self) -> bool:
        """(lock held) Whether the connection can be written, opening the file afresh when it
        could not be and the card takes writes again (its directory takes a file)."""
        if not self._reopen:
            return True
        if _card_read_only(self.path.parent) is not None:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect(True)
        except (OSError, sqlite3.OperationalError):
            return False  # not yet: the old connection still serves the reads
        except sqlite3.DatabaseError as exc:  # damaged while the card was away
            self._move_aside(exc, self._db)
            self.found_while_running = True
        else:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = db
        self._reopen = False
        return True

    def _not_stored(self, rows: Sequence[tuple[int, npt.NDArray[np.float64]]], why: str) -> ModelError:
        """(lock held) Count `rows` as lost to the history; the error saying so."""
        self.not_stored += len(rows)
        self.unstored_rows += len(rows)
        if self.unstored_since_ns is None:
            self.unstored_since_ns = int(rows[0][0])
        return ModelError(
            f"{self.path}: {self.unstored_rows} rows not stored since {iso(self.unstored_since_ns)} ({why})"
        )

    def _move_aside(self, exc: sqlite3.DatabaseError, damaged: sqlite3.Connection | None = None) -> None:
        """Quarantine the damaged file and open a new, empty history in its place. The damaged
        file's connection is closed only once the file is moved: if it cannot be, the history
        stays as it was and the error says why."""
        try:
            moved = quarantine(self.path)
        except OSError as move_exc:
            raise ModelError(
                f"{self.path}: unreadable ({exc}) and cannot be moved aside: {move_exc}"
            ) from None
        if damaged is not None:
            with contextlib.suppress(sqlite3.Error):
                damaged.close()
        self.quarantined, self._unreported = (moved, str(exc)), True
        self._db = self._connect(True)

    def _damaged_while_running(self, exc: sqlite3.DatabaseError) -> bool:
        """(lock held) Whether `exc` was damage this history has just replaced by a new file:
        only the agent's own history does, and only for damage (an I/O error, a lock or a full
        disk is the card's or the system's state, not the file's)."""
        if not self._own or not is_damaged_file(exc):
            return False
        self._move_aside(exc, self._db)
        self.found_while_running = True
        return True

    def quarantine_event(self, model: str, name: str) -> Event | None:
        """The `history_quarantined` warning for the centre when a damaged file was moved aside
        since the last call (at start or while running), else None. The model keeps its
        calibration and goes on scoring; what is lost is the history a recalibration or a replay
        would read."""
        if self.quarantined is None or not self._unreported:
            return None
        self._unreported = False
        return moved_aside_event(
            "history_quarantined",
            name,
            "warning",
            self.quarantined,
            model=model,
            name=name,
            found="while running" if self.found_while_running else "at start",
        )

    @property
    def quarantine_note(self) -> str | None:
        """The owner's `last_error` once a damaged history has been moved aside."""
        if self.quarantined is None:
            return None
        when = "damaged while running" if self.found_while_running else "unreadable at start"
        return f"history {when}, moved to {self.quarantined[0]}"

    @classmethod
    def for_pump(
        cls, state_dir: Path, pump: str, channels: Sequence[str], history_days: float
    ) -> FeatureHistory:
        return cls(pump_dir(state_dir, pump) / "history.sqlite", channels, history_days)

    @classmethod
    def existing(
        cls, state_dir: Path, pump: str, channels: Sequence[str], history_days: float
    ) -> FeatureHistory:
        """A pump's history for reading only (a calibration, a replay): `ModelError` when there is
        none yet or it holds other signals, never a new or emptied one."""
        path = pump_dir(state_dir, pump) / "history.sqlite"
        if not path.exists():
            raise ModelError(f"no feature history for pump {pump} at {path}")
        return cls(path, channels, history_days, reset_on_change=False)

    def __enter__(self) -> FeatureHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, rows: Sequence[tuple[int, npt.NDArray[np.float64]]]) -> None:
        """Store `(ts_ns, values)` rows (values in `channels` order, NaN = missing); prune old ones.
        `ModelError` when they cannot be written (a full disk, an I/O error): nothing is stored."""
        if not rows:
            return
        with self._lock:
            if not self._writable():
                raise self._not_stored(rows, os.strerror(errno.EROFS))
            try:
                self._insert(rows)
            except sqlite3.OperationalError as exc:
                # A full or failing card, a lock: these rows are lost to the history (it is what
                # a recalibration reads, not what is scored), the model goes on.
                self._reopen = (exc.sqlite_errorcode & 0xFF) in _CARD_GONE
                raise self._not_stored(rows, str(exc)) from None
            except sqlite3.DatabaseError as exc:
                if not self._damaged_while_running(exc):
                    raise
                self._insert(rows)  # into the new history: these rows were never committed
            self.unstored_rows, self.unstored_since_ns = 0, None

    def forget_after(self, ts_ns: int) -> int:
        """Delete the rows stamped after `ts_ns` (the gateway's clock was stepped back to it: they
        were stamped by it running ahead); how many. `ModelError` when they cannot be deleted."""
        with self._lock:
            if not self._writable():
                raise ModelError(
                    f"{self.path}: rows stamped ahead of the clock not deleted ({os.strerror(errno.EROFS)})"
                )
            try:
                return int(self._db.execute("DELETE FROM samples WHERE ts_ns > ?", (int(ts_ns),)).rowcount)
            except sqlite3.OperationalError as exc:
                self._reopen = (exc.sqlite_errorcode & 0xFF) in _CARD_GONE
                raise ModelError(
                    f"{self.path}: rows stamped ahead of the clock not deleted ({exc})"
                ) from None
            except sqlite3.DatabaseError as exc:
                if not self._damaged_while_running(exc):
                    raise
                return 0  # a new, empty history: nothing stamped ahead in it

    def _insert(self, rows: Sequence[tuple[int, npt.NDArray[np.float64]]]) -> None:
        try:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?)",
                [(int(ts), np.asarray(v, dtype="<f4").tobytes()) for ts, v in rows],
            )
            cutoff = int(rows[-1][0]) - self.keep_ns
            self.pruned += self._db.execute("DELETE FROM samples WHERE ts_ns < ?", (cutoff,)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    def read(
        self, from_ns: int | None = None, to_ns: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Timestamps and (rows, channels) values with `from_ns <= ts <= to_ns`, oldest first.

        The rows are copied `READ_ROWS` at a time into arrays sized first (no Python object per
        row of the stretch: a day at 1 s took ~15 MB of tuples and bytes that way, two weeks
        ~210 MB); `scan` reads a stretch a piece at a time, in the stored float32."""
        with self.scan(from_ns, to_ns) as rows:
            ts = np.empty(rows.count, dtype=np.int64)
            values = np.empty((rows.count, len(self.channels)))
            at = 0
            for piece_ts, piece in rows:  # as many as counted: one snapshot
                ts[at : at + len(piece_ts)] = piece_ts
                values[at : at + len(piece_ts)] = piece
                at += len(piece_ts)
        return ts[:at], values[:at]

    @contextlib.contextmanager
    def scan(
        self, from_ns: int | None = None, to_ns: int | None = None, *, rows: int = READ_ROWS
    ) -> Iterator[Scan]:
        """The rows with `from_ns <= ts <= to_ns` as one consistent snapshot (a read transaction:
        rows another connection appends or prunes meanwhile are not seen), `rows` at a time.
        Holds the history's lock until the block ends (appends wait): keep to reading inside it.

            with history.scan(start, end) as got:
                for ts, values in got:  # int64 (m,), float32 (m, channels), oldest first
                    ...
        """
        lo = -(2**63) if from_ns is None else int(from_ns)
        hi = 2**63 - 1 if to_ns is None else int(to_ns)
        with self._query() as db:
            db.execute("BEGIN")
            try:
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM samples WHERE ts_ns BETWEEN ? AND ?", (lo, hi)
                ).fetchone()
                cursor = db.execute(
                    "SELECT ts_ns, v FROM samples WHERE ts_ns BETWEEN ? AND ? ORDER BY ts_ns", (lo, hi)
                )
                yield Scan(int(count), cursor, len(self.channels), max(1, int(rows)))
            finally:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")  # a read: nothing to commit

    def calibration_rows(
        self,
        from_ns: int | None = None,
        to_ns: int | None = None,
        *,
        max_rows: int = MAX_CALIBRATION_ROWS,
        block_rows: int = CALIBRATION_BLOCK_ROWS,
    ) -> CalibrationRows:
        """The rows with `from_ns <= ts <= to_ns` a calibration learns from, in one pass over them:
        all of them up to `max_rows`, else evenly spread contiguous blocks (`calibration_blocks`)
        copied into one float32 array sized first; the frozen test's figures are counted on every
        row as it passes (`FrozenCount`). Memory: the kept rows and `READ_ROWS` rows being read,
        whatever the range (two weeks at 1 s of 8 signals: 3.2 MB of kept rows, where `read` takes
        77 MB)."""
        n_channels = len(self.channels)
        frozen = FrozenCount(n_channels)
        first = last = None
        with self.scan(from_ns, to_ns) as got:
            blocks = calibration_blocks(got.count, max_rows, block_rows)
            offsets = np.cumsum([0] + [b - a for a, b in blocks]).tolist()
            values = np.empty((offsets[-1], n_channels), dtype=np.float32)
            at, i = 0, 0  # the piece's first row in the range; the next block to fill
            for ts, piece in got:
                first = int(ts[0]) if first is None else first
                last = int(ts[-1])
                frozen.add(piece)
                end = at + len(ts)
                while i < len(blocks) and blocks[i][0] < end:
                    a, b = blocks[i]
                    lo, hi = max(a, at), min(b, end)
                    values[offsets[i] + lo - a : offsets[i] + hi - a] = piece[lo - at : hi - at]
                    if b > end:
                        break  # the block goes on in the next piece
                    i += 1
                at = end
        return CalibrationRows(values, offsets[:-1], frozen, got.count, first, last)

    def tail(self, rows: int) -> npt.NDArray[np.float64]:
        """The last `rows` rows' values (rows, channels), oldest first."""
        with self._query() as db:
            got = db.execute(
                "SELECT v FROM (SELECT ts_ns, v FROM samples ORDER BY ts_ns DESC LIMIT ?) ORDER BY ts_ns",
                (max(0, int(rows)),),
            ).fetchall()
        return (
            np.frombuffer(b"".join(r[0] for r in got), dtype="<f4")
            .astype(np.float64)
            .reshape(len(got), len(self.channels))
        )

    def count(self, from_ns: int | None = None) -> int:
        with self._query() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM samples WHERE ts_ns >= ?",
                (-(2**63) if from_ns is None else int(from_ns),),
            ).fetchone()
        return int(row[0])

    def span(self) -> tuple[int, int] | None:
        with self._query() as db:
            row = db.execute("SELECT MIN(ts_ns), MAX(ts_ns) FROM samples").fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    @contextlib.contextmanager
    def _query(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for a read; a damaged file is a `ModelError` naming it."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                if self._damaged_while_running(exc):
                    raise ModelError(f"{self.path}: damaged ({exc}); {self.quarantine_note}") from None
                raise ModelError(f"{self.path}: cannot read the history database ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _card_read_only(directory: Path) -> OSError | None:
    """The `EROFS` error when the file system `directory` is on (or would be created on) takes no
    writes: the outbox's probe (`read_only_error`) in the nearest directory that exists."""
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    return read_only_error(directory)


def keep_rows(
    history: FeatureHistory, rows: Sequence[tuple[int, npt.NDArray[np.float64]]], model: str, **names: str
) -> tuple[str | None, bool]:
    """Append `rows` to a model's history, saying so in the log once per failure, not at every
    write: `<model>.history_not_written` (warning) at its first failed write, then
    `<model>.history_written_again` with the rows lost once the history takes rows again.
    (The error while the history is not written, else None; whether it was written again now.)"""
    lost = history.unstored_rows
    try:
        history.append(rows)
    except ModelError as exc:
        if not lost:
            log.warning(f"{model}.history_not_written", **names, error=str(exc))
        return str(exc), False
    if lost and rows:
        log.info(f"{model}.history_written_again", **names, rows_not_stored=lost)
        return None, True
    return None, False


@dataclass
class StorageErrors:
    """What a model could not store, as its `last_error` shows it: its history's rows and its
    records (alarm, microphone) each say so while they fail, both at once when both do (before, the
    record's line hid how many rows were lost), and the line goes once neither fails."""

    history: str | None = None  # `keep_rows`'s error while the history is not written
    records: str | None = None  # why a record waits to be written
    shown: str | None = None  # the text last given as `last_error`

    def last_error(self, current: str | None) -> str | None:
        """The model's `last_error` now, from `current`: an error of another kind (a calibration's)
        stays once nothing fails to be stored."""
        parts = (self.history, None if self.records is None else f"alarm state not stored: {self.records}")
        text = "; ".join(part for part in parts if part) or None
        previous, self.shown = self.shown, text
        if text is not None:
            return text
        return None if current == previous else current
