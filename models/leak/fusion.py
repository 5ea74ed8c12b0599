"""Acoustic and night-flow evidence of one site, shared through the state directory.

The leak processor (hydrophones) and the night-flow processor (district meters) run apart; a leak
is surer when both see it. Each records what it found (`record`) in
`<state_dir>/sites/<site>.json` and asks for the other's within a few nights (`recent`) when it
raises an event, which then carries both and a higher severity. A file, not shared memory, because
the evidence outlives a restart: a rise of night flow two nights ago still counts tonight.
"""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path
from typing import Any, Literal

from water_edge.core.files import read_json_state, write_json_state

Kind = Literal["acoustic", "night_flow"]
KEEP_DAYS = 60
_LOCK = threading.Lock()  # both processors may write from worker threads of one agent


class SiteEvidence:
    def __init__(self, state_dir: Path, site: str) -> None:
        self.path = Path(state_dir) / "sites" / f"{site}.json"
        self.site = site

    def _read(self) -> list[dict[str, Any]]:
        data = read_json_state(self.path, "leak.evidence")  # best effort: a leak is raised without it
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def record(self, kind: Kind, night: date, detail: dict[str, Any]) -> None:
        with _LOCK:
            rows = [
                r
                for r in self._read()
                if (night - date.fromisoformat(str(r.get("night", night.isoformat())))).days <= KEEP_DAYS
            ]
            rows.append({"kind": kind, "night": night.isoformat(), **detail})
            write_json_state(self.path, rows, "leak.evidence")  # a full card: not shared, nothing else

    def recent(self, kind: Kind, night: date, within_nights: int = 3) -> dict[str, Any] | None:
        """The latest record of `kind` at most `within_nights` nights before or after `night`."""
        with _LOCK:
            rows = self._read()
        hits = [
            r
            for r in rows
            if r.get("kind") == kind
            and abs((night - date.fromisoformat(str(r.get("night")))).days) <= within_nights
        ]
        return hits[-1] if hits else None
