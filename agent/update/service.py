"""How the updater restarts the agent, and how often its supervisor has restarted it since.

`systemctl restart --no-block`: the updater judges the new release by its status socket, so it
never waits for the start job (a crashing release makes that job fail, which is what the health
check is for). systemd's `NRestarts` counts the automatic restarts (`Restart=on-failure`) of the
unit: a release that keeps exiting before it passes its health check is rolled back without
waiting out the whole window (`Updater.rollback_after_restarts`). Another supervisor gives its own
count with `--restarts-command`, or none, and the window alone decides.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

import structlog

log = structlog.get_logger(__name__)

DEFAULT_RESTART = ("systemctl", "restart", "--no-block", "edge-agent.service")
DEFAULT_RESTARTS = ("systemctl", "show", "--property=NRestarts", "--value", "edge-agent.service")


class CommandService:
    """Restarts the agent by running an argv (no shell); reads its restart count by another."""

    def __init__(
        self, argv: Sequence[str] = DEFAULT_RESTART, restarts_argv: Sequence[str] | None = None
    ) -> None:
        self.argv = tuple(argv)
        self.restarts_argv = None if restarts_argv is None else tuple(restarts_argv)

    @classmethod
    def parse(cls, text: str | None, restarts_text: str | None = None) -> CommandService:
        """The restart command (default: systemd's); the count comes from `restarts_text`, else
        from systemd when systemd restarts the agent, else from nowhere."""
        argv = DEFAULT_RESTART if not text else shlex.split(text)
        if restarts_text:
            return cls(argv, shlex.split(restarts_text))
        return cls(argv, DEFAULT_RESTARTS if not text else None)

    def restart(self) -> str | None:
        """Ask for a restart; the error text if the command failed (the health check decides anyway)."""
        try:
            done = subprocess.run(self.argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("update.restart_failed", argv=self.argv, error=str(exc))
            return str(exc)
        if done.returncode != 0:
            log.warning("update.restart_failed", argv=self.argv, stderr=done.stderr[-500:])
            return done.stderr.strip()[-500:] or f"exit {done.returncode}"
        return None

    def restarts(self) -> int | None:
        """How many times the supervisor has restarted the agent after it exited (a counter that only
        grows, or starts again from 0); None when there is no count to read."""
        if self.restarts_argv is None:
            return None
        try:
            done = subprocess.run(self.restarts_argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = done.stdout.strip()
        return int(text) if done.returncode == 0 and text.isdigit() else None


class RestartCount:
    """The supervisor's restarts of the agent since this was made. A counter found lower than before
    was reset (systemd resets `NRestarts` when the unit is started by hand, and the updater's own
    `systemctl restart --no-block` may be carried out after the first read): counting goes on from
    there, so a reset never reads as restarts."""

    def __init__(self, service: CommandService) -> None:
        self.service = service
        self._base = service.restarts()
        self._seen = 0

    def since_start(self) -> int:
        now = self.service.restarts()
        if now is None:
            return self._seen
        if self._base is None or now < self._base:
            self._base = now - self._seen
        self._seen = now - self._base
        return self._seen
