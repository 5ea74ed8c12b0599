"""What the running agent says about updates: its releases and the last update in the status
document (`UpdateHealth`), and each outcome the updater wrote as one `update` event (`UpdateWatch`).

The updater is another process; it writes state.json. The agent polls that file's mtime (a stat
every few seconds) and turns an outcome it has not reported yet into an event, remembering it in
reported.json (the bundle's sha256 and when that attempt started: the same bundle sent again is
another outcome), so every outcome reaches the centre once through the outbox, whichever release is
running when it is decided (the new one after a commit, the old one after a rollback).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from water_edge.agent.update.layout import Layout
from water_edge.agent.update.state import TERMINAL, UpdateFiles, UpdateState, load_json, read_json, write_json
from water_edge.core.reading import Event, Severity, now_ns

log = structlog.get_logger(__name__)

POLL_S = 2.0


@dataclass(frozen=True, slots=True)
class UpdateHealth:
    """Releases on this gateway and the last update (`core.health.Health`)."""

    running_version: str
    current_release: str | None  # None when not installed in the A/B layout (a checkout, a container)
    previous_release: str | None
    previous_version: str | None
    phase: str  # idle, verifying, installing, trial, committed, rolled_back, failed
    update_id: str | None
    to_version: str | None
    reason: str | None
    finished_ns: int | None

    def status_lines(self) -> list[str]:
        if self.current_release is None and self.phase == "idle":
            return []  # not installed from releases, never updated: nothing to say
        back = f"  previous {self.previous_version or self.previous_release}" if self.previous_release else ""
        line = f"update   running {self.running_version}{back}"
        if self.phase == "idle":
            return [line]
        target = f" {self.to_version}" if self.to_version else ""
        why = f" ({self.reason})" if self.reason else ""
        # An update rolled back by its health check: the release is remembered as failed
        # (failed-releases.json) and is no rollback target.
        failed = (
            "; marked failed, no rollback target"
            if self.phase == "rolled_back" and not (self.update_id or "").startswith("rollback-")
            else ""
        )
        return [f"{line}  last update{target}: {self.phase.replace('_', ' ')}{why}{failed}"]


def update_health(version: str, files: UpdateFiles, layout: Layout | None) -> UpdateHealth:
    state = files.read_state()
    current = None if layout is None else layout.release(layout.current)
    previous = None if layout is None else layout.release(layout.previous)
    return UpdateHealth(
        running_version=version,
        current_release=None if current is None else current.name,
        previous_release=None if previous is None else previous.name,
        previous_version=None if previous is None else previous.version,
        phase=state.phase,
        update_id=state.id or None,
        to_version=state.to_version,
        reason=state.reason,
        finished_ns=state.finished_ns,
    )


_SEVERITY: dict[str, Severity] = {"committed": "info", "rolled_back": "alarm", "failed": "warning"}


class UpdateWatch:
    """Reports each finished update once as an `update` event."""

    def __init__(self, files: UpdateFiles, emit: Callable[[Event], Awaitable[None]]) -> None:
        self.files = files
        self._emit = emit
        self._mtime: int | None = None

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(POLL_S)

    async def check(self) -> None:
        try:
            mtime = self.files.state.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        state = self.files.read_state()
        if state.phase not in TERMINAL or state.phase == "idle" or not state.id:
            return
        reported = read_json(self.files.reported) or {}
        # The same bundle can be sent again (a retry, a second wave): each attempt is its own
        # outcome. A reported.json from before `started_ns` was kept counts as this attempt's.
        if (
            reported.get("id") == state.id
            and reported.get("started_ns", state.started_ns) == state.started_ns
        ):
            return
        await self._emit(self._event(state))
        write_json(
            self.files.reported,
            {"id": state.id, "started_ns": state.started_ns, "phase": state.phase, "reported_ns": now_ns()},
        )
        log.info("update.reported", id=state.id[:16], phase=state.phase)
        self._drop_spooled(state.id)

    def _drop_spooled(self, sha: str) -> None:
        """The bundle of an update that has ended is done with (a retry sends it again), unless a
        new request names it, or one is waiting that the agent cannot read (root's, from `update
        apply`): on a gateway the spool shares its disk with the outbox."""
        try:
            if (load_json(self.files.request) or {}).get("sha256") == sha:
                return
        except OSError:
            return
        try:
            self.files.remove_spooled(f"{sha}.tar")
        except OSError as exc:
            log.warning("update.spool_not_removed", id=sha[:16], error=str(exc))

    @staticmethod
    def _event(state: UpdateState) -> Event:
        return Event(
            "update",
            "agent",
            now_ns(),
            _SEVERITY.get(state.phase, "warning"),
            detail={
                "outcome": state.phase,
                "id": state.id,
                "action": state.action,
                "from": state.from_version,
                "to": state.to_version,
                "reason": state.reason,
                "requested_by": state.requested_by,
            },
        )
