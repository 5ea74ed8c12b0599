"""The status document: what `edge-agent status` shows and `status --json` prints, built from typed parts.

Each section is a component's typed health (`core.health.Health`) or one of the small dataclasses
here; `to_json()` turns the whole into the JSON that docs/status.schema.json describes. A section
that people read carries `lines`, its own `status_lines()`, and entries of a list section carry
`name`: that is all `edge-agent status` needs to print it, so the command never reads a
component's fields and a renamed counter cannot silently vanish from its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from water_edge.agent.board_change import BoardStatus
from water_edge.agent.clock_sync import ClockHealth
from water_edge.agent.host_health import HostHealth
from water_edge.agent.identity_keeper import CertificateHealth
from water_edge.agent.pipeline import FeedHealth, PipelineHealth
from water_edge.agent.remote.result import CommandCounts
from water_edge.agent.serial_adapters import SerialPortStatus
from water_edge.agent.state_backup import StateBackupHealth
from water_edge.agent.supervisor import RunnerStatus
from water_edge.agent.update.report import UpdateHealth
from water_edge.agent.uplink.health import UplinkHealth
from water_edge.agent.uplink.transport import certificate_refused
from water_edge.agent.watchdog import WatchdogHealth
from water_edge.buffer.stats import BufferHealth
from water_edge.core import units
from water_edge.core.health import Health, Problems, health_json


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """The agent process itself."""

    version: str
    pid: int
    site: str
    gateway: str
    config: str  # the config file it runs
    started_ns: int
    uptime_s: float

    def status_lines(self) -> list[str]:
        return [
            f"{self.version}  site {self.site}  gateway {self.gateway}  pid {self.pid}  "
            f"up {units.duration(self.uptime_s)}",
            f"config {self.config}",
        ]


@dataclass(frozen=True, slots=True)
class ProcessorStatus:
    """One analytics processor as the agent runs it: its crashes, its feed and its own health."""

    name: str
    crashes: int
    feed: FeedHealth
    health: Health

    def status_lines(self) -> list[str]:
        """The processor's own lines; the crash count, when there is one, goes on the first."""
        first, *rest = self.health.status_lines() or [""]
        crashes = f"  crashes {self.crashes}" if self.crashes else ""
        return [first + crashes, *rest]


@dataclass(frozen=True, slots=True)
class RejectedInputs:
    """Every input turned away, by where it came from (each is also logged where it happened)."""

    status_requests: int  # unknown requests on the status socket
    commands: int  # command messages rejected by the uplink (oversized, bad topic)
    commands_dropped: int  # command messages dropped because the command queue was full
    undecodable_rows: int  # outbox rows the uplink could not encode


# Above this share of its quota the outbox is about to evict: the agent is degraded.
BUFFER_DEGRADED_PCT = 90.0

