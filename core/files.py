"""Durable file replacement: temp + fsync + rename + directory fsync, with the file's mode set from
the start. Keys, certificates, update state, baselines and calibrations are all written this way."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a reader sees the old or the new file, never a torn one
    (`atomic_write_with`)."""
    atomic_write_with(path, lambda file: file.write(data), mode)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], T], mode: int = 0o644) -> T:
    """Replace `path` with what `write` writes into the file it is given (a large file streamed,
    never held whole), so a reader sees the old or the new file, never a torn one; what `write`
    returned.

    The temp file lives in the same directory (rename is atomic only within one filesystem) and is
    created with `mode` from the start, so a private key is never briefly world-readable.

    An OSError names `path` (its `filename`), not the temp file or a directory on the way: the
    file the caller was asked to write is the one to tell the user about.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileExistsError as exc:  # what mkdir says of a file where a directory on the way belongs
        _raise_naming(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), path, exc)
    except OSError as exc:
        _raise_naming(exc, path)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            written = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            _raise_naming(exc, path)
        raise
    fsync_dir(path.parent)
    return written


def _raise_naming(exc: OSError, path: Path, cause: OSError | None = None) -> NoReturn:
    """Raise `exc` as the same kind of error about `path` (a PermissionError stays one)."""
    if exc.errno is None or exc.filename == os.fspath(path):
        raise exc
    raise OSError(exc.errno, exc.strerror, os.fspath(path)) from cause or exc


def printable_name(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A file name (or a message holding one) as text that any UTF-8 output takes, JSON included:
    bytes of the name that are not UTF-8 (a Latin-1 name from a USB stick, `nacht\\xfc.wav`, which
    Python holds as surrogate escapes) are written as `\\xfc`; the rest is left as it is."""
    text = os.fsdecode(name)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte: only ever made on purpose
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_texts(value: Any) -> Any:
    """`value` (a JSON document: dicts, lists, texts, numbers) with every text, keys included, as
    `printable_name` writes it: what orjson takes whatever file names went into it."""
    if isinstance(value, str):
        return value if value.isascii() else printable_name(value)
    if isinstance(value, dict):
        return {printable_texts(k): printable_texts(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_texts(v) for v in value]
    return value


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


def read_record_state(path: Path, record: type[R], what: str) -> R | None:
    """The dataclass `record` kept as JSON in a small best-effort state file (`read_json_state`),
    or None when there is none or it is not one (logged as `<what>.unreadable`)."""
    data = read_json_state(path, what)
    if data is None:
        return None
    try:
        return record(**{key: data[key] for key in record.__dataclass_fields__})  # type: ignore[attr-defined]
    except (KeyError, TypeError) as exc:
        log.warning(f"{what}.unreadable", path=str(path), error=str(exc))
        return None


def write_json(path: Path, data: Any) -> None:
    """Replace a small state file with `data` as JSON, its directory made if need be (blocking:
    off the event loop where it matters); OSError when the card does not take it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, sort_keys=True).encode("utf-8"), mode=0o640)


def write_json_state(path: Path, data: Any, what: str) -> str | None:
    """`write_json` for a best-effort state file: why it could not be written (a full or failing
    card: logged as `<what>.not_stored`), else None."""
    try:
        write_json(path, data)
    except OSError as exc:
        log.warning(f"{what}.not_stored", path=str(path), error=str(exc))
        return f"{exc.strerror or exc} ({path})"
    return None


WRITE_PROBE = ".write-probe"


def read_only_error(directory: Path) -> OSError | None:
    """The `EROFS` error when `directory`'s file system no longer takes writes (an SD card whose
    ext4 met I/O errors is remounted read-only by the kernel, `errors=remount-ro`); None when a
    file can be created there, or when it fails for another reason (a full disk, permissions).

    Asks by doing: a small file is created, synced and removed. `statvfs`'s read-only flag is not
    enough, since ext4's emergency read-only state leaves the mount flags as they were."""
    tmp = directory / WRITE_PROBE  # one name: a crash between create and unlink leaves one file
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        return exc if exc.errno == errno.EROFS else None
    try:
        os.write(fd, b"probe")
        os.fsync(fd)
    except OSError as exc:
        return exc if exc.errno == errno.EROFS else None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return None
