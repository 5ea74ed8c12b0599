"""Durable file replacement: temp + fsync + rename + directory fsync, with the file's mode set from
the start. Keys, certificates, update state, baselines and calibrations are all written this way."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a reader sees the old or the new file, never a torn one.

    The temp file lives in the same directory (rename is atomic only within one filesystem) and is
    created with `mode` from the start, so a private key is never briefly world-readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk (power cut on an SD card).
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_state(path: Path, what: str) -> Any:
    """The JSON in a small best-effort state file, or None when there is none yet or it cannot be
    read (a torn or damaged file: logged as `<what>.unreadable`, then the owner starts afresh)."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning(f"{what}.unreadable", path=str(path), error=str(exc))
        return None


def write_json_state(path: Path, data: Any, what: str) -> str | None:
    """Replace a small best-effort state file with `data` as JSON (blocking: off the event loop
    where it matters); why it could not be written (a full or failing card: logged as
    `<what>.not_stored`), else None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, sort_keys=True).encode("utf-8"), mode=0o640)
    except OSError as exc:
        log.warning(f"{what}.not_stored", path=str(path), error=str(exc))
        return f"{exc.strerror or exc} ({path})"
    return None