# A Sparkplug node connected for longer than this and not born is degraded (docs/status.md): births
# wait for the Primary Host's STATE by design, and the host's retained STATE arrives right after
# the SUBSCRIBE, the NBIRTH at once after it, so a node still unborn after this is held. An
# offline STATE is a problem at once: the host said it, and nothing is published until it is back.
SPARKPLUG_BIRTH_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The agent in one word for monitoring: `ok`, or `degraded` with a line per problem.

    `edge-agent status` turns it into its exit code (0 ok, 1 degraded; 2 when no agent answers).
    A problem is the agent's own, the data it should deliver and does not, or delivers uncertain: a
    device down or its values frozen, an uplink that is not online, a stream the broker refuses, a
    Sparkplug node that is not born, every alarm line (the outbox quarantined, the clock not
    synchronised, the certificate expiring or expired...), an outbox close to full, a stalled loop.
    Never a detection in the plant: a leak event is the agent doing its job. docs/status.md lists
    them for monitoring; a new one goes there too.
    """

    state: str  # ok | degraded
    problems: tuple[str, ...]

    def status_lines(self) -> list[str]:
        return [self.state, *self.problems]


@dataclass(frozen=True, slots=True)
class StatusDocument:
    """The agent at one moment. Field names are the document's top-level keys."""

    agent: AgentStatus
    drivers: tuple[RunnerStatus, ...]
    pipeline: PipelineHealth
    buffer: BufferHealth | None  # None until the agent has measured its outbox once
    uplink: UplinkHealth
    processors: tuple[ProcessorStatus, ...]
    watchdog: WatchdogHealth | None  # None when systemd asked for no watchdog
    rejected: RejectedInputs
    commands: CommandCounts | None  # None without a signed command channel
    update: UpdateHealth | None = None  # releases and the last self-update
    clock: ClockHealth | None = None  # the clock's synchronisation
    certificate: CertificateHealth | None = None  # the device certificate and its renewal
    board: BoardStatus | None = None  # the board as the start found it; None: its ID cannot be read
    serial_ports: tuple[SerialPortStatus, ...] = ()  # every serial port in the config, as the start found it
    host: HostHealth | None = None  # the board's power, heat and card space; None until sampled
    state_backup: StateBackupHealth | None = None  # the learnt state sent to the centre

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values; `alarms` gathers the one-line conditions someone must act on.

        The lifecycle sections (board, update, ...) are sections of their own for scripts; people
        read their lines under the agent's, where `edge-agent status` prints them. A device's
        serial ports are read under it with `-v`: their lines follow its driver's."""
        agent = _read(self.agent)
        for section in (self.board, self.host, self.clock, self.certificate, self.update, self.state_backup):
            if section is not None:
                lines = section.status_lines()
                if section is self.certificate:
                    lines = _refused_by_the_broker(lines, self.certificate, self.uplink)
                agent["lines"] = agent["lines"] + lines
        return {
            "agent": agent,
            "drivers": [
                _read(d) | {"driver_lines": d.driver.status_lines() + self._port_lines(d.name)}
                for d in self.drivers
            ],
            "pipeline": _read(self.pipeline),
            "buffer": {} if self.buffer is None else _read(self.buffer),
            "uplink": _read(self.uplink),
            "processors": [_read(p) for p in self.processors],
            "alarms": self.alarm_lines(),
            "watchdog": None if self.watchdog is None else health_json(self.watchdog),
            "rejected": health_json(self.rejected),
            "commands": (
                None if self.commands is None else health_json(self.commands) | self.commands.flat_refusals()
            ),
            "update": None if self.update is None else _read(self.update),
            "clock": None if self.clock is None else _read(self.clock),
            "certificate": None if self.certificate is None else _read(self.certificate),
            "board": None if self.board is None else health_json(self.board),
            "serial_ports": [health_json(p) for p in self.serial_ports],
            "host": None if self.host is None else health_json(self.host),
            "state_backup": None if self.state_backup is None else _read(self.state_backup),
            "verdict": health_json(self.verdict()),
        }

    def _port_lines(self, device: str) -> list[str]:
        return [line for p in self.serial_ports if device in p.devices for line in p.status_lines()]

    def alarm_lines(self) -> list[str]:
        """The one-line conditions someone must act on (the outbox, the clock, the certificate)."""
        return [line for part in (self.buffer, self.clock, self.certificate) if part is not None
                for line in part.alarm_lines()]  # fmt: skip

    def verdict(self) -> Verdict:
        problems = [f"device {d.name} is down" for d in self.drivers if d.state == "down"]
        problems += [
            f"device {d.name} values frozen {units.duration(d.values_frozen_for_s)} (held upstream?): "
            "its readings are stored uncertain"
            for d in self.drivers
            if d.state == "up" and d.values_frozen_for_s is not None
        ]
        problems += [
            f"device {d.name}: {line}"
            for d in self.drivers
            if isinstance(d.driver, Problems)
            for line in d.driver.problems()
        ]
        if self.uplink.state != "online":
            problems.append(f"uplink {self.uplink.state} ({self.uplink.broker})")
        else:
            problems += _unborn(self.uplink, self.buffer)
        problems += _refused_streams(self.uplink)
        problems += self.alarm_lines()
        if self.buffer is not None and self.buffer.used_pct >= BUFFER_DEGRADED_PCT:
            problems.append(f"outbox {self.buffer.used_pct:.0f} % full")
        if self.host is not None:
            problems += self.host.problems()
        if self.watchdog is not None and self.watchdog.stalled:
            problems.append(f"stalled: {', '.join(self.watchdog.stalled)}")
        return Verdict("degraded" if problems else "ok", tuple(problems))


