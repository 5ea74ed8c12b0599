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
    """The MQTT payloads of one backup, in order: each at most `part_bytes` of the archive."""
    if part_bytes < MIN_PART_BYTES:
        raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (got {part_bytes})")
    if not archive:
        raise ValueError("an empty archive is not a backup")
    digest = hashlib.sha256(archive).hexdigest()
    ident = backup_id(created_ns, digest)
    chunks = [archive[i : i + part_bytes] for i in range(0, len(archive), part_bytes)]
    payloads = []
    for index, chunk in enumerate(chunks):
        header = {
            "format": FORMAT,
            "backup": ident,
            "part": index,
            "parts": len(chunks),
            "size": len(archive),
            "sha256": digest,
            "part_sha256": hashlib.sha256(chunk).hexdigest(),
            "site": site,
            "gateway": gateway,
            "created_ns": created_ns,
            "agent_version": agent_version,
        }
        payloads.append(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + chunk)
    return payloads
