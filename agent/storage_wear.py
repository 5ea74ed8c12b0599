"""How worn the eMMC under the state directory is, as the chip itself estimates it.

Industrial Raspberry Pi gateways (Compute Module 4/5 boards) keep the card's job on soldered eMMC.
eMMC 5.0 and later report their own wear (JEDEC EXT_CSD), which Linux shows for the device:
`life_time` (two estimates, for the SLC and MLC areas, in steps of 10 % of the rated erase
cycles used: 0x01 = 0-10 %, …, 0x0A = 90-100 %, 0x0B = past the rating) and `pre_eol_info`
(0x01 normal, 0x02 warning: 80 % of the reserve blocks used, 0x03 urgent). A worn chip is
replaced before it fails, and its learnt state exported first (`edge-agent state export`). SD cards
do not report this: nothing is said for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PRE_EOL: Final = {1: "normal", 2: "warning", 3: "urgent"}
WORN_PCT: Final = 90  # a life-time estimate of 0x0A (90-100 % used) or more


@dataclass(frozen=True, slots=True)
class StorageWear:
    device: str  # the block device, e.g. mmcblk0
    wear_pct: int | None  # the upper bound of the higher estimate (0x02 -> 20); 110: past the rating
    pre_eol: str | None  # normal | warning | urgent


def worn(wear_pct: int | None, pre_eol: str | None) -> bool:
    """Near the end of its rated life: 90 % of it used, or the reserve blocks at warning or worse."""
    return (wear_pct is not None and wear_pct >= WORN_PCT) or pre_eol in ("warning", "urgent")


def _disk(root: Path, state_dir: Path) -> Path | None:
    """The sysfs directory of the whole disk holding `state_dir` (its partition's parent)."""
    try:
        dev = os.stat(state_dir).st_dev
    except OSError:
        return None
    node = root / "sys/dev/block" / f"{os.major(dev)}:{os.minor(dev)}"
    try:
        resolved = node.resolve(strict=True)
    except OSError:
        return None
    return resolved.parent if (resolved / "partition").exists() else resolved


def _hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def storage_wear(root: Path, state_dir: Path) -> StorageWear | None:
    """The wear the eMMC holding `state_dir` reports; None for a disk that reports none."""
    disk = _disk(root, state_dir)
    if disk is None:
        return None
    try:
        life = (disk / "device/life_time").read_text().split()
    except OSError:
        life = []
    try:
        eol = _hex((disk / "device/pre_eol_info").read_text().strip())
    except OSError:
        eol = None
    steps = [v for v in map(_hex, life) if v is not None and 1 <= v <= 0x0B]
    if not steps and eol not in PRE_EOL:
        return None
    return StorageWear(
        device=disk.name,
        wear_pct=max(steps) * 10 if steps else None,
        pre_eol=None if eol is None else PRE_EOL.get(eol),
    )
