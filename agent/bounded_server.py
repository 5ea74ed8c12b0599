"""What a local client can cost the agent, for its two listeners (the status socket, `GET /metrics`).

Each connection is served by one task; at most `max_clients` at once (one more is sent `busy` and
closed); an answer the client does not take within `write_timeout_s` drops the connection
(`StalledError`); a client that hangs up is no error; `close()` ends every connection still served.
What a subclass serves is its `_serve`; what it counts of the turned away is its `_turned_away`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from water_edge.core.tasks import cancel_all

TurnedAway = Literal["busy", "stalled"]


class StalledError(Exception):
    """The client did not take the answer within the write timeout."""


class BoundedServer:
    def __init__(self, *, max_clients: int, write_timeout_s: float, busy: bytes) -> None:
        self.max_clients = max_clients
        self.write_timeout_s = write_timeout_s
        self.clients = 0
        self._busy = busy
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _turned_away(self, why: TurnedAway) -> None:
        """Count a client turned away: `busy` (over `max_clients`) or `stalled` (took no answer)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self._turned_away("busy")
            with contextlib.suppress(ConnectionError):
                writer.write(self._busy)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        self.clients += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except StalledError:
            self._turned_away("stalled")
            # close() would keep the connection until the buffered answer is read, i.e. for good.
            writer.transport.abort()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Ended by close(): finish normally, so asyncio's stream callback logs no error.
        finally:
            self.clients -= 1
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write `data`; `StalledError` if the client has not taken it within the write timeout."""
        writer.write(data)
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await writer.drain()
        except TimeoutError:
            raise StalledError from None

    async def _end_connections(self) -> None:
        """End every connection still served (a tail waits for readings that no longer come)."""
        self._closing = True
        await cancel_all(list(self._handlers))
        await asyncio.gather(*self._handlers, return_exceptions=True)
