"""A versioned JSON document in a gateway's state directory (calibrations, baselines):

    <dir>/<stem>.json        the version in service (the highest)
    <dir>/<stem>.v<N>.json   every version ever written (audit, roll back)

Each save takes the next version and is put in service with temp file + fsync + rename, so a
reader sees the old document or the new one, never half of one. Blocking file I/O: call from a
worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from water_edge.core.files import atomic_write
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.manifest import ModelError


def known_fields(cls: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """The items of `data` that the dataclass `cls` has a field for. A later release may add keys to
    a document without changing its format (only where an older one can do without them); the
    release rolled back to ignores them instead of refusing the document and learning again."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


class Versioned(Protocol):
    version: int

    def to_dict(self) -> dict[str, Any]: ...


DocT = TypeVar("DocT", bound=Versioned)


class VersionedJsonStore(Generic[DocT]):
    """`load`, `versions` and `save` of one document; problems raise `error` naming the file."""

    def __init__(
        self,
        directory: Path,
        stem: str,
        from_dict: Callable[[Any], DocT],
        error: type[Exception] = ModelError,
    ) -> None:
        self.dir = directory
        self.path = directory / f"{stem}.json"
        self._stem = stem
        self._from_dict = from_dict
        self._error = error

    def load(self) -> DocT | None:
        """The document in service, or None if none was ever saved."""
        try:
            text = self.path.read_bytes()  # json.loads decodes it: bad bytes are a ValueError below
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        try:
            return self._from_dict(json.loads(text))
        except (ValueError, ModelError, self._error) as exc:
            raise self._error(f"{self.path}: {exc}") from exc

    def in_service(self, what: str) -> DocT:
        """The document in service for a command that needs one (a replay): `CalibrationFailedError`
        naming `what` and the directory when there is none or it cannot be read."""
        try:
            doc = self.load()
        except (ModelError, self._error) as exc:
            raise CalibrationFailedError(f"{what}: {exc}") from None
        if doc is None:
            raise CalibrationFailedError(f"{what} has no {self._stem} yet (at {self.dir})")
        return doc

    def versions(self) -> list[int]:
        found = []
        for p in self.dir.glob(f"{self._stem}.v*.json"):
            with contextlib.suppress(ValueError):
                found.append(int(p.stem.removeprefix(f"{self._stem}.v")))
        return sorted(found)

    def save(self, doc: DocT) -> DocT:
        """Give `doc` the next version (above every one kept and the one in service, even if that
        one is unreadable), keep it as `<stem>.v<N>.json` and put it in service; `error` naming
        the file when it cannot be written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        current = None
        with contextlib.suppress(self._error):
            current = self.load()
        doc.version = max([0, *self.versions(), current.version if current else 0]) + 1
        text = json.dumps(doc.to_dict(), indent=1) + "\n"
        for target in (self.dir / f"{self._stem}.v{doc.version}.json", self.path):
            try:
                atomic_write(target, text.encode("utf-8"))
            except OSError as exc:  # a full or failing card: the caller goes on without it
                raise self._error(
                    f"{target}: cannot store version {doc.version}: {exc.strerror or exc}"
                ) from exc
        return doc
