"""The agent's health for Prometheus: the status document in the text exposition format
(docs/status.md#prometheus), for `edge-agent status --prometheus` and `GET /metrics`
(`metrics_http`).

`exposition(snapshot)` renders the document `Agent.snapshot()` returns (what the status socket
serves, secrets already cut out) as metric families, built at each scrape by a custom collector
and written by `prometheus_client` (its escaping, number formatting and OpenMetrics variant): names
`edge_agent_*`, base units (seconds, bytes, ratios 0-1), `_total` for counters; labels only from
things a site has few of (devices, processors and the parts they watch, states), never tag names.
A value the document does not have (`null`, a section that does not apply, the outbox not measured
yet) is left out, never written as NaN or 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, get_args

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from water_edge.agent.identity_keeper import CertState
from water_edge.agent.supervisor import DriverState
from water_edge.agent.uplink.state import ConnState

# The states each state gauge always carries (one series each, 1 for the current one), so that an
# alert on `state="down"` has a series to compare even while the device is up.
DEVICE_STATES: Final = get_args(DriverState)
UPLINK_STATES: Final = tuple(state.value for state in ConnState)
CERTIFICATE_STATES: Final = get_args(CertState)
VERDICT_STATES: Final = ("ok", "degraded")
# A processor's health lists the parts it watches under one of these keys, each with a `state`.
PROCESSOR_PARTS: Final = ("pumps", "sensors", "districts")

# --- the renderer ---------------------------------------------------------------------------------


class _Families:
    """Metric families in the order first used; a family is created by its first sample, so one
    whose values are all missing is left out whole."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())

    def gauge(self, name: str, doc: str, value: Any, **labels: str) -> None:
        self._add(GaugeMetricFamily, name, doc, value, labels)

    def counter(self, name: str, doc: str, value: Any, **labels: str) -> None:
        self._add(CounterMetricFamily, name, doc, value, labels)

    def states(self, name: str, doc: str, current: Any, known: Iterable[str], **labels: str) -> None:
        """One series per state, 1 for `current` (added when it is not among `known`)."""
        if not isinstance(current, str):
            return
        for state in dict.fromkeys((*known, current)):
            self.gauge(name, doc, int(state == current), **labels, state=state)

    def info(self, name: str, doc: str, labels: Mapping[str, Any]) -> None:
        """`<name>_info` = 1 with `labels` (one series per call)."""
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = InfoMetricFamily(name, doc, labels=[])
        family.add_metric([], {k: str(v) for k, v in labels.items()})  # type: ignore[attr-defined]

    def _add(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        doc: str,
        value: Any,
        labels: dict[str, str],
    ) -> None:
        number = _number(value)
        if number is None:
            return
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, doc, labels=list(labels))
        family.add_metric([str(v) for v in labels.values()], number)  # type: ignore[attr-defined]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and not math.isnan(value):  # NaN: not a value the document has
        return float(value)
    return None


# A section's fields as metrics: (field, metric name after the section's prefix, how, help).
# how: "counter" and "gauge" as they are; "flag" true/false as 1/0; "ns" nanoseconds since the
# epoch as seconds; "ms" milliseconds as seconds; "pct" a percentage as a ratio 0-1; "set" 1 when
# the field holds something, 0 when it is null.
Field = tuple[str, str, str, str]

DEVICE_FIELDS: Final[tuple[Field, ...]] = (
    ("poll_interval_ms", "poll_interval_seconds", "ms", "The device's poll interval"),
    ("polls", "polls_total", "counter", "Polls of the device since the agent started"),
    ("readings", "readings_total", "counter", "Readings taken from the device since the agent started"),
    ("bad_readings", "bad_readings_total", "counter", "Readings of quality bad since the agent started"),
    (
        "failures",
        "failures_total",
        "counter",
        "Failed polls (the device did not answer) since the agent started",
    ),
    ("reconnects", "reconnects_total", "counter", "Times the device's connection was opened again"),
    ("overruns", "overruns_total", "counter", "Polls that could not keep the poll rate"),
    ("crashes", "crashes_total", "counter", "Unexpected exceptions from the device's driver (a bug)"),
    ("last_read_ns", "last_read_timestamp_seconds", "ns", "When the device was last read, Unix time"),
    ("last_read_age_s", "last_read_age_seconds", "gauge", "Seconds since the device was last read"),
    ("down_for_s", "down_for_seconds", "gauge", "Seconds the device has been down (only while down)"),
    (
        "values_frozen_for_s",
        "values_frozen_seconds",
        "gauge",
        "Seconds the device's values have not changed while it answers (only while frozen)",
    ),
)