def _refused_by_the_broker(lines: list[str], cert: CertificateHealth, uplink: UplinkHealth) -> list[str]:
    """The cert line of a certificate valid by its dates that the broker refused at the last
    connection (revoked, another CA...): `cert     valid by date, refused by the broker: revoked`."""
    said = certificate_refused(uplink.last_error)
    head = f"cert     {cert.state}"
    if said is None or cert.state not in ("valid", "expiring") or not lines or not lines[0].startswith(head):
        return lines
    state = "valid by date" if cert.state == "valid" else cert.state
    return [f"cert     {state}, refused by the broker: {said}{lines[0][len(head) :]}", *lines[1:]]


# Refused streams named in the verdict's problem; the others are counted.
REFUSED_NAMED = 5


def _refused_streams(uplink: UplinkHealth) -> list[str]:
    """The problem of streams the broker refuses (an ACL, a quota): none of their rows reaches the
    centre while the uplink is otherwise fine. Names the streams, the broker's reason and the rows
    held back: `broker refuses stream pump-station (Not authorized (0x87)): 71 rows held back in
    the outbox, tried again with backoff`."""
    refused = uplink.refusals
    if not refused:
        return []
    reasons = ", ".join(dict.fromkeys(r.reason for r in refused))
    rows = sum(r.held_back for r in refused)
    # None held yet right after a reconnection: the outbox gives them again in a moment.
    held = f"{rows} rows held back in the outbox" if rows else None
    if len(refused) == 1:
        held = held or "its rows are kept in the outbox"
        return [f"broker refuses stream {refused[0].stream} ({reasons}): {held}, tried again with backoff"]
    held = held or "their rows are kept in the outbox"
    named = [f"{r.stream} {r.held_back}" for r in refused[:REFUSED_NAMED]]
    if len(refused) > REFUSED_NAMED:
        named.append(f"{len(refused) - REFUSED_NAMED} more")
    return [
        f"broker refuses {len(refused)} streams ({reasons}): {held} ({', '.join(named)}), "
        "tried again with backoff"
    ]


def _unborn(uplink: UplinkHealth, buffer: BufferHealth | None) -> list[str]:
    """The problem of a Sparkplug node that is connected and publishes nothing because it is not
    born: its Primary Host said it is offline (at once), or no STATE came from the host, or the
    births did not go out (past `SPARKPLUG_BIRTH_GRACE_S` since the connection came online)."""
    node = uplink.sparkplug
    if node is None or node.born:
        return []
    held = "nothing is published" + ("" if buffer is None else f", {buffer.rows} rows held in the outbox")
    host = node.primary_host_id
    why = "" if uplink.last_error is None else f" ({uplink.last_error})"
    if host is not None and node.host_online is False and node.host_state_ns is not None:
        since = units.timestamp(node.host_state_ns)
        return [
            f"waiting for Primary Host '{host}' (offline since {since}): {held}: check that the host "
            f"application (Primary Host ID '{host}') runs and is connected to {uplink.broker}"
        ]
    waited = uplink.online_for_s
    if waited is None or waited < SPARKPLUG_BIRTH_GRACE_S:
        return []
    if host is not None and not node.host_online:
        retained = (
            " (the broker keeps no retained messages: the STATE comes only when the host publishes it)"
            if node.broker_retains is False
            else ""
        )
        return [
            f"waiting for Primary Host '{host}': no valid STATE on spBv1.0/STATE/{host} in "
            f"{units.duration(waited)}{why}: {held}: check that the host application runs with "
            f"Primary Host ID '{host}' and is connected to {uplink.broker}{retained}"
        ]
    return [
        f"Sparkplug node {node.group_id}/{node.edge_node_id} not born {units.duration(waited)} after "
        f"connecting{why}: {held}"
    ]


def _read(section: Health) -> dict[str, Any]:
    """A section people read: its fields and its lines."""
    return health_json(section) | {"lines": section.status_lines()}
