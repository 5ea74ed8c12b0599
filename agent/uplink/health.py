"""The uplink's health as typed values: what `MqttUplink.health()` returns and the status document shows.

Field names are the keys of the `uplink` section of the status JSON (`core.health.health_json`);
renaming one is a change of that document, not a refactoring.
"""

from __future__ import annotations

from dataclasses import dataclass

from water_edge.agent.uplink.sparkplug.health import SparkplugHealth
from water_edge.agent.uplink.state import ConnState
from water_edge.core import units

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
class RefusedStream:
    """A stream whose topic the broker refused (a PUBACK failure code): its rows wait in the outbox."""

    stream: str
    topic: str
    reason: str  # the broker's reason code, as said: `Not authorized (0x87)`
    held_back: int  # its rows skipped on the current connection, kept in the outbox


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
    reconnects: int  # connection attempts after the first (failed ones and re-connections)
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
    refused_streams: int = 0  # streams whose topic the broker refused (PUBACK failure code), set aside
    held_back: int = 0  # rows of those streams skipped on this connection, kept in the outbox
    refusals: tuple[RefusedStream, ...] = ()  # those streams, one entry each (their rows in `held_back`)
    taken_over: int = 0  # connections the broker closed because another client took the client id
    ack_timeouts: int = 0  # connections dropped because the broker sent no PUBACK within ack_timeout_s
    sparkplug: SparkplugHealth | None = None  # with encoding = "sparkplug_b"
    connections: int = 0  # times a connection came online
    retained_status: bool = True  # the status topic is retained (False: the broker keeps none)
    online_since_ns: int | None = None  # while online
    down_since_ns: int | None = None  # while not online: since the start or since the connection was lost
    # Ages at the time of this health (what status prints), from the *_ns fields above.
    online_for_s: float | None = None
    down_for_s: float | None = None
    last_error_age_s: float | None = None
    last_ack_age_s: float | None = None

    def summary(self) -> str:
        """The state in a few words for one-line summaries (systemd STATUS=): `refused: Not authorized`."""
        if self.state in _REASON_SHOWN and self.last_error:
            return f"{self.state}: {self.last_error}"
        return str(self.state)

    def status_lines(self) -> list[str]:
        """Now, not history: the broker, how long it has been up or down, the error that keeps it
        down (with its age; an error that is over is gone), then the counters."""
        where = f"{self.state}  {self.broker}"
        if self.state is ConnState.ONLINE and self.online_for_s is not None:
            where += f"  for {units.duration(self.online_for_s)}"
        elif self.connections == 0:
            tries = f", {self.reconnects + 1} attempts" if self.reconnects else ""
            where += f"  never connected{tries}"
        elif self.down_for_s is not None:
            where += f"  down {units.duration(self.down_for_s)}"
        if self.last_error:
            where += f"  error{_ago(self.last_error_age_s)}: {self.last_error}"
        last_ack = "never" if self.last_ack_age_s is None else f"{units.duration(self.last_ack_age_s)} ago"
        counters = (
            f"published {self.published}  acked {self.acked}  in flight {self.inflight}  last ack {last_ack}"
        )
        if self.connections > 1:
            counters += f"  reconnected {self.connections - 1} times"
        if self.ack_timeouts:
            counters += f"  no-PUBACK timeouts {self.ack_timeouts}"
        if self.taken_over:
            counters += f"  client id taken over {self.taken_over} times"
        lines = [where, counters]
        if self.refused_streams:
            lines.append(
                f"refused by the broker: {self.refused_streams} streams, {self.held_back} rows held back"
                f" in the outbox (tried again with backoff)  rejected {self.rejected}"
            )
        if not self.retained_status:
            lines.append("status topic not retained: the broker keeps no retained messages")
        if self.servers > 1:
            which = f"{self.server_index + 1} of {self.servers}"
            lines.append(f"broker {which}  failovers {self.failovers}")
        if self.sparkplug is not None:
            lines += self.sparkplug.status_lines()
        return lines


def _ago(age_s: float | None) -> str:
    return "" if age_s is None else f" {units.duration(age_s)} ago"


def age_s(then_ns: int | None, now_ns: int) -> float | None:
    """Seconds from `then_ns` to `now_ns` (never negative), None for never."""
    return None if then_ns is None else round(max(0, now_ns - then_ns) / 1e9, 1)
