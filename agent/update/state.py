"""The files the agent and the updater share in the state directory (`<state_dir>/update/`):

    request.json    written by the agent (a signed command) or `edge-agent update apply`: what to do;
                    its appearance starts edge-agent-update.service (a systemd path unit), which
                    takes it (removes it) before doing anything else
    spool/<sha>.tar bundles waiting for the updater (the updater copies and checks them again)
    chunks/<sha>/   parts of a bundle sent over MQTT, until the whole arrived
    state.json      written by the updater only: where the last update stands and how it ended
    reported.json   written by the agent only: the last outcome it turned into an `update` event

Every file is replaced atomically (temp + fsync + rename), so a reader never sees half of one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from water_edge.core.files import atomic_write

Phase = Literal["idle", "verifying", "installing", "trial", "committed", "rolled_back", "failed"]
TERMINAL: frozenset[str] = frozenset({"idle", "committed", "rolled_back", "failed"})


def write_json(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    atomic_write(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2), mode)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class UpdateState:
    """state.json: one update from request to outcome."""

    id: str = ""  # the bundle's sha256 (or "rollback-<ns>" for a manual rollback)
    phase: Phase = "idle"
    action: str = "apply"
    requested_by: str = ""
    from_release: str | None = None
    to_release: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    started_ns: int = 0
    trial_deadline_ns: int | None = None
    finished_ns: int | None = None
    reason: str | None = None  # why it failed or was rolled back, or what the health check saw
    health_window_s: float = 300.0
    # What worked just before the switch (`judge.Baseline`), kept so a resumed trial judges alike.
    baseline: dict[str, Any] | None = None
    log: list[str] = field(default_factory=list)  # one line per step, newest last

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> UpdateState:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class UpdateFiles:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "update"
        self.request = self.dir / "request.json"
        self.spool = self.dir / "spool"
        self.chunks = self.dir / "chunks"
        self.state = self.dir / "state.json"
        self.reported = self.dir / "reported.json"

    def read_state(self) -> UpdateState:
        doc = read_json(self.state)
        return UpdateState() if doc is None else UpdateState.from_json(doc)

    def write_state(self, state: UpdateState) -> None:
        write_json(self.state, state.to_json())

    def write_request(self, doc: dict[str, Any]) -> None:
        write_json(self.request, doc, mode=0o640)

    def take_request(self) -> dict[str, Any] | None:
        """Read and remove the request (the path unit would start the updater again while it exists)."""
        doc = read_json(self.request)
        self.request.unlink(missing_ok=True)
        return doc
