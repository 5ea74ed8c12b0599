"""One broker connection driven on the asyncio loop through paho's external-loop socket callbacks.

A fresh `Connection` (and paho `Client`) per connect: nothing paho holds in memory outlives it,
which is what keeps the outbox the only source of resends (see `agent.uplink.mqtt`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from water_edge.buffer.types import OutboxRow


class Connection:
    """One broker connection: a fresh paho client and what is in flight on it. Discarded on loss."""

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop, window: int) -> None:
        self.client = client
        self.loop = loop
        self.window = window
        self.connack: asyncio.Future[ReasonCode] = loop.create_future()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.inflight: dict[int, OutboxRow] = {}
        self.status_acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self.rejected = False
        self._sock: Any = None
        self._misc: asyncio.Task[None] | None = None

    def attach(self, misc_period_s: float) -> None:
        """Hand the connected socket to the event loop (call on the loop thread after connect())."""
        c = self.client
        self._sock = c.socket()
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        if self._sock is None:
            self.closed.set()
            return
        self.loop.add_reader(self._sock, self._readable)
        if c.want_write():
            c.loop_write()
        self._misc = self.loop.create_task(self._misc_loop(misc_period_s), name="mqtt-misc")

    def _readable(self) -> None:
        c = self.client
        c.loop_read()
        # TLS can hold decrypted bytes the kernel no longer reports as readable.
        sock = c.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
            c.loop_read()
            sock = c.socket()

    def _register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self.loop.add_writer(sock, self.client.loop_write)

    def _unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        self._sock = None
        self.closed.set()

    async def _misc_loop(self, period_s: float) -> None:
        # A keepalive timer, not a work poll: paho needs loop_misc() to send PINGREQ and to notice
        # a silent broker.
        while self.client.socket() is not None:
            await asyncio.sleep(period_s)
            self.client.loop_misc()

    def abort(self) -> None:
        """Close the socket without DISCONNECT (the broker then publishes the Last Will)."""
        if self._misc is not None:
            self._misc.cancel()
        c = self.client
        c.on_socket_close = None
        c.on_socket_register_write = None
        c.on_socket_unregister_write = None
        sock = self._sock
        self._sock = None
        if sock is not None:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            sock.close()
        self.closed.set()
