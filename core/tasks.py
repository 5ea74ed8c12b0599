"""Stopping asyncio tasks for good.

On Python 3.11 `asyncio.wait_for` loses a cancellation that arrives as its inner call completes
(fixed in 3.12), and other libraries may do the same: a task cancelled once can run on. A stop
that cancels once and waits then never ends, until systemd kills the agent and the outbox's last
rows wait for the next start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_S = 5.0  # long enough for a driver to close its connection after the first cancellation


async def cancel_all(tasks: Iterable[asyncio.Future[Any]], recancel_s: float = RECANCEL_S) -> None:
    """Cancel `tasks` and wait until every one is done, cancelling those still running again every
    `recancel_s`. Their results and exceptions are left for their owner (a TaskGroup, gather)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
