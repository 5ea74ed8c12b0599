"""Which devices were down, and since when, as the last run of the agent left them.

`driver_down` and `driver_up` are a pair the centre tracks per device. A device down when the agent
stopped and answering after its restart would otherwise never get its `driver_up` (a fresh runner
has no "down" to come back from), and one still down would get a second `driver_down`. The record
is `<state_dir>/devices_down.json`, `{device: down_since_ns}`, rewritten at each change; it is best
effort: an unreadable or unwritable record costs that pairing, nothing else.
"""

from __future__ import annotations

from pathlib import Path

from water_edge.core.files import read_json_state, write_json_state
from water_edge.core.reading import Event

DOWN, UP = "driver_down", "driver_up"


class DownDevices:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.since: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        data = read_json_state(self.path, "devices_down")
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}

    def changed(self, event: Event) -> bool:
        """Take a `driver_down`/`driver_up` into the record; whether it changed (to be saved)."""
        if event.kind == DOWN and event.source not in self.since:
            self.since[event.source] = event.ts_ns
            return True
        if event.kind == UP and event.source in self.since:
            del self.since[event.source]
            return True
        return False

    def keep_only(self, devices: set[str]) -> None:
        """Forget devices no longer configured (a rename, a removal)."""
        self.since = {k: v for k, v in self.since.items() if k in devices}

    def save(self, since: dict[str, int]) -> None:
        """Write `since` (a snapshot of `self.since`, taken on the event loop); blocking."""
        write_json_state(self.path, since, "devices_down")
