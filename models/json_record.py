"""A model's small state record (an alarm raised, a microphone not heard, a meter's flags) that a
full or read-only card cannot lose for good: written at each change (temp file + fsync + rename);
one that cannot be written is kept in memory, said once in the log, and written again by `retry`
once the card takes writes, so a restart after the card is back pairs its events as the agent
left them.

Before, a record that could not be written was logged at each change and never written again:
the card back, a restart read the record of before the failure (an alarm raised twice, or its
clear never sent).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from water_edge.core.files import read_json_state, write_json

log = structlog.get_logger(__name__)

RETRY_EVERY_S = 5.0  # as the outbox tries the card again (`buffer.async_outbox.PROBE_EVERY_S`)
_NOTHING = object()


class JsonRecord:
    """`load` and `save` of one record as JSON; blocking file I/O (off the event loop where it
    matters). `error` says why the last write failed while a record waits to be written."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # the log's name for it: `<what>.not_stored`, `<what>.stored_again`
        self.error: str | None = None
        self.failed_writes = 0  # since the start
        self._pending: Any = _NOTHING
        self._tried = 0.0

    @property
    def waiting(self) -> bool:
        """Whether a record the card did not take waits to be written."""
        return self._pending is not _NOTHING

    def load(self) -> Any:
        """The stored JSON, or None when there is none or it cannot be read (logged)."""
        return read_json_state(self.path, self.what)

    def save(self, data: Any) -> str | None:
        """Replace the record with `data`; why it could not be written (it waits to be written
        again by `retry`), else None."""
        self._pending = data
        return self._write()

    def retry(self) -> str | None:
        """Write the record that could not be written, at most every `RETRY_EVERY_S`: None once
        it is written (or when nothing waits), else why not. Cheap when nothing waits."""
        if self._pending is _NOTHING:
            return None
        if time.monotonic() - self._tried < RETRY_EVERY_S:
            return self.error
        return self._write()

    def _write(self) -> str | None:
        self._tried = time.monotonic()
        try:
            write_json(self.path, self._pending)
        except OSError as exc:
            self.failed_writes += 1
            if self.error is None:  # once per failure, not at every change or retry
                log.warning(f"{self.what}.not_stored", path=str(self.path), error=str(exc))
            self.error = f"{exc.strerror or exc} ({self.path})"
            return self.error
        if self.error is not None:
            log.info(f"{self.what}.stored_again", path=str(self.path), failed_writes=self.failed_writes)
        self._pending, self.error = _NOTHING, None
        return None
