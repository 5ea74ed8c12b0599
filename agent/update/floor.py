"""The minimum release version this gateway installs: root's floor against rollback attacks (an old,
validly signed release with a known hole put back on the gateway). docs/updates.md, "The minimum
release version", says how it is raised.

    /opt/edge-agent/min-version.json   {"min_version": "1.3.0", "raised_by": "...", "raised_ns": ...,
                                        "update": "..."}

It lives in the install root beside `current` and `previous`: root's, which the agent cannot write,
and the one root-owned place the updater may write (edge-agent-update.service has ProtectSystem=
strict with /opt/edge-agent among its ReadWritePaths; /etc/edge-agent is read-only to it), so a
release can raise it. No file: no floor. The updater only ever raises it: when a release whose
signed manifest carries `min_version` is committed (never above that release), or by `edge-agent
update min-version` on site (never above the release that is current). So the release that was
running, to which a failed health check returns, is never below it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from water_edge.agent.update.versions import EXPECTED, ReleaseVersion, VersionError
from water_edge.core.errors import AgentError
from water_edge.core.files import fsync_dir

KEY: Final = "min_version"
EXAMPLE: Final = '{"min_version": "1.3.0"}'
MAX_BYTES: Final = 64 * 1024


class FloorError(AgentError):
    """root's floor file cannot be read or is not what it must be; names the file, the key and
    what was expected. No release is installed until it is fixed: a floor nobody can read is not
    taken for none."""


@dataclass(frozen=True, slots=True)
class Floor:
    version: ReleaseVersion
    path: Path
    raised_by: str | None  # what raised it: a release's name, or who ran `update min-version`
    # The update whose release raised it ("<id>@<started_ns>", as in state.json): the floor is raised
    # once the release has passed its health check, so a trial a power cut interrupted right after
    # that is known to have passed.
    update: str | None = None


def read_floor(path: Path) -> Floor | None:
    """The floor in `path`; None when there is no such file; FloorError when it is not a floor."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FloorError(f"{path}: cannot be read ({exc.strerror}); expected {EXAMPLE}") from None
    try:
        doc = orjson.loads(raw) if len(raw) <= MAX_BYTES else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise FloorError(f"{path}: not a JSON object; expected {EXAMPLE}")
    if KEY not in doc:
        raise FloorError(f'{path}: no "{KEY}"; expected {EXAMPLE}')
    value = doc[KEY]
    try:
        if not isinstance(value, str):
            raise VersionError(value)
        version = ReleaseVersion(value)
    except VersionError:
        raise FloorError(f'{path}: "{KEY}" is {str(value)[:40]!r}; expected {EXPECTED}') from None
    raised_by, update = doc.get("raised_by"), doc.get("update")
    return Floor(
        version,
        path,
        raised_by if isinstance(raised_by, str) else None,
        update if isinstance(update, str) else None,
    )


def write_floor(
    path: Path, version: ReleaseVersion, raised_by: str, now_ns: int, update: str | None = None
) -> None:
    """Replace the floor atomically (a power cut leaves the old floor or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    doc = {KEY: version.text, "raised_by": raised_by, "raised_ns": now_ns, "update": update}
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    with tmp.open("wb") as fh:
        os.fchmod(fh.fileno(), 0o644)  # the agent reads it (status); only root writes it
        fh.write(data + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def refusal(floor: Floor | None, version: str | None, what: str) -> str | None:
    """Why `what`, at `version`, is not installed on a gateway with `floor`; None when it may be."""
    if floor is None:
        return None
    if version is None:
        return f"refused: {what} has no recorded version; the minimum is {floor.version} ({floor.path})"
    try:
        ours = ReleaseVersion(version)
    except VersionError:
        return (
            f"refused: {what}: its version cannot be compared with this gateway's minimum "
            f"{floor.version} ({floor.path}): expected {EXPECTED}"
        )
    if ours < floor.version:
        return f"refused: {what} is below this gateway's minimum {floor.version} ({floor.path})"
    return None
