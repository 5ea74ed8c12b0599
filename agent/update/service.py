"""How the updater restarts the agent: systemd by default, any command for other supervisors.

`systemctl restart --no-block`: the updater judges the new release by its status socket, so it
never waits for the start job (a crashing release makes that job fail, which is what the health
check is for).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

import structlog

log = structlog.get_logger(__name__)

DEFAULT_RESTART = ("systemctl", "restart", "--no-block", "edge-agent.service")


class CommandService:
    """Restarts the agent by running an argv (no shell)."""

    def __init__(self, argv: Sequence[str] = DEFAULT_RESTART) -> None:
        self.argv = tuple(argv)

    @classmethod
    def parse(cls, text: str | None) -> CommandService:
        return cls(DEFAULT_RESTART if not text else shlex.split(text))

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
