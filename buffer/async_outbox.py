"""The outbox for asyncio code: an `Outbox` owned by one dedicated worker thread.

SQLite commits (an fsync each with synchronous=FULL) must never block the event loop, and an
sqlite3 connection belongs to the thread that made it; so the connection is created on the worker
and every call runs there, in the order it was made.

A call whose awaiting task is cancelled still runs to completion on the worker: a cancelled
`append` may have been committed. That is safe for delivery (the rows are there and will be sent)
but the caller cannot tell, so it should not re-append the same batches blindly.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from water_edge.buffer.outbox import Outbox, Synchronous
from water_edge.buffer.schema import OutboxDamagedError, OutboxUnusableError
from water_edge.buffer.types import Batch, OutboxRow, OutboxStats
from water_edge.core.errors import BufferError
from water_edge.core.quarantine import quarantine

_T = TypeVar("_T")


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
        return self._outbox.path

    @property
    def epoch(self) -> int:
        """See `Outbox.epoch`: fixed while the file lives, so read without the worker."""
        return self._outbox.epoch

    async def append(self, batches: Sequence[Batch]) -> list[int]:
        """See `Outbox.append`."""
        # A snapshot of the list: the caller may reuse its list while the worker encodes.
        return await self._call(self._outbox.append, list(batches))

    async def lease(self, after_id: int, limit: int, upto_id: int | None = None) -> list[OutboxRow]:
        """See `Outbox.lease`."""
        return await self._call(self._outbox.lease, after_id, limit, upto_id)

    async def restamp(self, delta_ns: int, before_ns: int, reason: str, new_reason: str) -> tuple[int, int]:
        """See `Outbox.restamp`."""
        return await self._call(self._outbox.restamp, delta_ns, before_ns, reason, new_reason)

    async def last_id(self) -> int:
        """See `Outbox.last_id` (ordered after every call made before it)."""
        return await self._call(self._outbox.last_id)

    async def ack(self, row_ids: Sequence[int]) -> None:
        """See `Outbox.ack`."""
        await self._call(self._outbox.ack, list(row_ids))

    async def stats(self) -> OutboxStats:
        """See `Outbox.stats`."""
        return await self._call(self._outbox.stats)

    async def close(self) -> None:
        """Close the database on its thread, then let the worker thread end; idempotent."""
        if self._closed:
            return
        try:
            await self._call(self._outbox.close)
        finally:
            self._closed = True
            # The queue is empty once close has run, so the idle worker exits without a wait here.
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
