"""The Sparkplug part of the uplink's health: the node's identity, its session, what commands did."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SparkplugHealth:
    """The `uplink.sparkplug` section of the status document."""

    group_id: str
    edge_node_id: str
    primary_host_id: str | None
    host_online: bool | None  # None without a Primary Host
    born: bool  # NBIRTH published on the current connection
    bdseq: int | None  # of the current (or last) connection
    seq: int | None  # the next seq on the current connection
    births: int
    rebirths: int
    device_births: int
    device_deaths: int
    history_rows: int  # published rows waiting to be released (QoS 0 rolling history)
    history_keep_s: float
    historical_rows: int  # backlog rows sent with is_historical
    suppressed_dead: int  # stand-in readings of dead devices not published
    commands_rebirth: int
    commands_refused: int  # writes by NCMD/DCMD: refused, use signed commands
    commands_unknown: int
    commands_invalid: int
    # False: the broker keeps no retained messages, so the Primary Host's STATE reaches this node
    # only when the host publishes it (None: not known, or no Primary Host).
    broker_retains: bool | None = None
    # The timestamp of the Primary Host's newest valid STATE, UTC ns (by the host's clock): since
    # when it is online or offline, as `host_online` says. None: none seen yet, or no Primary Host.
    host_state_ns: int | None = None
    # Times the backlog lane waited for the link to take what was queued (its flow control), and
    # how long in all: a link slower than `backlog_rows_per_s` x the size of a DATA message.
    backlog_holds: int = 0
    backlog_held_s: float = 0.0

    def status_lines(self) -> list[str]:
        host = (
            ""
            if self.primary_host_id is None
            else (f"  host {self.primary_host_id} {'online' if self.host_online else 'offline'}")
        )
        lines = [
            f"sparkplug {self.group_id}/{self.edge_node_id}  {'born' if self.born else 'not born'}"
            f"  bdSeq {self.bdseq}  births {self.births}  rebirths {self.rebirths}{host}",
            f"history {self.history_rows} rows (kept {self.history_keep_s:g} s)  historical sent "
            f"{self.historical_rows}  commands refused {self.commands_refused}"
            f" unknown {self.commands_unknown}",
        ]
        if self.backlog_holds:
            lines.append(
                f"backlog held for the link {self.backlog_holds} times ({self.backlog_held_s:.1f} s in all):"
                " the link carries less than backlog_rows_per_s"
            )
        if self.broker_retains is False:
            lines.append(
                "the broker keeps no retained messages: the host's STATE reaches this node only when "
                "the host publishes it (a Sparkplug broker keeps them)"
            )
        return lines
