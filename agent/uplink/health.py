"""The uplink's health as typed values: what `MqttUplink.health()` returns and the status document shows.

Field names are the keys of the `uplink` section of the status JSON (`core.health.health_json`);
renaming one is a change of that document, not a refactoring.
"""

from __future__ import annotations

from dataclasses import dataclass

from water_edge.agent.uplink.sparkplug.health import SparkplugHealth
from water_edge.agent.uplink.state import ConnState

# The two failure kinds whose reason used to be part of the state text ("refused: Not authorized").
_REASON_SHOWN = frozenset((ConnState.REFUSED, ConnState.TLS_ERROR))


@dataclass(frozen=True, slots=True)
class CommandStats:
    """What became of the messages that arrived on the command topics."""

    received: int = 0
    handled: int = 0
    dropped: int = 0  # the queue was full (handler busy)
    rejected: int = 0  # oversized payload or not a command topic
    failed: int = 0  # the handler raised or timed out


@dataclass(frozen=True, slots=True)
class UplinkHealth:
    """State and counters of the MQTT uplink at one moment."""

    state: ConnState
    connected: bool
    broker: str
    client_id: str
    published: int
    acked: int
    readings_acked: int
    inflight: int
    reconnects: int
    refused: int
    rejected: int
    encode_errors: int
    ack_errors: int
    last_error: str | None
    last_error_ns: int | None
    last_ack_ns: int | None
    ack_rate_msg_s: float
    ack_rate_readings_s: float
    backlog_upto_id: int
    published_live: int
    published_backlog: int
    commands: CommandStats | None  # None without a command handler
    servers: int = 1  # brokers configured ([uplink] servers)
    server_index: int = 0  # which of them `broker` is (0-based, in list order)
    failovers: int = 0  # times the uplink started working on another server than the last one
    sparkplug: SparkplugHealth | None = None  # with encoding = "sparkplug_b"

    def summary(self) -> str:
        """The state in a few words for one-line summaries (systemd STATUS=): `refused: Not authorized`."""
        if self.state in _REASON_SHOWN and self.last_error:
            return f"{self.state}: {self.last_error}"
        return str(self.state)

    def status_lines(self) -> list[str]:
        last_error = f"  last error: {self.last_error}" if self.last_error else ""
        lines = [
            f"{self.state}  published {self.published}  acked {self.acked}  in flight {self.inflight}"
            f"  reconnects {self.reconnects}{last_error}"
        ]
        if self.servers > 1:
            which = f"{self.server_index + 1} of {self.servers}"
            lines.append(f"broker {self.broker} ({which})  failovers {self.failovers}")
        if self.sparkplug is not None:
            lines += self.sparkplug.status_lines()
        return lines
