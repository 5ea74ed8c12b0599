"""What `edge-agent update status|apply|rollback|run|min-version` take from the config, also when
it does not validate or cannot be read at all.

A technician facing an agent in a restart loop (a bad config, or a release that refuses it) must
still see the releases and roll back, and the updater service must still carry out that rollback.
These commands need little of the config: `[update]` (install root, release keys, health window,
restart count, bundle size), `gateway.state_dir` (as a user other than root) and the names of the
status socket and the audit log in the state directory. A config that validates gives them as
`load_config` does. One that does not is read leniently: each of those keys that is valid on its
own is taken, each that is not (or whose section is not a table) falls back to its default and is
named; a file that cannot be read or is not TOML gives every default. `note()` says which, so a
command never works from a default without saying so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from water_edge.agent.config.schema import StatusSection
from water_edge.agent.remote.config import SecuritySection
from water_edge.agent.update.config import UpdateSection
from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")

# The keys these commands read, as `section.key`.
UPDATE_KEYS = tuple(f"update.{name}" for name in UpdateSection.model_fields)
STATE_DIR_KEY = "gateway.state_dir"
SOCKET_KEY = "status.socket"
AUDIT_KEY = "security.audit_log"


@dataclass(frozen=True)
class UpdateSettings:
    source: Path
    update: UpdateSection
    state_dir: Path  # gateway.state_dir: followed by users other than root only
    status_socket: Path  # relative to the state directory, or absolute
    audit_log: Path  # relative to the state directory, or absolute
    # Why the config was not taken whole (None: it validates), and the keys then left at their
    # defaults because the file did not give them validly (every key when it could not be read).
    problem: str | None = None
    defaulted: frozenset[str] = frozenset()
    read: bool = True  # False: the file could not be read, or is not TOML

    def default_text(self, key: str) -> str:
        """`key`'s value as used here, for a note."""
        if key == STATE_DIR_KEY:
            return str(self.state_dir)
        if key == SOCKET_KEY:
            return str(self.status_socket)
        if key == AUDIT_KEY:
            return str(self.audit_log)
        value = getattr(self.update, key.removeprefix("update."))
        if isinstance(value, tuple):
            return ", ".join(value) or "(none)"
        return str(value)

    def note(self, uses: Iterable[str]) -> str | None:
        """One line for stderr when the config was not taken whole: why, and which of the keys
        in `uses` (those the command reads from the config, not from its own options) are at their
        defaults; None when the config validates."""
        if self.problem is None:
            return None
        uses = list(uses)
        left = [key for key in uses if key in self.defaulted]
        if not left:
            if uses and self.read:
                return f"{self.problem}; the keys this command needs were read from it"
            return f"{self.problem}; this command needs nothing from it (its options say what it does)"
        values = ", ".join(f"{key} = {self.default_text(key)}" for key in left)
        return f"{self.problem}; not read from it, defaults used: {values}"


def update_settings(path: str | Path) -> UpdateSettings:
    """The update commands' settings from the config at `path` (see the module's docstring).
    A valid config whose state files this user may not look at raises `StateFilesClosedError`,
    as every command that works on them does."""
    from water_edge.agent.config import load_config
    from water_edge.agent.config.load import StateFilesClosedError
    from water_edge.core.errors import ConfigError

    source = Path(path)
    try:
        config = load_config(source)
    except StateFilesClosedError:
        raise
    except ConfigError as exc:
        return _lenient(source, exc)
    return UpdateSettings(
        source=source,
        update=config.update,
        state_dir=Path(config.gateway.state_dir),
        status_socket=config.status.socket,
        audit_log=config.security.audit_log,
    )


def _lenient(source: Path, exc: Any) -> UpdateSettings:
    every = frozenset({*UPDATE_KEYS, STATE_DIR_KEY, SOCKET_KEY, AUDIT_KEY})
    status, security = StatusSection(), SecuritySection()
    defaults = UpdateSettings(
        source=source,
        update=UpdateSection(),
        state_dir=DEFAULT_STATE_DIR,
        status_socket=status.socket,
        audit_log=security.audit_log,
        defaulted=every,
    )
    try:
        raw = parse_toml(read_toml_text(source))
    except OSError as error:
        return _with(defaults, f"cannot read the config {source} ({error.strerror or error})")
    except (NotUtf8TextError, TOMLDecodeError) as error:
        return _with(defaults, f"the config {source} is not readable TOML ({error})")
    n = len(exc.problems)
    problem = (
        f"the config {source} does not validate ({n} problem{'s' if n != 1 else ''}; "
        f"`edge-agent check-config -c {source}` lists them)"
    )
    defaulted: set[str] = set()
    taken: dict[str, Any] = {}
    table = raw.get("update", {})
    for name in UpdateSection.model_fields:
        key = f"update.{name}"
        if not isinstance(table, dict):
            defaulted.add(key)
        elif name in table:
            if (value := _field(UpdateSection, name, table[name])) is None:
                defaulted.add(key)
            else:
                taken[name] = value
    socket = _key(raw, SOCKET_KEY, StatusSection, defaulted)
    audit = _key(raw, AUDIT_KEY, SecuritySection, defaulted)
    state_dir = _state_dir(raw, defaulted)
    return UpdateSettings(
        source=source,
        update=UpdateSection(**taken),
        state_dir=state_dir or DEFAULT_STATE_DIR,
        status_socket=socket if isinstance(socket, Path) else status.socket,
        audit_log=audit if isinstance(audit, Path) else security.audit_log,
        problem=problem,
        defaulted=frozenset(defaulted),
    )


def _with(settings: UpdateSettings, problem: str) -> UpdateSettings:
    return dataclasses.replace(settings, problem=problem, read=False)


def _field(model: type[BaseModel], name: str, value: object) -> Any:
    """`value` as `model`'s field `name` takes it, or None when the field refuses it."""
    try:
        return getattr(model.model_validate({name: value}), name)
    except ValidationError:
        return None


def _key(raw: dict[str, Any], key: str, model: type[BaseModel], defaulted: set[str]) -> Any:
    section, name = key.split(".")
    table = raw.get(section, {})
    if not isinstance(table, dict):
        defaulted.add(key)
        return None
    if name not in table:
        return None
    value = _field(model, name, table[name])
    if value is None:
        defaulted.add(key)
    return value


def _state_dir(raw: dict[str, Any], defaulted: set[str]) -> Path | None:
    gateway = raw.get("gateway", {})
    value = gateway.get("state_dir") if isinstance(gateway, dict) else None
    if not isinstance(gateway, dict) or (
        "state_dir" in gateway and not (isinstance(value, str) and value and Path(value).is_absolute())
    ):
        defaulted.add(STATE_DIR_KEY)
        return None
    return Path(value) if isinstance(value, str) else None