PIPELINE_FIELDS: Final[tuple[Field, ...]] = (
    ("readings_in", "readings_in_total", "counter", "Readings handed to the pipeline"),
    ("committed_readings", "committed_readings_total", "counter", "Readings committed to the outbox"),
    ("committed_events", "committed_events_total", "counter", "Events committed to the outbox"),
    ("append_errors", "append_errors_total", "counter", "Failed commits to the outbox"),
    (
        "dropped_readings",
        "dropped_readings_total",
        "counter",
        "Readings dropped from memory after failed commits (past max_pending_readings)",
    ),
    (
        "unstorable",
        "unstorable_total",
        "counter",
        "Readings and events the outbox could not store as given (sent as bad)",
    ),
    ("pending", "pending", "gauge", "Readings and events waiting in memory for a commit"),
)

BUFFER_FIELDS: Final[tuple[Field, ...]] = (
    ("rows", "rows", "gauge", "Rows (messages) in the outbox, not yet acknowledged"),
    ("readings", "readings", "gauge", "Readings in the outbox, not yet acknowledged"),
    ("bytes", "bytes", "gauge", "Bytes the outbox holds"),
    ("max_bytes", "max_bytes", "gauge", "The outbox's quota ([buffer] max_bytes)"),
    ("used_pct", "used_ratio", "pct", "Share of the quota used, 0-1 (the verdict is degraded from 0.9)"),
    (
        "oldest_age_s",
        "oldest_age_seconds",
        "gauge",
        "Age of the oldest row not acknowledged (none when empty)",
    ),
    (
        "evicted_rows",
        "evicted_rows_total",
        "counter",
        "Rows removed to keep within the quota (kept across restarts)",
    ),
    (
        "evicted_readings",
        "evicted_readings_total",
        "counter",
        "Readings removed to keep within the quota (kept across restarts)",
    ),
    (
        "expired_rows",
        "expired_rows_total",
        "counter",
        "Rows removed past [buffer] max_age_s (kept across restarts)",
    ),
    (
        "expired_readings",
        "expired_readings_total",
        "counter",
        "Readings removed past [buffer] max_age_s (kept across restarts)",
    ),
    (
        "disk_full",
        "disk_full_total",
        "counter",
        "Times the outbox found the disk full (kept across restarts)",
    ),
    ("quarantined", "quarantined", "set", "1 when a corrupt outbox was moved aside at start"),
    ("read_only", "read_only", "set", "1 while the card under the state directory takes no writes"),
    (
        "read_only_for_s",
        "read_only_seconds",
        "gauge",
        "Seconds the card has been read-only (only while it is)",
    ),
    (
        "not_durable_readings",
        "not_durable_readings_total",
        "counter",
        "Readings since start that went to the outbox in memory only, not on the card",
    ),
    (
        "memory_rows",
        "memory_rows",
        "gauge",
        "Rows held in memory now (lost if the agent stops before they are sent)",
    ),
)

UPLINK_FIELDS: Final[tuple[Field, ...]] = (
    ("connected", "connected", "flag", "1 while connected to the broker"),
    ("published", "published_total", "counter", "Messages published since the agent started"),
    ("acked", "acked_total", "counter", "Messages the broker acknowledged since the agent started"),
    ("readings_acked", "readings_acked_total", "counter", "Readings in acknowledged messages"),
    ("published_live", "published_live_total", "counter", "Messages published from the live lane"),
    ("published_backlog", "published_backlog_total", "counter", "Messages published from the backlog"),
    ("inflight", "inflight", "gauge", "Messages published and not yet acknowledged"),
    ("connections", "connections_total", "counter", "Times the connection came online"),
    ("reconnects", "reconnects_total", "counter", "Connection attempts after the first"),
    ("refused", "refused_total", "counter", "Connections the broker refused (CONNACK failure)"),
    ("rejected", "rejected_total", "counter", "Publishes the broker rejected"),
    ("encode_errors", "encode_errors_total", "counter", "Outbox rows that could not be encoded"),
    ("ack_errors", "ack_errors_total", "counter", "Acknowledgements with an error"),
    ("ack_timeouts", "ack_timeouts_total", "counter", "Connections dropped for a PUBACK that did not come"),
    (
        "taken_over",
        "taken_over_total",
        "counter",
        "Connections closed because another client took the client id",
    ),
    ("failovers", "failovers_total", "counter", "Times the uplink moved to another server"),
    ("refused_streams", "refused_streams", "gauge", "Streams whose topic the broker refuses"),
    ("held_back", "held_back_rows", "gauge", "Rows of refused streams kept in the outbox"),
    ("online_for_s", "online_for_seconds", "gauge", "Seconds the uplink has been online (only while online)"),
    (
        "down_for_s",
        "down_for_seconds",
        "gauge",
        "Seconds the uplink has not been online (only while it is not)",
    ),
    ("last_ack_ns", "last_ack_timestamp_seconds", "ns", "When the broker last acknowledged, Unix time"),
)

