"""Pydantic models for the sections of the config file that are not a driver's own.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
A driver's `[[devices]]` section is validated by that driver's own model (see `drivers.base`), and
each `[[models.<kind>]]` section by that processor's own model (see `core.processor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.agent.remote.config import SecuritySection
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.writes import WritesSection
from water_edge.core.durations import Duration
from water_edge.core.hosts import split_host_port
from water_edge.core.log_flood import DEFAULT_BURST, DEFAULT_WINDOW_S
from water_edge.core.names import NAME_MAX_LENGTH, NAME_PATTERN
from water_edge.core.secrets import Secret
from water_edge.core.sizes import ByteSize

SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    site: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    id: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    state_dir: Path = Path("/var/lib/edge-agent")
    # A file holding this board's unique ID (agent.board_change); None: a Pi's CPU serial, else
    # /etc/machine-id.
    board_id_file: Path | None = None
    # A state directory whose file system keeps its writes in RAM (tmpfs, zram, an Overlay File
    # System) loses the outbox and the learnt state at every reboot: the agent says so and is
    # degraded, unless this says the loss is intended (a demo, a gateway that only relays).
    accept_state_in_ram: bool = False

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # A relative directory would follow the working directory: / under systemd, wherever the
        # engineer stood when testing by hand. The outbox must not move with it.
        if not value.is_absolute():
            raise ValueError("expected an absolute path, e.g. /var/lib/edge-agent")
        return value

    @field_validator("board_id_file")
    @classmethod
    def _absolute_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("expected an absolute path, e.g. /etc/edge-agent/board-id")
        return value


class BufferSection(_Section):
    # Relative paths are taken from gateway.state_dir.
    path: Path = Path("outbox.sqlite")
    # At most 1 PiB: the outbox keeps it in an SQLite integer, which a larger number overflows.
    max_bytes: ByteSize = Field(default=256 * 2**20, ge=2**20, le=2**50)
    # Rows older than this are evicted (telemetry first), whatever the quota; None: no age limit.
    max_age_s: float | None = Field(default=None, gt=0)
    # Caps the database file in SQLite pages (4 KiB), making "disk full" deterministic; None: off.
    max_page_count: int | None = Field(default=None, ge=16)
    synchronous: Literal["full", "normal"] = "full"
    # Readings are gathered for this long and committed in one transaction (SD-card wear).
    flush_interval_ms: int = Field(default=200, ge=10, le=10_000)
    batch_max_readings: int = Field(default=1000, ge=1, le=100_000)
    # Readings held in memory before the pipeline makes drivers wait for a commit.
    max_pending_readings: int = Field(default=200_000, ge=1000)


class ClockSection(_Section):
    """`[clock]`: where the agent learns whether the clock is synchronised (see `core.timesync`)."""

    # auto: the kernel (adjtimex), or systemd-timesyncd's flag file where adjtimex is refused;
    # none: never mark readings (a gateway with a trusted RTC and no NTP).
    sync_source: Literal["auto", "adjtimex", "timesyncd", "none"] = "auto"
    sync_flag_file: Path = Path("/run/systemd/timesync/synchronized")
    check_interval_s: float = Field(default=10.0, ge=0.1, le=3600)


class MetricsTls(_Section):
    """`[status.metrics_tls]`: the metrics endpoint over HTTPS (agent/metrics_http.py)."""

    cert_file: Path  # the endpoint's certificate (PEM; a chain: the certificate first)
    key_file: Path  # its private key (PEM, no passphrase), readable by the agent's user only
    # Scrapers must present a certificate issued by this CA (mutual TLS); None: any client.
    client_ca_file: Path | None = None
    # With client_ca_file: the common names a scraper's certificate may have (the CA may issue
    # others: the gateways' own, when it is the gateways' CA); empty: any the CA issued.
    client_names: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _names_need_a_ca(self) -> Self:
        if self.client_names and self.client_ca_file is None:
            raise ValueError("client_names needs client_ca_file: without it no client shows a certificate")
        return self


class MetricsAuth(_Section):
    """`[status.metrics_auth]`: HTTP basic authentication on the metrics endpoint."""

    # A colon ends the user name in basic authentication: none in it.
    username: str = Field(min_length=1, max_length=128, pattern=r"^[^:\s]+$")
    password: Secret  # { file = "..." } or { env = "..." }; a literal is allowed, not advised


class StatusSection(_Section):
    # Unix socket that `edge-agent status` and `tail` talk to; relative to gateway.state_dir.
    socket: Path = Path("status.sock")
    # The group the socket is given (0660), when it exists: who may read the status, and nothing
    # else (never the agent's own group, which may write the config and read the secrets).
    group: str = Field(default="edge-agent-status", min_length=1, max_length=64, pattern=r"^[^\s:/]+$")
    # "host:port" where the agent answers `GET /metrics` for Prometheus (agent/metrics_http.py),
    # e.g. "127.0.0.1:9464"; IPv6 in brackets, "[::1]:9464". None: off.
    metrics: str | None = None
    metrics_tls: MetricsTls | None = None
    metrics_auth: MetricsAuth | None = None

    @model_validator(mode="after")
    def _metrics_given(self) -> Self:
        for key in ("metrics_tls", "metrics_auth"):
            if getattr(self, key) is not None and self.metrics is None:
                raise ValueError(f'{key} is for the metrics endpoint: give metrics = "host:port" too')
        return self

    @field_validator("metrics")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    def metrics_address(self) -> tuple[str, int] | None:
        """`metrics` as the host (IPv6 without brackets) and port to listen on; None when off."""
        return None if self.metrics is None else split_host_port(self.metrics)


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # None: JSON when not on a terminal (systemd), readable text on one.
    json_lines: bool | None = Field(default=None, alias="json")
    # At most flood_burst lines of one kind (logger, event) per flood_window_s, the rest counted
    # (`core.log_flood`); 0 writes every line. At least a second: a flood starts a timer per window.
    flood_burst: int = Field(default=DEFAULT_BURST, ge=0, le=100_000)
    flood_window_s: float = Field(default=DEFAULT_WINDOW_S, ge=1, le=86_400)


class StateBackupSection(_Section):
    """`[state_backup]`: the learnt state sent to the centre by the agent itself (agent/state_backup.py)."""

    enabled: bool = True
    # How often the state is exported and, when it changed, sent; at least an hour.
    interval: Duration = 86_400.0
    # The first backup this long after the agent starts (at most a day).
    first_after: Duration = 600.0
    # An unchanged state is sent again after this long, in case the centre lost it.
    resend_after: Duration = 7 * 86_400.0
    # The archive's bytes in one MQTT message (plus a header of ~0.5 KiB): within the broker's
    # packet limit (AWS IoT Core 128 KiB).
    part_size: ByteSize = 64 * 1024
    # A larger archive is not sent (the status says why).
    max_size: ByteSize = 32 * 2**20
    # Also send the pumps' and machines' rolling feature histories (~75 MB a pump over 14 days at
    # 1 s): only for a recalibration on the new card; the calibrations are sent without them.
    histories: bool = False
    # A change to the learnt files (a recalibration, a night's baseline) is sent this long after it
    # is first seen instead of at the next `interval`; 0: only at the interval.
    after_change: Duration = 3600.0

    @field_validator("interval", "resend_after")
    @classmethod
    def _an_hour_to_a_year(cls, value: float) -> float:
        return _between(value, 3600, 366 * 86_400, "1 h ('1h')", "a year")

    @field_validator("first_after")
    @classmethod
    def _a_day(cls, value: float) -> float:
        return _between(value, 0, 86_400, "0", "a day ('24h')")

    @field_validator("after_change")
    @classmethod
    def _off_or_a_minute_to_a_day(cls, value: float) -> float:
        if value != 0 and not 60 <= value <= 86_400:
            raise ValueError("expected 0 (off), or 1 min ('1min') to a day ('24h')")
        return value

    @field_validator("part_size")
    @classmethod
    def _part(cls, value: int) -> int:
        if not 4 * 1024 <= value <= 16 * 2**20:
            raise ValueError("expected 4 KiB to 16 MiB, e.g. '64KiB'")
        return value

    @field_validator("max_size")
    @classmethod
    def _max(cls, value: int) -> int:
        if not 4 * 1024 <= value <= 2**30:
            raise ValueError("expected 4 KiB to 1 GiB, e.g. '32MiB'")
        return value


def _between(value: float, low: float, high: float, low_text: str, high_text: str) -> float:
    if not low <= value <= high:
        raise ValueError(f"expected at least {low_text} and at most {high_text}")
    return value


class ModelsSection(BaseModel):
    """`[models]`: one `[[models.<kind>]]` list per processor kind, kept raw here; the loader
    validates each list with that processor's own config model (unknown kinds included)."""

    # A model rather than a dict so that `models = "x"` keeps its error text ("a valid dictionary
    # or instance of ModelsSection").
    model_config = ConfigDict(extra="allow", frozen=True)


class AgentSection(_Section):
    """The whole file, with `devices` and `models` still raw: each device is validated by its
    driver's model, each `[[models.<kind>]]` table by its processor's."""

    schema_version: Literal[1]
    gateway: GatewaySection
    uplink: MqttConfig
    buffer: BufferSection = BufferSection()
    status: StatusSection = StatusSection()
    log: LogSection = LogSection()
    clock: ClockSection = ClockSection()
    security: SecuritySection = SecuritySection()
    writes: WritesSection = WritesSection()
    update: UpdateSection = UpdateSection()
    state_backup: StateBackupSection = StateBackupSection()
    models: ModelsSection = ModelsSection()
    devices: list[dict[str, Any]] = Field(default_factory=list)
