"""A field link for tests: a TCP proxy on loopback that impairs what passes, as a cellular uplink does.

This machine has no `tc netem`, so the impairments a gateway meets on an LTE/3G router are made in
user space, between the agent and a real broker: a one-way `delay_s` each way, a bandwidth cap
per direction (a token bucket, bytes per second), a `stall()` (nothing passes, both sockets stay
open, no RST: a radio link that stops for a minute), a `black_hole()` (every byte of the flows open
now vanishes from here on, the sockets stay open: carrier NAT that forgot an idle flow; a new
connection gets a new mapping and passes) and `cut()` (RST on both sides: the router reconnects).

    link = ImpairedLink(broker.host, broker.port, delay_s=0.4, up_bps=8000)
    port = await link.start()      # point the agent at 127.0.0.1:port
    link.stall(); ...; link.resume()

It runs on the test's event loop. A stall stops reading, so the sender's socket buffers fill as a
modem's do; what was read before is delivered after `resume()`, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from dataclasses import dataclass, field

_CHUNK = 1400  # a radio link's segment: taken from the socket one at a time, as the link carries it
_BUFFER = 4096  # the kernel doubles it; acknowledgements then come every few segments


@dataclass
class _Bucket:
    """Bytes per second with a burst of a tenth of a second (at least one chunk)."""

    rate: float | None
    tokens: float = 0.0
    at: float = 0.0

    async def take(self, n: int) -> None:
        if self.rate is None:
            return
        loop = asyncio.get_running_loop()
        burst = max(float(_CHUNK), self.rate / 10)
        now = loop.time()
        self.tokens = min(burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


@dataclass
class _Flow:
    """One proxied connection: the agent's socket and the broker's."""

    agent: socket.socket
    broker: socket.socket
    black_holed: bool = False
    closed: set[socket.socket] = field(default_factory=set)  # sides of a black-holed flow that ended
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ImpairedLink:
    """A TCP proxy 127.0.0.1:`port` → `host`:`upstream_port` with controllable impairments.

    `up_bps`/`down_bps`: bytes per second agent → broker / broker → agent (None: unlimited).
    `delay_s`, `up.rate` and `down.rate` may be changed while it runs; `accepted` counts
    connections, `open_flows` those still open on some side.
    """

    def __init__(
        self,
        host: str,
        upstream_port: int,
        *,
        delay_s: float = 0.0,
        up_bps: float | None = None,
        down_bps: float | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._upstream = (host, upstream_port)
        self.delay_s = delay_s
        self.up = _Bucket(up_bps)
        self.down = _Bucket(down_bps)
        self.accepted = 0
        self.bytes_up = 0  # agent → broker, delivered
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._flows: list[_Flow] = []
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None

    @property
    def open_flows(self) -> int:
        return len(self._flows)

    async def start(self) -> int:
        listener = self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small buffers and a radio link's segment size on the agent's side (inherited by each
        # accepted socket): the queue of a slow link builds up in the agent's own send buffer,
        # unacknowledged, as behind a real modem, and acknowledgements come as the link carries.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, _CHUNK)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.setblocking(False)
        self.port = int(listener.getsockname()[1])
        self._accepting = asyncio.create_task(self._accept(listener))
        return self.port

    async def stop(self) -> None:
        self.cut()
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()

    # ------------------------------------------------------------------ impairments

    def stall(self) -> None:
        """Nothing passes either way; sockets stay open, nothing is lost (until `resume()`)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def black_hole(self) -> None:
        """Every flow open now silently loses all it carries from here on; new flows pass."""
        for flow in self._flows:
            flow.black_holed = True

    def cut(self) -> None:
        """Reset every open flow (RST to both sides)."""
        for flow in list(self._flows):
            self._close(flow, reset=True)

    # ------------------------------------------------------------------ the proxy

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            agent, _ = await loop.sock_accept(listener)
            self.accepted += 1
            agent.setblocking(False)
            broker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            broker.setblocking(False)
            try:
                await loop.sock_connect(broker, self._upstream)
            except OSError:
                broker.close()
                _reset(agent)
                continue
            flow = _Flow(agent, broker)
            self._flows.append(flow)
            flow.tasks = [
                asyncio.create_task(self._direction(flow, agent, broker, self.up, up=True)),
                asyncio.create_task(self._direction(flow, broker, agent, self.down, up=False)),
            ]

    async def _direction(
        self, flow: _Flow, source: socket.socket, sink: socket.socket, bucket: _Bucket, *, up: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        more = asyncio.Event()
        done = False

        async def deliver() -> None:
            while queue or not done:
                if not queue:
                    more.clear()
                    await more.wait()
                    continue
                at, data = queue[0]
                if (wait := at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                queue.popleft()
                if flow.black_holed:
                    continue
                await loop.sock_sendall(sink, data)
                if up:
                    self.bytes_up += len(data)

        writer = asyncio.create_task(deliver())
        try:
            while True:
                await self._flowing.wait()
                await bucket.take(_CHUNK)  # the link takes the next segment when it has room
                data = await loop.sock_recv(source, _CHUNK)
                if not data:
                    await self._flowing.wait()  # a FIN does not cross a stalled link either
                    break
                if flow.black_holed:
                    continue
                queue.append((loop.time() + self.delay_s, data))
                more.set()
            done = True
            more.set()
            await writer
        except OSError:
            pass
        finally:
            writer.cancel()
            if not flow.black_holed:
                self._close(flow, reset=False)  # an end on one side ends the flow
            else:
                # Its FIN vanishes too: only the side that closed is gone; the other stays open
                # until its own keepalive gives up.
                source.close()
                flow.closed.add(source)
                if len(flow.closed) == 2 and flow in self._flows:
                    self._flows.remove(flow)

    def _close(self, flow: _Flow, *, reset: bool) -> None:
        if flow in self._flows:
            self._flows.remove(flow)
        for task in flow.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for sock in (flow.agent, flow.broker):
            if reset:
                _reset(sock)
            else:
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a router that lost the flow answers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
