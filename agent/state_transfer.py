"""A gateway's learnt state, carried to a replacement card or board (`edge-agent state export` /
`state import`).

What the models learnt on site takes nights to learn again: each hydrophone's baseline (7 nights
by default), each pump's and machine's calibration (a day), each district's night-flow baseline.
A card that dies, or a board replaced, would cost that much detection. `export` writes the learnt
state into one archive (a technician's copy, or one kept at the centre); `import` puts it under a
new card's state directory before its agent first runs.

What is carried: the models' directories (`leak/`, `pump/`, `machine_sound/`, `flow_leak/`,
`meter/`, `sites/`), the models pushed by `model_update` (`models/`) and `learnt_tags.json`:
calibrations, baselines, histories and the records that pair open alarms with their clears.
Never carried: the outbox (its rows belong to the old gateway's epoch), the identity and its
private key (a new card enrols its own), the signed-command nonce store and audit log, the
board and serial-adapter records (they describe the old hardware), update state, sockets.
A SQLite history is copied with SQLite's backup API, so an export taken while the agent runs holds
a consistent copy; other files are replaced atomically by the agent and read whole.

The archive is a gzip'd tar holding `manifest.json` (format, agent version, site, gateway, when,
and every file's size and SHA-256) and the files under `state/`. `import` checks every file
against the manifest before it writes anything, refuses paths outside the state directory, and
refuses an archive of another gateway unless told (`force`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, Final

from water_edge.agent import __version__
from water_edge.core.files import fsync_dir

FORMAT: Final = "edge-agent-state/1"
MANIFEST: Final = "manifest.json"
PREFIX: Final = "state"
LEARNT: Final = ("leak", "pump", "machine_sound", "flow_leak", "meter", "sites", "models", "learnt_tags.json")
# Never in an archive, wherever they are found under the learnt directories.
_SKIPPED_SUFFIXES: Final = ("-wal", "-shm", "-journal", ".tmp")
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
MAX_MEMBER_BYTES: Final = 1 << 30  # a file larger than this in an archive is not learnt state
_READ_BLOCK: Final = 1 << 20
# The rolling feature histories a pump's or machine's recalibration reads (one row a sample: ~75 MB
# per pump over 14 days at 1 s). The calibration in service is a JSON file beside it; a new card
# detects on that from its first minute and fills a history of its own.
ROLLING_HISTORIES: Final = ("pump/*/history.sqlite", "machine_sound/*/history.sqlite")


class StateTransferError(Exception):
    """Why an export or import cannot be done, in words for the technician."""


class OtherGatewayError(StateTransferError):
    """An archive of what another gateway (or site) learnt, not taken without `force`."""


@dataclass(frozen=True, slots=True)
class Written:
    """An export written to a stream (`write_export`)."""

    files: int
    bytes: int  # of learnt state, uncompressed
    manifest: dict[str, Any]  # as written into the archive (`created_ns`, each file's sha256)


@dataclass(frozen=True, slots=True)
class Exported(Written):
    """An export made in memory (`export_state`)."""

    archive: bytes  # the .tar.gz


@dataclass(frozen=True, slots=True)
class Imported:
    files: int
    bytes: int
    site: str
    gateway: str
    created_ns: int
    agent_version: str


def is_rolling_history(relative: Path) -> bool:
    """Whether a learnt file (relative to the state directory) is a rolling feature history."""
    path = PurePosixPath(relative.as_posix())
    # `match` anchors a relative pattern at the right only: the same depth anchors it at the left
    return any(len(path.parts) == len(PurePosixPath(p).parts) and path.match(p) for p in ROLLING_HISTORIES)


def learnt_files(state_dir: Path, *, histories: bool = True) -> Iterator[Path]:
    """The learnt-state files under `state_dir`, as paths relative to it, in a stable order;
    without the rolling feature histories when `histories` is False."""
    for name in LEARNT:
        top = state_dir / name
        if top.is_file():
            yield Path(name)
            continue
        if not top.is_dir():
            continue
        for directory, dirs, files in os.walk(top):
            dirs.sort()
            for file in sorted(files):
                path = Path(directory) / file
                if file.endswith(_SKIPPED_SUFFIXES) or file.startswith("."):
                    continue
                relative = path.relative_to(state_dir)
                if not histories and is_rolling_history(relative):
                    continue
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(path.lstat().st_mode):
                        yield relative


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC


def _snapshot(path: Path, copy: Path) -> None:
    """A copy of `path` at `copy`; a SQLite database as a consistent copy (the agent may be writing
    it), any other file as it is now (the agent replaces those atomically)."""
    if not _is_sqlite(path):
        shutil.copyfile(path, copy)
        return
    # as_uri quotes: a directory named with `?`, `#` or `%` would otherwise open another database
    source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as file:
        return _digest_stream(file)


def export_state(state_dir: Path, site: str, gateway: str, *, histories: bool = True) -> Exported:
    """The learnt state under `state_dir` as an archive in memory (`write_export`); without the
    rolling feature histories (`ROLLING_HISTORIES`) when `histories` is False."""
    buffer = io.BytesIO()
    written = write_export(state_dir, site, gateway, buffer, histories=histories)
    return Exported(written.files, written.bytes, written.manifest, buffer.getvalue())


def write_export(
    state_dir: Path,
    site: str,
    gateway: str,
    out: BinaryIO,
    *,
    histories: bool = True,
    scratch: Path | None = None,
) -> Written:
    """Write the learnt state under `state_dir` to `out` as a `.tar.gz`, streamed: every file is
    first copied (a SQLite history by SQLite's backup API) into a scratch directory under `scratch`
    (default: the system's temporary directory) and hashed there, then the manifest and the copies
    are written, so memory holds a block at a time, never the files (two pumps' 14 days of history
    are ~110 MiB)."""
    if not state_dir.is_dir():
        raise StateTransferError(f"{state_dir}: no state directory (gateway.state_dir): nothing learnt here")
    try:
        scratch_dir = tempfile.TemporaryDirectory(prefix=".edge-agent-export-", dir=scratch)
    except OSError as exc:
        raise StateTransferError(
            f"{scratch or tempfile.gettempdir()}: no room for the export's copies ({exc})"
        ) from exc
    with scratch_dir as tmp:
        copies: list[tuple[str, Path, int, str]] = []  # name, copy, size, sha256
        for relative in learnt_files(state_dir, histories=histories):
            copy = Path(tmp) / f"{len(copies):06d}"
            try:
                _snapshot(state_dir / relative, copy)
                size, sha = _digest(copy)
            except FileNotFoundError as exc:
                if exc.filename is not None and Path(exc.filename) == copy:
                    raise StateTransferError(f"{copy}: cannot be written ({exc})") from exc
                continue  # replaced or removed by the running agent between the listing and the read
            except (OSError, sqlite3.Error) as exc:
                raise StateTransferError(f"{state_dir / relative}: cannot be read ({exc})") from exc
            copies.append((relative.as_posix(), copy, size, sha))
        manifest = {
            "format": FORMAT,
            "agent_version": __version__,
            "site": site,
            "gateway": gateway,
            "created_ns": time.time_ns(),
            "files": {name: {"bytes": size, "sha256": sha} for name, _, size, sha in copies},
        }
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            _add(archive, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            for name, copy, size, _ in copies:
                info = _info(f"{PREFIX}/{name}", size)
                with copy.open("rb") as file:
                    archive.addfile(info, file)
    return Written(len(copies), sum(size for _, _, size, _ in copies), manifest)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o640, int(time.time())
    return info


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    archive.addfile(_info(name, len(data)), io.BytesIO(data))


@dataclass(frozen=True, slots=True)
class _Member:
    sha256: str
    size: int


def _read_archive(path: Path, content: bytes | None) -> tuple[dict[str, Any], dict[str, _Member]]:
    """The manifest and the files of an archive (each hashed as it is read: memory stays small),
    every file checked against the manifest."""
    not_ours = f"{path}: not an archive made by `edge-agent state export`"
    try:
        manifest, files = _members(path, content)
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise StateTransferError(f"{not_ours} (or damaged: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StateTransferError(f"{not_ours}: no {FORMAT} manifest")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or set(listed) != set(files):
        raise StateTransferError(f"{path}: its files are not the ones its manifest lists: damaged or altered")
    for name, member in files.items():
        entry = listed[name]
        if not isinstance(entry, dict) or entry.get("sha256") != member.sha256:
            raise StateTransferError(f"{path}: {name} does not match its checksum: damaged or altered")
    return manifest, files


def _open(path: Path, content: bytes | None) -> tarfile.TarFile:
    stream = None if content is None else io.BytesIO(content)
    return tarfile.open(path if stream is None else None, mode="r:gz", fileobj=stream)


def _files(path: Path, archive: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, its bytes to read) of every member: `manifest.json`, or a path under `state/`
    relative to it; StateTransferError for a member that is no learnt state file."""
    for member in archive:
        if not member.isfile():
            raise StateTransferError(f"{path}: {member.name!r} is not a plain file: refused")
        if member.size > MAX_MEMBER_BYTES:
            raise StateTransferError(f"{path}: {member.name!r} is {member.size} bytes: refused")
        extracted = archive.extractfile(member)
        if extracted is not None:  # always, for a plain file
            yield (MANIFEST if member.name == MANIFEST else _safe_name(path, member.name)), extracted


def _members(path: Path, content: bytes | None) -> tuple[Any, dict[str, _Member]]:
    files: dict[str, _Member] = {}
    manifest: Any = None
    with _open(path, content) as archive:
        for name, extracted in _files(path, archive):
            if name == MANIFEST:
                manifest = json.loads(extracted.read())
                continue
            size, sha = _digest_stream(extracted)
            files[name] = _Member(sha, size)
    return manifest, files


def _digest_stream(source: IO[bytes], out: IO[bytes] | None = None) -> tuple[int, str]:
    """Size and SHA-256 of what `source` holds, read block by block (copied to `out` if given)."""
    digest, size = hashlib.sha256(), 0
    while block := source.read(_READ_BLOCK):
        digest.update(block)
        size += len(block)
        if out is not None:
            out.write(block)
    return size, digest.hexdigest()


def _safe_name(archive: Path, member: str) -> str:
    """A member's path under `state/`, relative, within the learnt directories; refused otherwise."""
    pure = PurePosixPath(member)
    if pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2 or pure.parts[0] != PREFIX:
        raise StateTransferError(f"{archive}: {member!r} points outside the state directory: refused")
    relative = PurePosixPath(*pure.parts[1:])
    if relative.parts[0] not in LEARNT:
        raise StateTransferError(f"{archive}: {member!r} is not learnt state: refused")
    return relative.as_posix()


def import_state(
    archive: Path,
    state_dir: Path,
    site: str,
    gateway: str,
    *,
    force: bool = False,
    content: bytes | None = None,
) -> Imported:
    """Put the learnt state of `archive` (or of `content`, the archive's bytes read from stdin, named
    `archive` in messages) under `state_dir`: every file checked first (read once, hashed), then
    each streamed into a new file beside its place and checked again, and only when all are in
    does each replace its file; owned like the state directory (the agent's user) and private to
    it. Memory holds a block at a time, never a file."""
    manifest, members = _read_archive(archive, content)
    done = _summary(archive, manifest, members, site, gateway, force=force)
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    owner = state_dir.stat()
    for name in members:
        _no_links(state_dir, state_dir / name)
    staged: list[tuple[Path, Path]] = []  # (new file, the file it replaces)
    try:
        with _open(archive, content) as tar:
            for name, extracted in _files(archive, tar):
                if name != MANIFEST:
                    staged.append(
                        _stage_file(archive, state_dir, name, extracted, member=members[name], owner=owner)
                    )
        for new, target in staged:
            new.replace(target)
            for suffix in ("-wal", "-shm", "-journal"):  # a stale journal would be replayed into the copy
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{target}{suffix}").unlink()
        for directory in {target.parent for _, target in staged}:
            fsync_dir(directory)
    finally:
        for new, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                new.unlink()  # those not put in place (an error on the way)
    return done


def _stage_file(
    archive: Path, state_dir: Path, name: str, source: IO[bytes], *, member: _Member, owner: os.stat_result
) -> tuple[Path, Path]:
    """`name`'s bytes streamed into a new file beside its place (0640, the state directory's
    owner), checked against what the first reading found; (the new file, its place)."""
    target = state_dir / name
    _make_dirs(state_dir, target.parent, owner)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".import", dir=target.parent)
    new = Path(tmp)
    try:
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "wb") as out:
            size, sha = _digest_stream(source, out)
            out.flush()
            os.fsync(out.fileno())
        if (size, sha) != (member.size, member.sha256):
            raise StateTransferError(f"{archive}: {name} changed while it was read: damaged or altered")
        _own(new, owner)
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    return new, target


