"""Where the uplink's broker connection stands: one state of a closed set, and the last error with its time.

The reason a connection failed is not part of the state: `state` says what kind of failure it was
(`refused`, `tls-error`, `offline`), `last_error` says why, so code compares states as values and
people still read the broker's words. An error is the current state's: reaching `online` clears it,
so `status` never shows a reason for a failure that is over.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from water_edge.core.errors import UplinkError
from water_edge.core.reading import now_ns


class ConnState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # lost, unreachable, or the broker did not answer in time
    REFUSED = "refused"  # the broker answered CONNACK with a failure reason code
    TLS_ERROR = "tls-error"  # TLS files unusable or the handshake failed
    STOPPING = "stopping"
    STOPPED = "stopped"


StateHook = Callable[[ConnState], None]

_FAILED = frozenset((ConnState.OFFLINE, ConnState.REFUSED, ConnState.TLS_ERROR))
# Every state may also go to STOPPED: `run()` ends there however it ends (stop, cancellation, error).
_NEXT: dict[ConnState, frozenset[ConnState]] = {
    ConnState.IDLE: frozenset((ConnState.CONNECTING,)),
    ConnState.CONNECTING: frozenset((ConnState.ONLINE, *_FAILED)),
    ConnState.ONLINE: frozenset((ConnState.OFFLINE, ConnState.STOPPING)),
    ConnState.OFFLINE: frozenset((ConnState.CONNECTING,)),
    ConnState.REFUSED: frozenset((ConnState.CONNECTING,)),
    ConnState.TLS_ERROR: frozenset((ConnState.CONNECTING,)),
    ConnState.STOPPING: frozenset(),
    ConnState.STOPPED: frozenset((ConnState.CONNECTING,)),
}


class ConnectionState:
    """The current `ConnState`, the last error and its time; calls `on_change` on every transition."""

    def __init__(self, on_change: StateHook | None = None) -> None:
        self.state = ConnState.IDLE
        self.last_error: str | None = None
        self.last_error_ns: int | None = None
        self.connections = 0  # times the state became `online`
        self.online_since_ns: int | None = None  # while online: since when
        self.down_since_ns: int | None = now_ns()  # while not online: since the start or the loss
        self._on_change = on_change

    def to(self, state: ConnState) -> None:
        """Move to `state` (a no-op if already there); an unexpected transition is a bug and raises."""
        if state is self.state:
            return
        if state is not ConnState.STOPPED and state not in _NEXT[self.state]:
            raise UplinkError(f"uplink state cannot go from {self.state} to {state}")
        was_online = self.state is ConnState.ONLINE
        self.state = state
        if state is ConnState.ONLINE:
            self.connections += 1
            self.last_error = self.last_error_ns = None
            self.online_since_ns, self.down_since_ns = now_ns(), None
        elif was_online:
            self.online_since_ns, self.down_since_ns = None, now_ns()
        if self._on_change is not None:
            self._on_change(state)

    def error(self, reason: str) -> None:
        """Note an error that does not change the state (a rejected row, a failed outbox ack)."""
        self.last_error = reason
        self.last_error_ns = now_ns()

    def fail(self, state: ConnState, reason: str) -> None:
        """A connection attempt or connection ended in `state` (a failure kind) because of `reason`."""
        if state not in _FAILED:
            raise UplinkError(f"{state} is not a failure state")
        self.error(reason)  # first, so a state hook already sees the reason
        self.to(state)
