"""Whether a model's alarm was raised, and since when, as the last run of the agent left it.

An alarm's start and its clear are a pair the centre tracks (`pump_anomaly` and
`pump_anomaly_cleared`, `machine_sound_anomaly` with `state` start and clear). An alarm raised when
the agent stopped would otherwise be forgotten: raised again as a second start if the fault goes on,
never cleared if it ended while the agent was down. The record is `<model dir>/alarm.json`,
`{"since_ns": N}` while raised and `{}` once cleared; best effort (an unreadable or unwritable record
costs that pairing, nothing else).
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from water_edge.core.files import atomic_write

log = structlog.get_logger(__name__)


class AlarmRecord:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "alarm.json"

    def raised_since(self) -> int | None:
        """When the alarm left raised at the last stop began (ns), or None."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("alarm_record.unreadable", path=str(self.path), error=str(exc))
            return None
        since = data.get("since_ns") if isinstance(data, dict) else None
        return since if isinstance(since, int) and not isinstance(since, bool) else None

    def save(self, since_ns: int | None) -> None:
        """Record the alarm raised since `since_ns`, or cleared (None). Blocking: run it off the loop."""
        data = {} if since_ns is None else {"since_ns": since_ns}
        try:
            atomic_write(self.path, json.dumps(data).encode("utf-8"))
        except OSError as exc:
            log.warning("alarm_record.not_stored", path=str(self.path), error=str(exc))
