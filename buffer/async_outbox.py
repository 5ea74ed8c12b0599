"""The outbox for asyncio code: an `Outbox` owned by one dedicated worker thread.

SQLite commits (an fsync each with synchronous=FULL) must never block the event loop, and an
sqlite3 connection belongs to the thread that made it; so the connection is created on the worker
and every call runs there, in the order it was made.

A call whose awaiting task is cancelled still runs to completion on the worker: a cancelled
`append` may have been committed. That is safe for delivery (the rows are there and will be sent)
but the caller cannot tell, so it should not re-append the same batches blindly.

When the card goes read-only under the agent (ext4's `errors=remount-ro` after I/O errors: the
usual end of an SD card), appends go on into an outbox in memory (a tmpfs: the unit's
RuntimeDirectory, else /dev/shm), so readings keep flowing to the centre live; the rows already on
the card stay there, untouched, until it takes writes again. Ids run on across the two files
(`Outbox.continue_ids_after`), so a row's id says which file holds it; the outbox in memory has its
own epoch and its own seqs (from 1), as any new outbox: no seq it gave can be given again by the
card's, whatever happens before the card is back (a restart, a reboot).
Every `PROBE_EVERY_S` the card is tried again; once it takes a file, the outbox on it is opened
afresh (the old connection may belong to a file system since unmounted and mounted again) and
appends go back to it. What was in memory is still sent from there, but not kept over a restart.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

import structlog

from water_edge.buffer.outbox import Outbox, Synchronous
from water_edge.buffer.schema import OutboxDamagedError, OutboxUnavailableError, OutboxUnusableError
from water_edge.buffer.stats import read_only_uri, read_stats
from water_edge.buffer.types import Batch, OutboxRow, OutboxStats
from water_edge.core.errors import BufferError, QuotaExceededError
from water_edge.core.files import read_only_error
from water_edge.core.quarantine import quarantine
from water_edge.core.reading import EVENTS_STREAM, Event, Severity, now_ns

_T = TypeVar("_T")

log = structlog.get_logger(__name__)

# The outbox in memory while the card is read-only: at most this much (or the card's quota, if
# smaller); past it the oldest telemetry is evicted by the usual policy, counted and announced.
VOLATILE_MAX_BYTES: Final = 32 * 2**20  # a tmpfs's pages count against the unit's MemoryMax
# How often appends into memory first try whether the card takes writes again.
PROBE_EVERY_S: Final = 5.0


def _volatile_parent() -> str:
    """A tmpfs for the outbox in memory: systemd's RuntimeDirectory (/run/edge-agent), else
    /dev/shm, else the temporary directory."""
    for candidate in (os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0], "/dev/shm"):  # noqa: S108 - a tmpfs by design
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return tempfile.gettempdir()


class AsyncOutbox:
    """Async facade over an `Outbox`; create it with `await AsyncOutbox.open(...)`."""

    def __init__(self, executor: ThreadPoolExecutor, outbox: Outbox) -> None:
        # Use `open`; this only binds an outbox already created on `executor`'s one thread.
        self._executor = executor
        self._outbox = outbox
        self._closed = False
        # Set by `open(..., quarantine_unusable=True)` when it had to move a bad file aside.
        self.quarantined: tuple[Path, str] | None = None
        # Set at the first call that found the file damaged (`OutboxDamagedError`); then
        # `on_damaged` is called once, with the error.
        self.damaged: str | None = None
        self.on_damaged: Callable[[str], None] | None = None
        # Reopens the outbox on the card (set by `open`).
        self._reopen: Callable[[], Outbox] | None = None
        # The outbox on the card, the one appends go to (the card's, or the one in memory while
        # the card is read-only), and from which id on each file holds the rows.
        self._durable = outbox
        self._target = outbox
        self._volatile: Outbox | None = None
        self._segments: list[tuple[int, Outbox]] = [(1, outbox)]
        self._next_probe = 0.0
        self._last_durable_stats: OutboxStats | None = None
        # While the card is read-only: "<directory>: <error>" and since when; then None again.
        self.read_only: str | None = None
        self.read_only_since_ns: int | None = None
        # Readings appended to the outbox in memory, since start: not stored on the card.
        self.not_durable_readings = 0

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_bytes: int,
        synchronous: Synchronous = "full",
        max_age_s: float | None = None,
        max_page_count: int | None = None,
        quarantine_unusable: bool = False,
    ) -> AsyncOutbox:
        """Open (or create) the outbox on a new worker thread.

        With `quarantine_unusable`, a file that is not a usable outbox (`OutboxUnusableError`)
        is renamed aside and a fresh outbox created; `quarantined` then holds (moved-to path,
        reason). Other errors still raise and leave the file as it is: a missing directory, or
        `OutboxUnavailableError` (locked by another process, not readable or writable by this
        user, an I/O error), which says nothing about the rows in it.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        make = functools.partial(
            Outbox,
            path,
            max_bytes=max_bytes,
            synchronous=synchronous,
            max_age_s=max_age_s,
            max_page_count=max_page_count,
        )
        loop = asyncio.get_running_loop()
        moved: tuple[Path, str] | None = None
        try:
            try:
                outbox = await loop.run_in_executor(executor, make)
            except OutboxUnavailableError as exc:
                # A card already read-only at start (the agent restarted after it failed): run
                # from memory rather than exit at every start systemd makes.
                error = await loop.run_in_executor(executor, read_only_error, Path(path).parent)
                if error is None:
                    raise
                try:
                    card = await loop.run_in_executor(executor, _ReadOnlyCard, Path(path), max_bytes)
                except (BufferError, sqlite3.Error, OSError):
                    raise exc from None
                opened = cls(executor, card)
                opened._reopen = make
                await loop.run_in_executor(executor, opened._into_memory, exc, error)
                return opened
            except OutboxUnusableError as exc:
                if not quarantine_unusable:
                    raise
                try:
                    moved = (quarantine(Path(path)), str(exc))
                except OSError as move_exc:
                    raise BufferError(
                        f"outbox {path}: cannot move the unusable file aside: {move_exc}"
                    ) from exc
                outbox = await loop.run_in_executor(executor, make)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        opened = cls(executor, outbox)
        opened.quarantined = moved
        opened._reopen = make
        return opened

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise BufferError(f"outbox {self._outbox.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except OutboxDamagedError as exc:
            if self.damaged is None:
                self.damaged = str(exc)
                if self.on_damaged is not None:
                    self.on_damaged(self.damaged)
            raise

    @property
    def path(self) -> Path:
        return self._durable.path

    @property
    def epoch(self) -> int:
        """See `Outbox.epoch`: changed only by `renew_epoch`, so read without the worker."""
        return self._durable.epoch

    async def renew_epoch(self) -> int | None:
        """`Outbox.renew_epoch` on the card's outbox; None while the card is read-only (the
        outbox in memory has an epoch of its own already, and the card's cannot be written)."""
        if self.read_only is not None:
            return None
        return await self._call(self._durable.renew_epoch)

    async def append(self, batches: Sequence[Batch]) -> list[int]:
        """See `Outbox.append`; into memory while the card is read-only (the module docstring)."""
        # A snapshot of the list: the caller may reuse its list while the worker encodes.
        return await self._call(self._append, list(batches))

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        """See `Outbox.lease`."""
        return await self._call(self._lease, after_id, limit, upto_id)

    async def restamp(self, delta_ns: int, before_ns: int, reason: str, new_reason: str) -> tuple[int, int]:
        """See `Outbox.restamp`."""
        return await self._call(self._restamp, delta_ns, before_ns, reason, new_reason)

    async def last_id(self) -> int:
        """See `Outbox.last_id` (ordered after every call made before it)."""
        return await self._call(self._last_id)

    async def ack(self, row_ids: Sequence[int]) -> None:
        """See `Outbox.ack`."""
        await self._call(self._ack, list(row_ids))

    async def stats(self) -> OutboxStats:
        """See `Outbox.stats`; with the rows in memory and the card's state added."""
        return await self._call(self._stats)

    async def close(self) -> None:
        """Close the database on its thread, then let the worker thread end; idempotent."""
        if self._closed:
            return
        try:
            await self._call(self._close)
        finally:
            self._closed = True
            # The queue is empty once close has run, so the idle worker exits without a wait here.
            self._executor.shutdown(wait=False)

    # On the worker thread from here on.

    def _last_id(self) -> int:
        return self._target.last_id()

    def _boxes(self) -> list[Outbox]:
        return list({id(box): box for _, box in self._segments}.values())

    def _box_of(self, row_id: int) -> Outbox:
        index = bisect.bisect_right([first for first, _ in self._segments], row_id) - 1
        return self._segments[max(index, 0)][1]

    def _append(self, batches: list[Batch]) -> list[int]:
        if self._target is not self._durable and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + PROBE_EVERY_S
            self._back_to_the_card()
        try:
            ids = self._target.append(batches)
        except (OutboxDamagedError, QuotaExceededError):
            raise
        except BufferError as exc:
            if self._target is not self._durable:
                raise
            error = read_only_error(self._durable.path.parent)
            if error is None:
                raise  # an I/O error or a full disk on a card that still takes writes
            try:
                self._into_memory(exc, error)
            except (OSError, BufferError) as memory_exc:
                # No tmpfs to go on in: the pipeline keeps the readings and retries, as before.
                log.error("buffer.memory_outbox_failed", error=str(memory_exc))
                raise exc from memory_exc
            ids = self._target.append(batches)
        if self._target is not self._durable:
            self.not_durable_readings += sum(len(b.readings or ()) for b in batches)
        return ids

    def _switch(self, to: Outbox) -> None:
        to.continue_ids_after(self._target.last_id())
        self._segments.append((to.last_id() + 1, to))
        self._target = to

    def _into_memory(self, failed: BufferError, error: OSError) -> None:
        directory = self._durable.path.parent
        with contextlib.suppress(BufferError):
            self._last_durable_stats = self._durable.stats()
        if self._volatile is None:
            where = Path(tempfile.mkdtemp(prefix="edge-agent-volatile-", dir=_volatile_parent()))
            self._volatile = Outbox(
                where / "outbox.sqlite",
                max_bytes=min(self._durable.max_bytes, VOLATILE_MAX_BYTES),
                synchronous="normal",
            )
        self._switch(self._volatile)
        self.read_only = f"{directory}: {error.strerror}"
        self.read_only_since_ns = now_ns()
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        log.critical(
            "buffer.storage_read_only",
            directory=str(directory),
            error=str(failed),
            memory=str(self._volatile.path),
            rows_kept_on_card=self._last_durable_stats.rows if self._last_durable_stats else None,
        )
        self._volatile.append([_storage_event("storage_read_only", "alarm", directory, error.strerror)])

    def _back_to_the_card(self) -> None:
        directory = self._durable.path.parent
        if read_only_error(directory) is not None or self._reopen is None:
            return
        # The card takes writes: a new connection, as the old one may hold a file system that
        # was unmounted, checked and mounted again.
        old = self._durable
        with contextlib.suppress(BufferError):
            old.close()
        try:
            fresh = self._reopen()
        except OutboxUnusableError as exc:
            # Damaged on the card: the next start moves it aside (as for damage found in use).
            raise OutboxDamagedError(str(exc)) from exc
        except BufferError as exc:
            log.warning("buffer.storage_reopen_failed", error=str(exc))
            return
        try:
            lost = fresh.continue_seqs_after(old.last_seqs())
        except BufferError as exc:
            log.warning("buffer.storage_reopen_failed", error=str(exc))
            return
        if lost:
            # Mended, the card lost its last commits (served from the kernel's cache, maybe sent):
            # their seqs are never given again. Those rows not sent yet are gone.
            log.error(
                "buffer.card_lost_rows",
                directory=str(directory),
                seqs={stream: list(span) for stream, span in lost.items()},
            )
        self._segments = [(first, fresh if box is old else box) for first, box in self._segments]
        self._durable = fresh
        try:
            self._switch(fresh)
        except BufferError as exc:
            log.warning("buffer.storage_reopen_failed", error=str(exc))
            return
        since = self.read_only_since_ns
        self.read_only = self.read_only_since_ns = None
        log.warning(
            "buffer.storage_writable",
            directory=str(directory),
            read_only_for_s=None if since is None else round((now_ns() - since) / 1e9, 1),
            not_durable_readings=self.not_durable_readings,
        )
        fresh.append([_storage_event("storage_writable", "info", directory, None)])

    def _lease(self, after_id: int, limit: int, upto_id: int | None) -> list[OutboxRow]:
        for index, (first, box) in enumerate(self._segments):
            end = self._segments[index + 1][0] if index + 1 < len(self._segments) else None
            if end is not None and after_id >= end - 1:
                continue
            try:
                rows = box.lease(max(after_id, first - 1), limit, upto_id)
            except BufferError:
                if box is self._target:
                    raise
                continue  # the card's rows, unreadable now: they stay there for later
            if end is not None:
                rows = [row for row in rows if row.id < end]
            if rows:
                return rows
        return []

    def _ack(self, row_ids: list[int]) -> None:
        if len(self._segments) == 1:  # the card only, never read-only since start: no routing
            self._target.ack(row_ids)
            return
        by_box: dict[int, tuple[Outbox, list[int]]] = {}
        for row_id in row_ids:
            box = self._box_of(row_id)
            by_box.setdefault(id(box), (box, []))[1].append(row_id)
        for box, ids in by_box.values():
            try:
                box.ack(ids)
            except OutboxDamagedError:
                raise
            except BufferError as exc:
                if self.read_only is None or box is self._volatile:
                    raise
                # The card is read-only: those rows stay on it and are sent again later.
                log.info("buffer.ack_not_stored", rows=len(ids), error=str(exc))

    def _restamp(self, delta_ns: int, before_ns: int, reason: str, new_reason: str) -> tuple[int, int]:
        rows = readings = 0
        for box in self._boxes():
            try:
                moved = box.restamp(delta_ns, before_ns, reason, new_reason)
            except BufferError:
                if box is self._target:
                    raise
                continue
            rows, readings = rows + moved[0], readings + moved[1]
        return rows, readings

    def _stats(self) -> OutboxStats:
        try:
            stats = self._durable.stats()
            self._last_durable_stats = stats
        except BufferError:
            if self.read_only is None or self._last_durable_stats is None:
                raise
            stats = self._last_durable_stats
        memory_rows = 0
        for box in self._boxes():
            if box is self._durable:
                continue
            more = box.stats()
            if box is self._volatile:
                memory_rows = more.rows
            oldest = [t for t in (stats.oldest_created_ns, more.oldest_created_ns) if t is not None]
            streams = dict(stats.streams)
            for stream, rows in more.streams.items():
                streams[stream] = streams.get(stream, 0) + rows
            stats = dataclasses.replace(
                stats,
                rows=stats.rows + more.rows,
                readings=stats.readings + more.readings,
                bytes=stats.bytes + more.bytes,
                oldest_created_ns=min(oldest) if oldest else None,
                evicted_rows=stats.evicted_rows + more.evicted_rows,
                evicted_readings=stats.evicted_readings + more.evicted_readings,
                streams=streams,
            )
        return dataclasses.replace(
            stats,
            read_only=self.read_only,
            read_only_since_ns=self.read_only_since_ns,
            not_durable_readings=self.not_durable_readings,
            memory_rows=memory_rows,
        )

    def _close(self) -> None:
        volatile = self._volatile
        try:
            for box in self._boxes():
                if box is volatile:
                    continue
                if self.read_only is None:
                    box.close()
                else:
                    with contextlib.suppress(BufferError):
                        box.close()  # a read-only card: SQLite cannot checkpoint, the rows are there
        finally:
            if volatile is not None:
                left = volatile.stats().rows
                if left:
                    log.warning("buffer.memory_rows_lost", rows=left, memory=str(volatile.path))
                volatile.close()
                shutil.rmtree(volatile.path.parent, ignore_errors=True)

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _storage_event(kind: str, severity: Severity, directory: Path, error: str | None) -> Batch:
    detail: dict[str, object] = {"directory": str(directory)}
    if error is not None:
        detail["error"] = error
        detail["message"] = (
            f"storage read-only: {directory} ({error}); the SD card may be failing. Readings go on "
            "to the centre from memory, not stored on the card until it takes writes again"
        )
    return Batch(
        EVENTS_STREAM,
        events=[Event(kind=kind, source="buffer", ts_ns=now_ns(), severity=severity, detail=detail)],
    )


class _ReadOnlyCard(Outbox):
    """The outbox on a card that was read-only when the agent started: read once, read-only, for
    its epoch, counts and the ids the outbox in memory goes on after; never written. Its rows are
    sent once the card takes writes again and the outbox on it is opened
    (`AsyncOutbox._back_to_the_card`)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        # Not Outbox.__init__: that opens the file for writing.
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = None
        self._stats = read_stats(path)
        self.epoch = self._stats.epoch
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        finally:
            conn.close()
        self._next_id = (row[0] if row else 0) + 1

    def stats(self) -> OutboxStats:
        return self._stats

    def last_seqs(self) -> dict[str, int]:
        return {}  # this process gave none on this card: it never wrote to it

    def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        return []  # sent once the card is opened

    def ack(self, row_ids: Sequence[int]) -> None:
        raise BufferError(f"outbox {self.path}: the card is read-only")

    def restamp(self, delta_ns: int, before_ns: int, reason: str, new_reason: str) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass
