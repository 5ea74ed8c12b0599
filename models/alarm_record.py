"""Whether a model's alarm was raised, and since when, as the last run of the agent left it.

An alarm's start and its clear are a pair the centre tracks (`pump_anomaly` and
`pump_anomaly_cleared`, `machine_sound_anomaly` with `state` start and clear). An alarm raised when
the agent stopped would otherwise be forgotten: raised again as a second start if the fault goes on,
never cleared if it ended while the agent was down. The record is `<model dir>/alarm.json`,
`{"since_ns": N}` while raised and `{}` once cleared; best effort (an unreadable record costs that
pairing, nothing else; one that cannot be written, on a full or read-only card, is written again
by `retry` once the card takes writes: `json_record.JsonRecord`).
"""

from __future__ import annotations

from pathlib import Path

from water_edge.models.json_record import JsonRecord


class AlarmRecord(JsonRecord):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory / "alarm.json", "alarm_record")

    def raised_since(self) -> int | None:
        """When the alarm left raised at the last stop began (ns), or None."""
        data = self.load()
        since = data.get("since_ns") if isinstance(data, dict) else None
        return since if isinstance(since, int) and not isinstance(since, bool) else None

    def raised(self, since_ns: int | None) -> str | None:
        """Record the alarm raised since `since_ns`, or cleared (None); why it could not be
        written (it is again at `retry`), else None. Blocking: run it off the loop."""
        return self.save({} if since_ns is None else {"since_ns": since_ns})
