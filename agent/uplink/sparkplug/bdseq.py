"""The birth/death sequence number (`bdSeq`), kept in a file so it goes on across restarts.

Each CONNECT takes the next value (0..255, wrapping), written and fsynced *before* the CONNECT
goes out: the Will (NDEATH) of that connection and its NBIRTH carry it, so a host can tell a late
NDEATH of an old connection from the death of the current one, even across an agent restart.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from water_edge.core.errors import UplinkError

log = structlog.get_logger(__name__)


class BdSeqStore:
    """`next()` gives the bdSeq of a new connection; the file holds the last one given."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: in memory only (tests, tools)
        self.current: int | None = None
        self._last = self._load()

    def _load(self) -> int | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            text = self.path.read_text(encoding="ascii").strip()
            value = int(text)
            if not 0 <= value <= 255:
                raise ValueError(f"{value} is not a bdSeq (0..255)")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            # A damaged file must not stop the uplink: start again at 0 and say so.
            log.warning("sparkplug.bdseq_unreadable", path=str(self.path), error=str(exc))
            return None
        return value

    def next(self) -> int:
        """The bdSeq of the connection about to be made: the last one + 1, 255 → 0; 0 the first time."""
        value = 0 if self._last is None else (self._last + 1) % 256
        self._save(value)
        self._last = self.current = value
        return value

    def _save(self, value: int) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="ascii") as f:
                f.write(f"{value}\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            raise UplinkError(f"cannot store the Sparkplug bdSeq in {self.path}: {exc}") from exc
