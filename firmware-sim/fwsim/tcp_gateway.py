"""A Modbus TCP gateway in front of the simulated PLC that hangs up the way field gateways do.

Serial-to-Ethernet gateways and some PLCs close a client's connection on their own: after an
idle time without a request (a "TCP alive" or inactivity timer, often 30-60 s), or right after
each answer. `TcpGateway` accepts Modbus TCP clients, forwards their bytes to the PLC's Modbus TCP
face (one upstream connection per client) and the answers back, and closes the client's
connection after `idle_close_s` without a request, after `close_after_answers` answers, or when
request number `hang_up_on_request` of a connection arrives (unanswered: the idle timer firing
just as a request comes in). Answers are counted by their MBAP length field, so a close never
cuts one in half.

`answer_from_cache` (switched at any time) is a gateway whose serial side is gone but which answers
from its cache, as many do ("agent mode"): each request gets the last answer the PLC gave to the
same request (unit, function, addresses), under the request's transaction ID, and a request never
answered before gets exception 0x0B (target device failed to respond). The client sees a device
that answers every poll with the values it had.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class GatewayStats:
    accepted: int = 0
    closed_idle: int = 0
    closed_after_answers: int = 0
    hung_up_on_request: int = 0
    answers: int = 0
    answered_from_cache: int = 0


@dataclass
class TcpGateway:
    """Forwards Modbus TCP between clients and `upstream_host:upstream_port`, hanging up as set."""

    upstream_host: str
    upstream_port: int
    idle_close_s: float | None = None
    close_after_answers: int | None = None
    hang_up_on_request: int | None = None
    answer_from_cache: bool = False
    stats: GatewayStats = field(default_factory=GatewayStats)
    # request (unit ID and PDU) -> the PLC's last answer to it (unit ID and PDU)
    _cache: dict[bytes, bytes] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 = any free port); return the port."""
        self._server = await asyncio.start_server(self._client, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        pending: dict[bytes, bytes] = {}  # transaction ID -> request, until its answer comes
        answers = asyncio.create_task(self._answers(up_reader, writer, pending))
        try:
            await self._requests(reader, up_writer, writer, pending)
        finally:
            answers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answers
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        pending: dict[bytes, bytes],
    ) -> None:
        """Client to PLC, until the client goes, stays idle too long or has had its answers."""
        requests = 0
        buf = b""
        while True:
            try:
                async with asyncio.timeout(self.idle_close_s):
                    data = await reader.read(4096)
            except TimeoutError:
                self.stats.closed_idle += 1
                return
            if not data:
                return
            requests += 1
            if requests == self.hang_up_on_request:
                self.stats.hung_up_on_request += 1
                return
            frames, buf = _frames(buf + data)
            if self.answer_from_cache:
                for frame in frames:
                    client.write(_from_cache(frame, self._cache.get(frame[6:])))
                    self.stats.answered_from_cache += 1
                await client.drain()
                continue
            pending.update((frame[:2], frame[6:]) for frame in frames)
            upstream.write(data)
            await upstream.drain()

    async def _answers(
        self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: dict[bytes, bytes]
    ) -> None:
        buf = b""
        sent = 0
        while data := await upstream.read(4096):
            frames, buf = _frames(buf + data)
            for frame in frames:
                request = pending.pop(frame[:2], None)
                if request is not None:
                    self._cache[request] = frame[6:]
                writer.write(frame)
                await writer.drain()
                sent += 1
                self.stats.answers += 1
                if self.close_after_answers is not None and sent >= self.close_after_answers:
                    self.stats.closed_after_answers += 1
                    writer.close()  # the client sees the close right after its answer
                    return


def _frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole Modbus TCP frames at the start of `buf` (by their MBAP length field), and the rest."""
    frames = []
    while len(buf) >= 6 and len(buf) >= 6 + int.from_bytes(buf[4:6], "big"):
        size = 6 + int.from_bytes(buf[4:6], "big")
        frames.append(buf[:size])
        buf = buf[size:]
    return frames, buf


def _from_cache(request: bytes, answer: bytes | None) -> bytes:
    """The answer to `request` under its transaction and protocol IDs: the cached one, or exception
    0x0B (gateway target device failed to respond) for a request the PLC never answered."""
    if answer is None:
        answer = bytes([request[6], request[7] | 0x80, 0x0B])
    return request[:4] + len(answer).to_bytes(2, "big") + answer
