"""The wire format of a learnt-state backup sent to the centre: one archive cut into MQTT messages.

A gateway's ACL lets it publish one level under its base (`{prefix}/{site}/{gateway}/+`), so every
part goes to `{base}/state_backup` and says itself which backup it belongs to. A part is a JSON
header line, `\\n`, then the part's bytes:

    {"agent_version": "0.1.0", "backup": "20261207T210000Z-3f9a0c1b2d4e", "created_ns": 1796...,
     "format": "edge-agent-state-backup/1", "gateway": "gw-ps07", "part": 0,
     "part_sha256": "...", "parts": 3, "sha256": "...", "site": "north-plant", "size": 150000}

`size` and `sha256` are those of the whole archive (an `edge-agent state export` .tar.gz),
`part_sha256` that of this part's bytes. Parts arrive in any order and possibly twice (QoS 1, and
shared subscriptions hand them to different consumers): the receiver keeps them by
(site, gateway, backup, part) and puts the archive together once it holds all `parts`.
The centre's reader (`water_edge.centre.state_backups`) is written against this description.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "edge-agent-state-backup/1"
MIN_PART_BYTES: Final = 4 * 1024
HEADER_ROOM: Final = 1024  # a header is about 400 bytes; the topic and MQTT's own fields are counted apart


def backup_id(created_ns: int, sha256: str) -> str:
    """`20261207T210000Z-3f9a0c1b2d4e`: sortable by time, and unique per content."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created_ns / 1e9))
    return f"{stamp}-{sha256[:12]}"


def encode_parts(
    archive: bytes,
    *,
    site: str,
    gateway: str,
    created_ns: int,
    agent_version: str,
    part_bytes: int,
) -> list[bytes]:
    """The MQTT payloads of one backup held in memory, in order: each at most `part_bytes` of it."""
    if not archive:
        raise ValueError("an empty archive is not a backup")
    header = _Header.of(
        len(archive),
        hashlib.sha256(archive).hexdigest(),
        site=site,
        gateway=gateway,
        created_ns=created_ns,
        agent_version=agent_version,
        part_bytes=part_bytes,
    )
    return [
        header.payload(index, archive[start : start + part_bytes])
        for index, start in enumerate(range(0, len(archive), part_bytes))
    ]


@dataclass(frozen=True, slots=True)
class FileParts:
    """The parts of one backup whose archive is a file, read one part at a time (`payload`): an
    archive can be as large as `[state_backup] max_size` (up to 1 GiB), the agent's memory is not."""

    path: Path
    header: _Header

    @property
    def backup(self) -> str:
        return self.header.backup

    @property
    def size(self) -> int:
        return self.header.size

    @property
    def count(self) -> int:
        return self.header.parts

    @property
    def sha256(self) -> str:
        return self.header.sha256

    @property
    def created_ns(self) -> int:
        return int(self.header.fields["created_ns"])

    def payload(self, index: int) -> bytes:
        """Part `index`'s MQTT payload, read from the file."""
        with self.path.open("rb") as file:
            file.seek(index * self.header.part_bytes)
            chunk = file.read(self.header.part_bytes)
        return self.header.payload(index, chunk)


def file_parts(
    path: Path, *, site: str, gateway: str, created_ns: int, agent_version: str, part_bytes: int
) -> FileParts:
    """The parts of the backup whose archive is at `path` (hashed here, block by block)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("an empty archive is not a backup")
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    header = _Header.of(
        size,
        digest,
        site=site,
        gateway=gateway,
        created_ns=created_ns,
        agent_version=agent_version,
        part_bytes=part_bytes,
    )
    return FileParts(path, header)


@dataclass(frozen=True, slots=True)
class _Header:
    """What every part of one backup says of the whole archive."""

    fields: dict[str, Any]  # without `part` and `part_sha256`
    part_bytes: int

    @classmethod
    def of(
        cls,
        size: int,
        sha256: str,
        *,
        site: str,
        gateway: str,
        created_ns: int,
        agent_version: str,
        part_bytes: int,
    ) -> _Header:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (got {part_bytes})")
        fields = {
            "format": FORMAT,
            "backup": backup_id(created_ns, sha256),
            "parts": -(-size // part_bytes),
            "size": size,
            "sha256": sha256,
            "site": site,
            "gateway": gateway,
            "created_ns": created_ns,
            "agent_version": agent_version,
        }
        return cls(fields, part_bytes)

    @property
    def backup(self) -> str:
        return str(self.fields["backup"])

    @property
    def size(self) -> int:
        return int(self.fields["size"])

    @property
    def parts(self) -> int:
        return int(self.fields["parts"])

    @property
    def sha256(self) -> str:
        return str(self.fields["sha256"])

    def payload(self, index: int, chunk: bytes) -> bytes:
        header = {**self.fields, "part": index, "part_sha256": hashlib.sha256(chunk).hexdigest()}
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + chunk
