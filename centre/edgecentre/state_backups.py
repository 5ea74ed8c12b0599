"""Gateways' learnt-state backups: the parts read off `{prefix}/{site}/{gateway}/state_backup`, and
the archive they make checked before the centre keeps it.

Written from the wire format (the agent's backup_parts.py describes it; the centre never imports the
agent). A part is a JSON header line, `\\n`, then the part's bytes:

    {"agent_version": "0.1.0", "backup": "20261207T210000Z-3f9a0c1b2d4e", "created_ns": 1796...,
     "format": "edge-agent-state-backup/1", "gateway": "gw-ps07", "part": 0,
     "part_sha256": "...", "parts": 3, "sha256": "...", "site": "north-plant", "size": 150000}

`size` and `sha256` are the whole archive's (an `edge-agent state export` .tar.gz), `part_sha256`
this part's. Every archive but the last part holds the same number of bytes. Parts come in any
order, maybe twice, and to different consumers: store.py keeps them in the database and puts the
archive together under a lock per gateway.

Both a part and an archive are hostile input: `read_part` checks every header field and the part's
bytes against it, `check_archive` reads the .tar.gz in memory, bounded (its unpacked bytes, its
members, its tar headers), never extracting anything, and checks its `manifest.json` and every
file's SHA-256 against it. Either raises `BackupError` with the reason the ingest stores in
`rejected`.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final, Self

import orjson

FORMAT: Final = "edge-agent-state-backup/1"
ARCHIVE_FORMAT: Final = "edge-agent-state/1"
LEVEL: Final = "state_backup"  # the topic level under a gateway's base
MAX_PARTS: Final = 4096
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024  # an archive's size at most (--max-state-backup-bytes)
DEFAULT_KEEP: Final = 7  # complete backups kept per gateway (--keep-state-backups)
# A header is about 400 bytes: a payload whose first line is longer is not a part.
MAX_HEADER_BYTES: Final = 4096
# Of a refused part (or the part that completed a refused archive), what `rejected` keeps: its
# header and the first bytes of its data, not a MiB of archive per refusal.
REJECTED_PREFIX_BYTES: Final = 4096
# An archive unpacks to at most this much (every member's bytes, the tar headers apart): the
# agent's learnt state is baselines, calibrations and a few SQLite histories, tens of MiB.
MAX_UNPACKED_BYTES: Final = 1024 * 1024 * 1024
MAX_MEMBERS: Final = 100_000
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024
# A pax or GNU long-name header is read whole by tarfile: one claiming gigabytes would be held in memory.
MAX_TAR_HEADER_BYTES: Final = 1024 * 1024
MAX_TEXT: Final = 64  # the backup id, the agent version; site and gateway as the topic's levels
_SAFE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_VERSION: Final = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no space
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_MAX_INT: Final = 2**63 - 1
_CHUNK: Final = 1024 * 1024
_MANIFEST: Final = "manifest.json"
_PREFIX: Final = "state"


class BackupError(ValueError):
    """A part or an archive the centre does not keep; the text says why."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a backup, checked against its header and its topic."""

    site: str
    gateway: str
    backup: str
    part: int
    parts: int
    size: int
    sha256: str
    created_ns: int
    agent_version: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Archive:
    """What a checked archive's manifest says."""

    files: int  # learnt-state files in it
    unpacked: int  # their bytes


def is_backup_topic(topic: str) -> bool:
    return topic.rsplit("/", 1)[-1] == LEVEL


def rejected_prefix(payload: bytes) -> bytes:
    """What `rejected` keeps of a part: its header line and the first bytes of its data."""
    return payload[:REJECTED_PREFIX_BYTES]


def _int(header: dict[str, Any], key: str, low: int, high: int = _MAX_INT) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BackupError(f"header: {key} must be an integer from {low} to {high} (got {_show(value)})")
    return value