SPARKPLUG_FIELDS: Final[tuple[Field, ...]] = (
    ("born", "born", "flag", "1 while the Sparkplug node is born"),
    ("host_online", "host_online", "flag", "1 while the Primary Host's STATE says online"),
)

FEED_FIELDS: Final[tuple[Field, ...]] = (
    ("held_readings", "held_readings", "gauge", "Readings waiting in the processor's feed"),
    ("delivered_readings", "delivered_readings_total", "counter", "Readings delivered to the processor"),
    (
        "dropped_readings",
        "dropped_readings_total",
        "counter",
        "Readings the processor did not keep up with (the outbox still has them)",
    ),
)

CERTIFICATE_FIELDS: Final[tuple[Field, ...]] = (
    (
        "not_before_ns",
        "not_before_timestamp_seconds",
        "ns",
        "The device certificate is valid from, Unix time",
    ),
    ("not_after_ns", "not_after_timestamp_seconds", "ns", "The device certificate expires at, Unix time"),
    ("renew_at_ns", "renew_at_timestamp_seconds", "ns", "When the agent renews the certificate, Unix time"),
    ("renewals", "renewals_total", "counter", "Certificate renewals since the agent started"),
    (
        "failed_attempts",
        "failed_attempts",
        "gauge",
        "Failed enrolment or renewal attempts since the last success",
    ),
)

CLOCK_FIELDS: Final[tuple[Field, ...]] = (
    (
        "synchronised",
        "synchronised",
        "flag",
        "1 while the clock is synchronised (none when it cannot be known)",
    ),
    ("offset_ms", "offset_seconds", "ms", "The clock's offset from its time source"),
    ("maxerror_ms", "maxerror_seconds", "ms", "The kernel's bound on the clock's error"),
    (
        "marked_readings",
        "marked_readings_total",
        "counter",
        "Readings marked uncertain: clock not synchronised",
    ),
    (
        "restamped_readings",
        "restamped_readings_total",
        "counter",
        "Of those, readings moved once the time was known",
    ),
)

HOST_FIELDS: Final[tuple[Field, ...]] = (
    ("temperature_c", "temperature_celsius", "gauge", "The board's CPU temperature"),
    ("undervoltage_now", "undervoltage", "flag", "1 while the firmware sees the supply under-voltage"),
    (
        "undervoltage_since_boot",
        "undervoltage_since_boot",
        "flag",
        "1 when the firmware saw an under-voltage since the board booted",
    ),
    ("throttled_now", "throttled", "flag", "1 while the CPU is slowed or capped (heat or power)"),
    ("free_bytes", "filesystem_free_bytes", "gauge", "Free space on the file system of the state directory"),
    ("size_bytes", "filesystem_size_bytes", "gauge", "Size of the file system of the state directory"),
    (
        "storage_wear_pct",
        "storage_wear_ratio",
        "pct",
        "The eMMC's own estimate of its rated life used (1.1: past it); none for SD cards",
    ),
    (
        "state_in_ram",
        "state_in_ram",
        "set",
        "1 when the state directory's file system keeps its writes in RAM: lost at every reboot",
    ),
)

STATE_BACKUP_FIELDS: Final[tuple[Field, ...]] = (
    ("age_s", "age_seconds", "gauge", "Since the centre acknowledged the last backup of the learnt state"),
    ("failures", "failures_total", "counter", "State backups that failed since the agent started"),
)

WATCHDOG_FIELDS: Final[tuple[Field, ...]] = (
    ("interval_s", "interval_seconds", "gauge", "The systemd watchdog's interval"),
    ("pings", "pings_total", "counter", "systemd watchdog pings sent"),
    ("withheld", "withheld_total", "counter", "Watchdog pings withheld: a loop had not progressed"),
)


