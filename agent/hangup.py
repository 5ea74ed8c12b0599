"""SIGHUP: `systemctl reload edge-agent` (the unit's ExecReload), and a terminal that goes away.

Without a handler, SIGHUP killed the agent outright: no drain, no `agent_stopped`, the broker's
Will saying `lost`, readings not yet committed gone and the status socket left behind — what an
SSH session that ran `edge-agent run` in the foreground does when it drops. A running agent's
settings change only through a signed `config_update` (`live_config`); a reload by signal is a
restart with the file as it is now. The file is loaded first: one that does not load is refused in
the log (`agent.reload_refused`, every problem named) and the agent runs on with the config it
has. Otherwise the agent stops as on SIGTERM and exits with EXIT_RESTART, which systemd's
Restart=on-failure obeys; in a terminal that went away it is a clean stop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from water_edge.agent.config.load import load_config
from water_edge.core.errors import AgentError

log = structlog.get_logger(__name__)


class Hangup:
    """The SIGHUP handler: checks the config file, then sets `stop` (`requested`) or refuses."""

    def __init__(self, config_file: Path, stop: asyncio.Event) -> None:
        self.config_file = config_file
        self.stop = stop
        self.requested = False
        self.refused = 0
        self._checking: asyncio.Task[None] | None = None

    def __call__(self) -> None:
        if self._checking is None or self._checking.done():  # a second HUP while checking: one check
            self._checking = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        try:
            await asyncio.to_thread(load_config, self.config_file)
        except (AgentError, OSError) as exc:
            self.refused += 1
            problems = getattr(exc, "problems", None) or [str(exc)]
            log.error("agent.reload_refused", config=str(self.config_file), problems=problems)
            return
        log.info("agent.reload_restarting", config=str(self.config_file))
        self.requested = True
        self.stop.set()