def _text(header: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or pattern.match(value) is None:
        raise BackupError(f"header: {key} must be {what} (got {_show(value)})")
    return value


def _show(value: object) -> str:
    """A value for a reason, bounded (a hostile header's text goes into `rejected` and the log)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def read_part(topic: str, payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Part:
    """One part published on `topic` (`{prefix}/{site}/{gateway}/state_backup`), or BackupError."""
    levels = topic.split("/")
    if len(levels) < 4 or levels[-1] != LEVEL:
        raise BackupError(f"topic {topic!r} is not {{prefix}}/{{site}}/{{gateway}}/{LEVEL}")
    site, gateway = levels[-3], levels[-2]
    end = payload.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if end < 0:
        raise BackupError(
            f"no header line (a JSON object and a newline) in the first {MAX_HEADER_BYTES} bytes"
        )
    try:
        header = orjson.loads(payload[:end])
    except orjson.JSONDecodeError as exc:
        raise BackupError(f"header: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BackupError(f"header: must be a JSON object (got {type(header).__name__})")
    if header.get("format") != FORMAT:
        raise BackupError(f"header: format must be {FORMAT!r} (got {_show(header.get('format'))})")
    for key in ("site", "gateway"):
        if not isinstance(header.get(key), str):
            raise BackupError(f"header: {key} must be a string (got {_show(header.get(key))})")
    if (header["site"], header["gateway"]) != (site, gateway):
        raise BackupError(
            f"header names {_show(header['site'])}/{_show(header['gateway'])}, the topic"
            f" {site!r}/{gateway!r}: a gateway sends only its own backups"
        )
    backup = _text(
        header, "backup", _SAFE_ID, "1 to 64 of A-Z a-z 0-9 _ . : - (not starting with one of _.:-)"
    )
    parts = _int(header, "parts", 1, MAX_PARTS)
    part = _int(header, "part", 0, parts - 1)
    size = _int(header, "size", 1, _MAX_INT)
    if size > max_bytes:
        raise BackupError(
            f"backup {backup}: {size} bytes, more than the {max_bytes} kept (--max-state-backup-bytes)"
        )
    sha256 = _text(header, "sha256", _SHA256, "64 lower-case hex digits")
    part_sha256 = _text(header, "part_sha256", _SHA256, "64 lower-case hex digits")
    created_ns = _int(header, "created_ns", 0)
    agent_version = _text(header, "agent_version", _VERSION, "1 to 64 printable ASCII characters")
    data = payload[end + 1 :]
    _check_length(backup, part, parts, size, len(data))
    if hashlib.sha256(data).hexdigest() != part_sha256:
        raise BackupError(f"backup {backup} part {part}: its bytes do not match its part_sha256: damaged")
    return Part(site, gateway, backup, part, parts, size, sha256, created_ns, agent_version, data)


def _check_length(backup: str, part: int, parts: int, size: int, length: int) -> None:
    """The part's length agrees with the archive's size: every part but the last holds the same
    number of bytes L, and (parts - 1) * L < size <= parts * L."""
    where = f"backup {backup} part {part} of {parts}"
    if length == 0:
        raise BackupError(f"{where}: no data")
    if parts == 1:
        if length != size:
            raise BackupError(f"{where}: {length} bytes, the archive {size}")
        return
    if part < parts - 1:
        if not (parts - 1) * length < size <= parts * length:
            raise BackupError(
                f"{where}: {length} bytes, which cannot be a part of an archive of {size} in {parts}"
            )
        return
    rest = size - length
    if rest <= 0 or rest % (parts - 1) or rest // (parts - 1) < length:
        raise BackupError(
            f"{where} (the last): {length} bytes, which cannot end an archive of {size} in {parts}"
        )


class _Gunzip:
    """A gzip stream (one or more members) unpacked as read, raising past `limit` bytes out: tarfile
    reads what a header tells it to, and a few MiB of gzip unpack to gigabytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._limit = limit
        self._out = 0
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending = b""

    def read(self, n: int = -1) -> bytes:
        want = _CHUNK if n < 0 else n
        chunks = [self._pending] if self._pending else []
        have = len(self._pending)
        self._pending = b""
        while have < want:
            piece = self._more(want - have)
            if not piece:
                break
            chunks.append(piece)
            have += len(piece)
        out = b"".join(chunks)
        if len(out) > want:
            out, self._pending = out[:want], out[want:]
        return out

    def _more(self, n: int) -> bytes:
        while True:
            inflate = self._inflate
            if inflate.unconsumed_tail:
                piece = inflate.decompress(inflate.unconsumed_tail, n)
            elif inflate.eof:
                self._at -= len(inflate.unused_data)  # fed, but past the end of this gzip member
                if self._at >= len(self._data):
                    return b""
                self._inflate = zlib.decompressobj(wbits=31)  # another gzip member
                continue
            elif self._at < len(self._data):
                block = self._data[self._at : self._at + _CHUNK]
                self._at += len(block)
                piece = inflate.decompress(block, n)
            else:
                raise BackupError("not a complete .tar.gz: the gzip stream ends early")
            if piece:
                self._out += len(piece)
                if self._out > self._limit:
                    raise BackupError(f"unpacks to more than {self._limit} bytes: refused")
                return piece


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose pax or GNU long-name extension (read into memory whole) is bounded."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        extension = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
        read_whole = (*extension, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if info.type in read_whole and info.size > MAX_TAR_HEADER_BYTES:
            raise BackupError(f"a tar extension header of {info.size} bytes: refused")
        return info


def check_archive(
    archive: bytes, site: str, gateway: str, *, max_unpacked: int = MAX_UNPACKED_BYTES
) -> Archive:
    """The archive's manifest, once it is an `edge-agent state export` of `site`/`gateway` whose
    files are the ones its manifest lists, each with its SHA-256; BackupError otherwise."""
    try:
        manifest, members = _members(archive, max_unpacked)
    except BackupError:
        raise
    except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError, UnicodeError) as exc:
        raise BackupError(f"not a readable .tar.gz ({type(exc).__name__}: {exc})") from None
    if manifest is None:
        raise BackupError(f"no {_MANIFEST}: not an archive made by `edge-agent state export`")
    try:
        doc = orjson.loads(manifest)
    except orjson.JSONDecodeError as exc:
        raise BackupError(f"{_MANIFEST} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != ARCHIVE_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BackupError(f"{_MANIFEST}: format must be {ARCHIVE_FORMAT!r} (got {_show(got)})")
    if (doc.get("site"), doc.get("gateway")) != (site, gateway):
        raise BackupError(
            f"{_MANIFEST} names {_show(doc.get('site'))}/{_show(doc.get('gateway'))}, the topic"
            f" {site!r}/{gateway!r}: the learnt state of another gateway"
        )
    listed = doc.get("files")
    if not isinstance(listed, dict) or set(listed) != set(members):
        raise BackupError(f"its files are not the ones its {_MANIFEST} lists: damaged or altered")
    for name, (length, digest) in members.items():
        entry = listed[name]
        if not isinstance(entry, dict) or entry.get("sha256") != digest or entry.get("bytes") != length:
            raise BackupError(
                f"{_show(name)} does not match its size and SHA-256 in {_MANIFEST}: damaged or altered"
            )
    return Archive(len(members), sum(length for length, _ in members.values()))


def _members(archive: bytes, max_unpacked: int) -> tuple[bytes | None, dict[str, tuple[int, str]]]:
    """manifest.json's bytes, and every other file's (name under state/, bytes, SHA-256)."""
    manifest: bytes | None = None
    members: dict[str, tuple[int, str]] = {}
    count = unpacked = 0
    stream = _Gunzip(archive, max_unpacked + 64 * 1024 * 1024)  # room for headers and padding
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:  # type: ignore[call-overload]
        for member in tar:
            count += 1
            if count > MAX_MEMBERS:
                raise BackupError(f"more than {MAX_MEMBERS} members: refused")
            name = member.name
            if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise BackupError(f"{_show(name)} is not a plain file: refused")
            unpacked += member.size
            if unpacked > max_unpacked:
                raise BackupError(f"its files hold more than {max_unpacked} bytes: refused")
            if name == _MANIFEST:
                if manifest is not None:
                    raise BackupError(f"{_MANIFEST} twice: refused")
                if member.size > MAX_MANIFEST_BYTES:
                    raise BackupError(f"{_MANIFEST} of {member.size} bytes: refused")
                manifest = _read(tar, member)
                continue
            relative = _relative(name)
            if relative in members:
                raise BackupError(f"{_show(name)} twice: refused")
            members[relative] = _digest(tar, member)
    return manifest, members


def _relative(name: str) -> str:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2 or pure.parts[0] != _PREFIX:
        raise BackupError(f"{_show(name)} is outside state/: refused")
    return PurePosixPath(*pure.parts[1:]).as_posix()


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return b"" if handle is None else handle.read()


def _digest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, str]:
    digest = hashlib.sha256()
    length = 0
    handle = tar.extractfile(member)
    if handle is not None:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            length += len(chunk)
    if length != member.size:
        raise BackupError(f"{_show(member.name)} ends early: damaged")
    return length, digest.hexdigest()
