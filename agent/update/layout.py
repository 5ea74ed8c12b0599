"""The A/B layout under the install root (`/opt/edge-agent`, made by deploy/install.sh):

    releases/<version>-<id>/   one complete virtualenv per release, never modified once complete
    releases/<...>/release.json  what it is (version, manifest digest, installed when); written last
    current  -> releases/...   what systemd runs (`ExecStart=/opt/edge-agent/current/bin/edge-agent`)
    previous -> releases/...   the release to roll back to
    venv     -> current        the path older docs and scripts name
    wheels/                    the wheels of the current and previous releases, checked by sha256:
                               thin bundles need only carry what changed
    staging/                   bundles copied out of the agent's reach while they are checked
    min-version.json           the lowest release this gateway installs (floor.py); none: no floor
    failed-releases.json       releases that failed their health check here: never a rollback target
                               again (an explicit apply of the bundle tries one again); none: none

A virtualenv cannot be moved (its scripts name their interpreter by absolute path), so each release
is built where it stays. `switch()` swaps `current` with one rename, which is atomic: a power cut
leaves the old or the new link, never none. The outbox, identity and calibrations live in the state
directory (`/var/lib/edge-agent`), outside every release, and so survive both directions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from water_edge.core.files import fsync_dir

RELEASE_INFO = "release.json"


@dataclass(frozen=True, slots=True)
class Release:
    name: str
    path: Path
    version: str | None  # None for a release installed by install.sh before it wrote release.json


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases = root / "releases"
        self.current = root / "current"
        self.previous = root / "previous"
        self.wheels = root / "wheels"
        self.staging = root / "staging"
        self.min_version = root / "min-version.json"
        self.failed = root / "failed-releases.json"

    def release(self, link: Path) -> Release | None:
        """The release a link points at, or None if there is none."""
        if not link.is_symlink():
            return None
        # One level only: a release may itself be a link (a checkout's venv taken as the first one).
        path = Path(os.path.normpath(link.parent / os.readlink(link)))
        return Release(path.name, path, self.info(path).get("version"))

    @staticmethod
    def info(path: Path) -> dict[str, Any]:
        try:
            doc = orjson.loads((path / RELEASE_INFO).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def complete(self, path: Path) -> bool:
        return (path / RELEASE_INFO).is_file()

    def write_info(self, path: Path, info: dict[str, Any]) -> None:
        tmp = path / f".{RELEASE_INFO}.tmp"
        tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path / RELEASE_INFO)
        fsync_dir(path)

    def _link(self, link: Path, target: Path) -> None:
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target, link.parent))
        os.replace(tmp, link)

    def switch(self, target: Path) -> Release | None:
        """Make `target` current and the old current previous; returns the old current."""
        old = self.release(self.current)
        if old is not None and old.path.resolve() != target.resolve():
            self._link(self.previous, old.path)
        self._link(self.current, target)
        fsync_dir(self.root)
        return old

    def swap_back(self) -> Release | None:
        """Roll back: `previous` becomes current and the failed one previous; returns the new current."""
        back = self.release(self.previous)
        if back is None:
            return None
        failed = self.release(self.current)
        self._link(self.current, back.path)
        if failed is not None:
            self._link(self.previous, failed.path)
        fsync_dir(self.root)
        return back

    def switch_back(self, previous: Path | None) -> Release | None:
        """Leave a release that failed its health check: `previous` becomes current, and `previous`
        then names `previous` given (what it named before the failed attempt), or nothing: the
        failed release is never left as the rollback target. Returns the new current."""
        back = self.release(self.previous)
        if back is None:
            return None
        self._link(self.current, back.path)
        if previous is None:
            self.previous.unlink(missing_ok=True)
        else:
            self._link(self.previous, previous)
        fsync_dir(self.root)
        return back

    def failed_releases(self) -> dict[str, dict[str, Any]]:
        """The releases that failed their health check on this gateway, by name (failed-releases.json,
        root's); {} when there is none or it cannot be read."""
        try:
            doc = orjson.loads(self.failed.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        records = doc.get("releases") if isinstance(doc, dict) else None
        if not isinstance(records, dict):
            return {}
        return {str(k): v for k, v in records.items() if isinstance(v, dict)}

    def mark_failed(self, release: Release, record: dict[str, Any]) -> None:
        """Remember that `release` failed its health check (`record`: why, when, which update)."""
        records = {n: r for n, r in self.failed_releases().items() if (self.releases / n).exists()}
        records[release.name] = {"version": release.version, **record}
        self._write_failed(records)

    def clear_failed(self) -> None:
        """Forget the releases that are current (it passed its health check) or no longer installed."""
        records = self.failed_releases()
        current = self.release(self.current)
        kept = {
            name: record
            for name, record in records.items()
            if (current is None or name != current.name) and (self.releases / name).exists()
        }
        if kept != records:
            self._write_failed(kept)

    def _write_failed(self, records: dict[str, dict[str, Any]]) -> None:
        if not records:
            self.failed.unlink(missing_ok=True)
        else:
            tmp = self.failed.with_name(f".{self.failed.name}.tmp")
            tmp.write_bytes(orjson.dumps({"releases": records}, option=orjson.OPT_INDENT_2))
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            tmp.replace(self.failed)
        fsync_dir(self.root)

    def prune(self, keep: set[Path]) -> list[str]:
        """Remove releases other than `keep` (current and previous) and unfinished ones."""
        removed: list[str] = []
        if not self.releases.is_dir():
            return removed
        keep = {p.resolve() for p in keep}
        for path in self.releases.iterdir():
            if path.resolve() in keep:
                continue
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def prune_wheels(self, keep: list[Path]) -> list[str]:
        """Remove cached wheels that none of the releases `keep` (current and previous) was built
        from; nothing when one of them does not list its wheels (installed by install.sh, or by an
        updater from before the list: what it needs is not known)."""
        needed: set[str] = set()
        for release in keep:
            names = self.info(release).get("wheels")
            if not isinstance(names, list):
                return []
            needed.update(str(n) for n in names)
        removed: list[str] = []
        if not self.wheels.is_dir():
            return removed
        for path in self.wheels.iterdir():
            if path.name not in needed and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return sorted(removed)

    def cache_wheel(self, source: Path) -> None:
        """Keep a verified wheel for later thin bundles (a hard link when on the same filesystem)."""
        self.wheels.mkdir(parents=True, exist_ok=True)
        target = self.wheels / source.name
        if target.exists():
            return
        tmp = self.wheels / f".{source.name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def cached_wheel(self, name: str) -> Path | None:
        path = self.wheels / name
        return path if path.is_file() else None

    def lock_path(self) -> Path:
        return self.root / ".update.lock"


@contextlib.contextmanager
def locked(path: Path) -> Any:
    """One updater at a time (an exclusive flock, released if the process dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another update is running ({path} is locked)") from None
        yield
    finally:
        os.close(fd)