def inspect_archive(
    archive: Path, site: str, gateway: str, *, force: bool = False, content: bytes | None = None
) -> Imported:
    """What `import_state` would put under a state directory, checked as it checks it (the
    manifest, every file's SHA-256, the site and gateway), without writing anything or holding the
    files in memory (`content`: the archive's bytes, read from stdin, named `archive`)."""
    manifest, members = _read_archive(archive, content)
    return _summary(archive, manifest, members, site, gateway, force=force)


def _summary(
    archive: Path,
    manifest: dict[str, Any],
    members: dict[str, _Member],
    site: str,
    gateway: str,
    *,
    force: bool,
) -> Imported:
    theirs = (str(manifest.get("site")), str(manifest.get("gateway")))
    if theirs != (site, gateway) and not force:
        raise OtherGatewayError(
            f"{archive} holds what gateway {theirs[1]} of site {theirs[0]} learnt, and this config is "
            f"gateway {gateway} of site {site}: its baselines describe another site's pipes and pumps. "
            "If this card replaces that gateway under a new name, give --force"
        )
    created = manifest.get("created_ns")
    return Imported(
        files=len(members),
        bytes=sum(m.size for m in members.values()),
        site=theirs[0],
        gateway=theirs[1],
        created_ns=created if isinstance(created, int) else 0,
        agent_version=str(manifest.get("agent_version")),
    )


def _no_links(state_dir: Path, target: Path) -> None:
    """Refuse a symbolic link on the way from the state directory to `target`: the agent's user
    owns the directory, and a link it planted (`pump -> /etc/cron.d`) would have an import run as
    root write where that user may not."""
    path = state_dir
    for part in target.relative_to(state_dir).parts:
        path = path / part
        if path.is_symlink():
            raise StateTransferError(f"{path} is a symbolic link: refused (the learnt state holds none)")


def _make_dirs(state_dir: Path, directory: Path, owner: os.stat_result) -> None:
    missing = []
    while directory != state_dir and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(mode=0o750)
        _own(made, owner)


def _own(path: Path, owner: os.stat_result) -> None:
    """Give `path` the state directory's owner: an import run as root for the agent's user."""
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)
