"""Which broker to connect to next: the `[uplink] servers` list, tried in order, sticky to the one that works.

A server is an URI, `mqtt://host[:port]` (plain, 1883) or `mqtts://host[:port]` (TLS, 8883);
`tcp://` and `ssl://` are accepted as the same. `[uplink] host`/`port` is a one-server list. With
`[uplink] transport = "websockets"` every server is reached over WebSockets (ws://, wss:// for
mqtts://) and the default ports are 80 and 443.

`Rotation` is the failover rule, kept apart from the connection code so it is tested on its own:

- A round starts at the *preferred* server (the first in the list until one has worked, then the
  last that worked) and goes through the others in list order, wrapping, **without** waiting
  between them: a dead node answers "connection refused" at once, so the agent is on the next node
  within one connect attempt.
- When every server of a round failed, the uplink backs off (its capped, jittered backoff) and the
  next round starts at the preferred server again.
- When a connection that worked ends, the uplink backs off once and tries the same server first
  (a broker restart or a network blip should not move a gateway), then the others.

So a gateway stays on the node it is on, and moves only when that node fails; a fleet spreads
over a cluster by listing the nodes in a different order per gateway (docs/fleet.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from water_edge.core.errors import UplinkError
from water_edge.core.hosts import check_host, host_port

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
WEBSOCKET_PORTS = {"mqtt": 80, "mqtts": 443}  # `[uplink] transport = "websockets"`: ws:// and wss://
_SCHEMES = {"mqtt": "mqtt", "tcp": "mqtt", "mqtts": "mqtts", "ssl": "mqtts"}


@dataclass(frozen=True, slots=True)
class Server:
    """One broker address; `tls` says whether the connection uses `[uplink.tls]`."""

    host: str
    port: int
    tls: bool

    @property
    def address(self) -> str:
        """`host:port` (IPv6 in brackets), as status and logs show it."""
        return host_port(self.host, self.port)

    @property
    def uri(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.address}"


def parse_server(uri: str, *, websockets: bool = False) -> Server:
    """`mqtts://node2.example:8883` -> Server; ValueError naming what is wrong otherwise. Without a
    port: 1883/8883, or 80/443 over WebSockets."""
    expected = "expected mqtt://host[:port] or mqtts://host[:port]"
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from exc
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"{expected}: unknown scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"{expected}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{expected}: no path, query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{expected}: put credentials in [uplink] username/password, not in the URI")
    if port == 0:
        raise ValueError(f"{expected}: port 0")
    if ":" in host:
        ipaddress.IPv6Address(host)  # a bracketed name that is no address fails here
    else:
        try:
            check_host(host)  # "mqtt://bad host:1883", "mqtt://10.0.0.256"
        except ValueError as exc:
            raise ValueError(f"{expected}: {exc}") from None
    return Server(host, port or (WEBSOCKET_PORTS if websockets else DEFAULT_PORTS)[scheme], scheme == "mqtts")


class Rotation:
    """The failover rule over a fixed list of servers (see the module docstring)."""

    def __init__(self, servers: tuple[Server, ...]) -> None:
        if not servers:
            raise UplinkError("the uplink needs at least one server")
        self.servers = servers
        self.preferred = 0
        self.index = 0
        self.failovers = 0  # times a different server than the last one that worked started working
        self._failed_in_round = 0

    @property
    def current(self) -> Server:
        return self.servers[self.index]

    def worked(self) -> None:
        """The current server accepted the connection: prefer it from now on."""
        if self.index != self.preferred:
            self.failovers += 1
        self.preferred = self.index
        self._failed_in_round = 0

    def failed(self) -> bool:
        """The current server failed: True if another one should be tried at once, False when the
        round is over (back off; the next round starts at the preferred server)."""
        self._failed_in_round += 1
        if self._failed_in_round >= len(self.servers):
            self._failed_in_round = 0
            self.index = self.preferred
            return False
        self.index = (self.index + 1) % len(self.servers)
        return True

    def lost(self) -> None:
        """A connection that worked ended: the next round starts with the same server."""
        self._failed_in_round = 0
        self.index = self.preferred
