"""The tags each device whose tags are known only once read has read, as the last runs of the
agent left them.

Some drivers know their tags only once they have read them: an M-Bus or wireless M-Bus meter with
`records = "all"`, a hydrophone's bands. When such a device is down at an agent start, its runner's
stand-in `bad` readings covered only the tags the driver declares (a meter's `status`): every other
tag simply stopped, and the centre's last value of it, good, stood for as long as the outage
lasted. The record is `<state_dir>/learnt_tags.json`, `{device: {"settings": fingerprint,
"config": fingerprint, "tags": {tag: unit}}}`; a device whose config changed starts afresh (a
removed meter's tags must not go on being reported bad). `settings` fingerprints what the config
file sets for the device, so that an update whose driver has a new setting (with its default)
keeps the tags; `config`, the device's whole config as this release reads it, is what releases
before `settings` compare (a record without `settings` is taken when it matches). Tags a device's
config calls observations (`unlearnt_tag_prefixes`: a wM-Bus receiver's `heard.<ID>.*` of meters
not configured) are not kept, and dropped from a record an earlier version wrote: a neighbour's
meter is not a measurement to stand in for. Best effort, as `devices_down.json`: an unreadable
record costs those stand-ins, nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from water_edge.core.files import read_json_state, write_json_state
from water_edge.core.reading import Reading
from water_edge.core.tasks import cancel_all
from water_edge.drivers.base import DeviceConfig, TagInfo

# Tags kept per device: a driver naming tags after its input must not grow the file without end.
MAX_TAGS_PER_DEVICE: Final = 20_000


def settings_fingerprint(config: DeviceConfig) -> str:
    """The device's settings as its config file sets them. The whole config (`fingerprint`) has
    every setting the release knows, at its default when not set: a release that added one to a
    driver made every such device look changed, and its learnt tags were dropped at the update."""
    return _digest(config.model_dump_json(exclude_unset=True))


def fingerprint(config: DeviceConfig) -> str:
    """The device's whole config: a record's `config`, which a record written before `settings`
    is compared by (and a release rolled back to compares)."""
    return _digest(config.model_dump_json())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _same_config(entry: dict[object, object], settings: str, whole: str) -> bool:
    if "settings" in entry:
        return entry["settings"] == settings
    return entry.get("config") == whole  # written before `settings`


class LearntTags:
    def __init__(self, path: Path, devices: Iterable[DeviceConfig]) -> None:
        self.path = path
        devices = list(devices)
        prints = {d.name: settings_fingerprint(d) for d in devices}
        self._prints = prints
        self._whole = {d.name: fingerprint(d) for d in devices}
        # device -> prefixes of the tags it reads that are not to be kept
        self._unlearnt = {d.name: d.unlearnt_tag_prefixes() for d in devices}
        self.tags: dict[str, dict[str, str]] = {name: {} for name in prints}
        data = read_json_state(path, "learnt_tags")
        for name, entry in data.items() if isinstance(data, dict) else ():
            if (
                name in prints
                and isinstance(entry, dict)
                and _same_config(entry, prints[name], self._whole[name])
            ):
                tags = entry.get("tags")
                if isinstance(tags, dict):
                    skip = self._unlearnt[name]
                    kept = ((str(t), u) for t, u in tags.items() if isinstance(u, str))
                    self.tags[name] = {t: u for t, u in kept if not t.startswith(skip)}

    def note(self, device: str, readings: Iterable[Reading]) -> bool:
        """Take in the tags of `device`'s readings; whether one was new (the record is to be saved)."""
        known = self.tags.setdefault(device, {})
        skip = self._unlearnt.get(device, ())
        new = False
        for r in readings:
            if r.tag not in known and len(known) < MAX_TAGS_PER_DEVICE and not r.tag.startswith(skip):
                known[r.tag] = r.unit
                new = True
        return new

    def of(self, device: str) -> list[TagInfo]:
        return [TagInfo(tag, unit) for tag, unit in self.tags.get(device, {}).items()]

    def snapshot(self) -> dict[str, object]:
        """What `save` writes (taken on the event loop)."""
        return {
            name: {
                "settings": self._prints.get(name, ""),
                "config": self._whole.get(name, ""),
                "tags": dict(tags),
            }
            for name, tags in self.tags.items()
            if tags
        }

    def save(self, snapshot: dict[str, object]) -> None:
        """Write `snapshot`; blocking."""
        write_json_state(self.path, snapshot, "learnt_tags")


class SpacedSaves:
    """Saves `tags` `first_s` after a device learnt a tag (one write for the burst of a first poll)
    and at most once per `every_s`, off the event loop. Meters heard for the first time one after
    another (hundreds of wM-Bus meters over their first minutes) each add tags: a save per second
    rewrote the whole growing record every second of that time."""

    def __init__(self, tags: LearntTags, first_s: float = 1.0, every_s: float = 10.0) -> None:
        self.tags, self.first_s, self.every_s = tags, first_s, every_s
        self.saves = 0
        self._saved_at = -every_s
        self._waiting: asyncio.Task[None] | None = None  # a save that waits for its time
        self._one_writer = asyncio.Lock()

    def learnt(self) -> None:
        """A device read a tag it had not before (on the event loop). A tag learnt while a save is
        being written waits for the next one: the snapshot being written was taken before it."""
        if self._waiting is not None:
            return
        wait = max(self.first_s, self._saved_at + self.every_s - time.monotonic())
        self._waiting = asyncio.get_running_loop().create_task(self._save_after(wait))

    async def _save_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._waiting = None  # from here on, a new tag asks for the next save
        await self._save()

    async def _save(self) -> None:
        async with self._one_writer:  # two threads must never write the record at once
            self._saved_at = time.monotonic()
            self.saves += 1
            await asyncio.to_thread(self.tags.save, self.tags.snapshot())

    async def flush(self) -> None:
        """At stop: a save still waiting is made now (the last tags learnt are kept), after any
        write under way."""
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            async with self._one_writer:  # a write under way ends before the agent does
                return
        await cancel_all([waiting])  # it is asleep: nothing is being written by it
        await self._save()
