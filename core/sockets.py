"""Connecting to addresses resolved beforehand: a name is looked up where a hung resolver can be
waited for under a deadline (`agent.uplink.connection.resolve`, `agent.update.receive`), and the
connection then goes to what it found, without a second lookup."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

Address = tuple[int, tuple[Any, ...]]  # (address family, sockaddr)


def connect_first(
    addresses: Iterable[Address], timeout: float | None, source_address: tuple[str, int] | None = None
) -> socket.socket:
    """A TCP connection to the first of `addresses` that takes one, in order (as
    `socket.create_connection` tries what `getaddrinfo` gave); the last error if none does."""
    last: OSError = OSError("no address to connect to")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            if source_address is not None:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last
