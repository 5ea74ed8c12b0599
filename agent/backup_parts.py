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
from typing import Final

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
    digest = hashlib.sha256(archive).hexdigest()
    header = _Header(len(archive), digest, site, gateway, created_ns, agent_version, part_bytes)
    return [
        header.payload(index, archive[start : start + part_bytes])
        for index, start in enumerate(range(0, len(archive), part_bytes))
    ]


@dataclass(frozen=True, slots=True)
class _Header:
    """What every part of one backup says of the whole archive."""

    size: int
    sha256: str
    site: str
    gateway: str
    created_ns: int
    agent_version: str
    part_bytes: int

    def __post_init__(self) -> None:
        if self.part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (got {self.part_bytes})")

    @property
    def backup(self) -> str:
        return backup_id(self.created_ns, self.sha256)

    @property
    def parts(self) -> int:
        return -(-self.size // self.part_bytes)

    def payload(self, index: int, chunk: bytes) -> bytes:
        """Part `index`'s MQTT payload: its header line, then `chunk`."""
        header = {
            "format": FORMAT,
            "backup": self.backup,
            "part": index,
            "parts": self.parts,
            "size": self.size,
            "sha256": self.sha256,
            "part_sha256": hashlib.sha256(chunk).hexdigest(),
            "site": self.site,
            "gateway": self.gateway,
            "created_ns": self.created_ns,
            "agent_version": self.agent_version,
        }
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + chunk


@dataclass(frozen=True, slots=True)
class FileParts(_Header):
    """The parts of one backup whose archive is the file `path`, read one part at a time
    (`read`): an archive can be as large as `[state_backup] max_size` (up to 1 GiB), the agent's
    memory is not."""

    path: Path

    def read(self, index: int) -> bytes:
        """Part `index`'s MQTT payload, read from the file."""
        with self.path.open("rb") as file:
            file.seek(index * self.part_bytes)
            chunk = file.read(self.part_bytes)
        return self.payload(index, chunk)


def file_parts(
    path: Path, *, site: str, gateway: str, created_ns: int, agent_version: str, part_bytes: int
) -> FileParts:
    """The parts of the backup whose archive is at `path` (hashed here, block by block)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("an empty archive is not a backup")
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return FileParts(size, digest, site, gateway, created_ns, agent_version, part_bytes, path)