def _fields(out: _Families, section: Any, prefix: str, fields: Iterable[Field], **labels: str) -> None:
    if not isinstance(section, Mapping):
        return
    for key, name, how, doc in fields:
        if key not in section:
            continue
        value = section[key]
        if how == "flag":
            value = int(value) if isinstance(value, bool) else None
        elif how == "set":
            value = int(value is not None)
        elif how == "ns":
            value = _scaled(value, 1e9)
        elif how == "ms":
            value = _scaled(value, 1e3)
        elif how == "pct":
            value = _scaled(value, 1e2)
        if how == "counter":
            out.counter(f"{prefix}_{name}", doc, value, **labels)
        else:
            out.gauge(f"{prefix}_{name}", doc, value, **labels)


def _scaled(value: Any, divisor: float) -> float | None:
    number = _number(value)
    return None if number is None else number / divisor


# The document as the agent holds it (tuples where the JSON has arrays) or as read back from JSON.
def _section(snapshot: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = snapshot.get(key)
    return value if isinstance(value, Mapping) else {}


def _entries(snapshot: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = snapshot.get(key)
    if not isinstance(value, list | tuple):
        return []
    return [e for e in value if isinstance(e, Mapping) and isinstance(e.get("name"), str)]


VERDICT_HELP: Final = "The agent in one word (`edge-agent status`'s exit code): 1 for the current state"


def _agent(out: _Families, snap: Mapping[str, Any]) -> None:
    agent = _section(snap, "agent")
    if agent:
        labels = {key: agent.get(key, "") for key in ("version", "site", "gateway")}
        out.info("edge_agent", "The agent: its version, site and gateway (always 1)", labels)
    out.gauge("edge_agent_uptime_seconds", "Seconds since the agent started", agent.get("uptime_s"))
    out.gauge(
        "edge_agent_start_time_seconds",
        "When the agent started, Unix time",
        _scaled(agent.get("started_ns"), 1e9),
    )
    verdict = _section(snap, "verdict")
    out.states("edge_agent_verdict", VERDICT_HELP, verdict.get("state"), VERDICT_STATES)
    for key, name, doc in (
        ("problems", "edge_agent_problems", "Problems that make the verdict degraded"),
        ("alarms", "edge_agent_alarms", "Conditions someone must act on (the status document's alarms)"),
    ):
        lines = (verdict if key == "problems" else snap).get(key)
        if isinstance(lines, list | tuple):
            out.gauge(name, doc, len(lines))


def _devices(out: _Families, snap: Mapping[str, Any]) -> None:
    for d in _entries(snap, "drivers"):
        device = str(d["name"])
        out.info(
            "edge_agent_device",
            "An enabled device and its driver kind (always 1)",
            {"device": device, "kind": d.get("kind", "")},
        )
        state = d.get("state")
        if isinstance(state, str):
            out.gauge(
                "edge_agent_device_up",
                "1 while the device answers, else 0",
                int(state == "up"),
                device=device,
            )
        out.states(
            "edge_agent_device_state",
            "The device's state: 1 for the current one",
            state,
            DEVICE_STATES,
            device=device,
        )
        _fields(out, d, "edge_agent_device", DEVICE_FIELDS, device=device)
        driver = d.get("driver")
        not_after = driver.get("client_certificate_not_after_ns") if isinstance(driver, Mapping) else None
        if isinstance(not_after, int):
            out.gauge(
                "edge_agent_device_certificate_not_after_timestamp_seconds",
                "The client certificate the device is reached with (OPC UA) expires at, Unix time",
                not_after / 1e9,
                device=device,
            )


def _uplink(out: _Families, snap: Mapping[str, Any]) -> None:
    u = _section(snap, "uplink")
    if isinstance(u.get("broker"), str):
        out.info("edge_agent_uplink", "The MQTT server in use (always 1)", {"server": u["broker"]})
    out.states(
        "edge_agent_uplink_state", "The uplink's state: 1 for the current one", u.get("state"), UPLINK_STATES
    )
    _fields(out, u, "edge_agent_uplink", UPLINK_FIELDS)
    _fields(out, u.get("sparkplug"), "edge_agent_uplink_sparkplug", SPARKPLUG_FIELDS)


def _processors(out: _Families, snap: Mapping[str, Any]) -> None:
    for p in _entries(snap, "processors"):
        name = str(p["name"])
        out.counter(
            "edge_agent_processor_crashes_total",
            "Times the processor crashed and was restarted",
            p.get("crashes"),
            processor=name,
        )
        _fields(out, p.get("feed"), "edge_agent_processor_feed", FEED_FIELDS, processor=name)
        health = p.get("health")
        for part, state in _part_states(name, health if isinstance(health, Mapping) else {}):
            out.gauge(
                "edge_agent_processor_state",
                "The state of each part a processor watches (a pump, hydrophone, district, machine); "
                "1 for the current one",
                1,
                processor=name,
                part=part,
                state=state,
            )


def _part_states(name: str, health: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(part, state) of what a processor watches: its own `state` (a machine), and each entry with
    a `state` under `pumps`, `sensors` or `districts`."""
    if isinstance(health.get("state"), str):
        yield str(health.get("machine") or name), health["state"]
    for key in PROCESSOR_PARTS:
        parts = health.get(key)
        if isinstance(parts, Mapping):
            for part, entry in parts.items():
                if isinstance(entry, Mapping) and isinstance(entry.get("state"), str):
                    yield str(part), entry["state"]


def _lifecycle(out: _Families, snap: Mapping[str, Any]) -> None:
    cert = _section(snap, "certificate")
    out.states(
        "edge_agent_certificate_state",
        "The device certificate's state: 1 for the current one",
        cert.get("state"),
        CERTIFICATE_STATES,
    )
    _fields(out, cert, "edge_agent_certificate", CERTIFICATE_FIELDS)
    _fields(out, snap.get("clock"), "edge_agent_clock", CLOCK_FIELDS)
    _fields(out, snap.get("host"), "edge_agent_host", HOST_FIELDS)
    _fields(out, snap.get("state_backup"), "edge_agent_state_backup", STATE_BACKUP_FIELDS)
    watchdog = _section(snap, "watchdog")
    _fields(out, watchdog, "edge_agent_watchdog", WATCHDOG_FIELDS)
    if isinstance(stalled := watchdog.get("stalled"), list | tuple):
        out.gauge(
            "edge_agent_watchdog_stalled_loops",
            "Loops that had not progressed at the last check",
            len(stalled),
        )
    for key, value in _section(snap, "rejected").items():
        out.counter(
            "edge_agent_rejected_total", "Inputs turned away, by where they came from", value, input=key
        )
    commands = _section(snap, "commands")
    for key in ("ok", "failed", "refused"):
        out.counter("edge_agent_commands_total", "Signed commands by result", commands.get(key), result=key)
    by_reason = commands.get("refused_by_reason")
    for reason, count in (by_reason if isinstance(by_reason, Mapping) else {}).items():
        out.counter(
            "edge_agent_commands_refused_total",
            "Signed commands refused, by reason",
            count,
            reason=str(reason),
        )


class _Snapshot(Collector):
    """One status document as metric families, built when the exposition asks for them."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        out = _Families()
        snap = self._snapshot
        _agent(out, snap)
        _devices(out, snap)
        _fields(out, snap.get("pipeline"), "edge_agent_pipeline", PIPELINE_FIELDS)
        _fields(out, snap.get("buffer"), "edge_agent_buffer", BUFFER_FIELDS)  # {} until measured once
        _uplink(out, snap)
        _processors(out, snap)
        _lifecycle(out, snap)
        return list(out)


def exposition(snapshot: Mapping[str, Any], accept: str = "") -> tuple[bytes, str]:
    """The status document as metrics, and its content type: the text format 0.0.4, or
    OpenMetrics when `accept` (a scraper's Accept header) asks for it."""
    encoder, content_type = choose_encoder(accept)
    return encoder(_Snapshot(snapshot)), content_type


def exposition_text(snapshot: Mapping[str, Any]) -> str:
    """The status document in the text format 0.0.4 (`edge-agent status --prometheus`)."""
    return generate_latest(_Snapshot(snapshot)).decode()


def no_agent_text(error: str) -> str:
    """What `status --prometheus` prints when no agent answers: the verdict `down`, as `--json`
    says it, so that a textfile collector's file says so instead of keeping the last figures."""
    out = _Families()
    out.states("edge_agent_verdict", VERDICT_HELP, "down", VERDICT_STATES)
    comment = " ".join(error.split())
    return f"# edge-agent: {comment}\n" + generate_latest(_Listed(list(out))).decode()


class _Listed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
