"""Which file system holds a path, and whether what is written there lives only in RAM.

A gateway's state directory on a file system kept in memory loses the outbox and everything the
models learnt at every reboot or power cut, silently: the agent runs as well as anywhere until the
power goes. It happens without anyone choosing it: Raspberry Pi OS's *Overlay File System*
(raspi-config, to spare the SD card) puts every write of `/` in a tmpfs; `log2ram` and
`folder2ram` move directories to tmpfs or zram; a `state_dir` under `/tmp` is in RAM on Debian 13,
whose `/tmp` is a tmpfs.

Read from `/proc/self/mountinfo` (proc(5)): the mount that holds a path is the one with the longest
mount point above it (the last one listed when mounts are stacked on one point).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MOUNTINFO: Final = "proc/self/mountinfo"  # under the root the caller gives
RAM_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs"})
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    super_options: dict[str, str]


def _unescape(field: str) -> str:
    # The kernel writes a space as \040, a tab \011, a newline \012 and a backslash \134.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo text, in its order; a line not in the format is skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)  # after the optional fields
            mount_point = _unescape(fields[4])
            fstype, source = fields[separator + 1], _unescape(fields[separator + 2])
            options = fields[separator + 3] if len(fields) > separator + 3 else ""
        except (ValueError, IndexError):
            continue
        super_options = {}
        for option in options.split(","):
            key, _, value = option.partition("=")
            super_options[key] = _unescape(value)
        mounts.append(Mount(mount_point, fstype, source, super_options))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path` (its links resolved; it need not exist yet)."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point
        inside = point in (target, "/") or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    return best


def _ram_kind(mount: Mount, mounts: list[Mount], depth: int = 0) -> str | None:
    if mount.fstype in RAM_FILESYSTEMS:
        return mount.fstype
    if mount.source.startswith("/dev/zram"):
        return "zram"
    upper = mount.super_options.get("upperdir")
    if mount.fstype == "overlay" and upper and depth < 4:
        # raspi-config's Overlay File System (overlayroot): the writes of / go to an upper
        # directory in a tmpfs that stays visible (/media/root-rw). A container's upper directory
        # is not visible inside it: its lookup lands on the overlay itself and tells nothing.
        holder = mount_of(Path(upper), mounts)
        if holder is not None and holder != mount:
            below = _ram_kind(holder, mounts, depth + 1)
            if below is not None:
                return f"overlay over {below}"
    return None


def in_ram(path: Path, root: Path = Path("/")) -> str | None:
    """What keeps `path`'s writes in memory ("tmpfs", "zram", "overlay over tmpfs"...), or None
    when they reach a disk or it cannot be told (no /proc)."""
    try:
        text = (root / MOUNTINFO).read_text(errors="replace")
    except OSError:
        return None
    mounts = parse_mountinfo(text)
    mount = mount_of(path, mounts)
    return None if mount is None else _ram_kind(mount, mounts)
