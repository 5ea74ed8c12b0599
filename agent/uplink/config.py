"""The `[uplink.mqtt]` config section: where the broker is and how to talk to it, validated up front."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from water_edge.agent.uplink.servers import Server, parse_server
from water_edge.core.errors import UplinkError
from water_edge.core.hosts import Host
from water_edge.core.http_proxy import Proxy, parse_proxy
from water_edge.core.names import TOPIC_LEVEL_PATTERN, TOPIC_PREFIX_PATTERN
from water_edge.core.secrets import Secret, SecretRef
from water_edge.core.sizes import ByteSize


class TlsConfig(BaseModel):
    """TLS to the broker: the CA that signs the broker's certificate, optionally a client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: the system's trust store (a broker with a certificate from a public CA: AWS IoT Core,
    # HiveMQ Cloud, a utility's broker behind a public certificate).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (or neither)")
        return self


class RbeRule(BaseModel):
    """`[[uplink.rbe.tags]]`: the reporting rule of the tags whose `device/tag` name fits `match`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1, max_length=256)  # a glob: "plc1/pump*.flow", "*/level"
    deadband: float | None = Field(default=None, ge=0)
    deadband_pct: float | None = Field(default=None, ge=0)
    max_interval_s: float | None = Field(default=None, gt=0)


class RbeConfig(BaseModel):
    """`[uplink.rbe]`: report by exception (see `agent.uplink.rbe`); keys here are the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadband: float = Field(default=0.0, ge=0)
    deadband_pct: float = Field(default=0.0, ge=0)
    max_interval_s: float | None = Field(default=None, gt=0)
    # A change is preceded by the last value held back before it, when that differs (trends).
    send_previous: bool = True
    # First match wins; a key a rule leaves out comes from the defaults above.
    tags: tuple[RbeRule, ...] = ()


class SparkplugConfig(BaseModel):
    """`[uplink.sparkplug]`: the Edge Node's identity, its Primary Host, the historical backlog's pace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str | None = Field(default=None, pattern=TOPIC_LEVEL_PATTERN, max_length=64)  # default: site
    edge_node_id: str | None = Field(default=None, pattern=TOPIC_LEVEL_PATTERN, max_length=64)  # default: id
    primary_host_id: str | None = Field(default=None, pattern=TOPIC_LEVEL_PATTERN, max_length=64)
    # Historical (backlog) messages per second after a birth, beside the live data.
    backlog_rows_per_s: float = Field(default=50.0, gt=0, le=10_000)


# Validation context key: the caller makes `MqttConfig`'s checks across keys itself (the config
# loader, with the keys refused on their own left out), so the model does not.
CROSS_KEY_CHECKS_BY_CALLER: Final = "cross_key_checks_by_caller"


def _server_uri(uri: str) -> str:
    parse_server(uri)
    return uri


ServerUri = Annotated[str, AfterValidator(_server_uri)]


def _websocket_path(path: str) -> str:
    if not path.startswith("/") or any(not 0x21 <= ord(c) <= 0x7E for c in path):
        raise ValueError(
            'expected the broker\'s WebSocket path, starting with "/" and without spaces (e.g. "/mqtt")'
        )
    return path


# The headers of the WebSocket upgrade that paho writes itself; another value would break it.
_OWN_HEADERS = frozenset(("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"))
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HeaderTable(dict[str, str]):
    """`websocket_headers` as given, hashable as the rest of the frozen config is."""

    def __hash__(self) -> int:  # type: ignore[override]  # never changed once validated
        return hash(tuple(self.items()))


def _websocket_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not name or not set(name) <= _TOKEN:
            raise ValueError(f"{name!r} is no HTTP header name (letters, digits and - only, e.g. X-Api-Key)")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"{name} is set by the WebSocket upgrade itself and cannot be given")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(f"the value of {name} holds a control character (a line break?)")
    return HeaderTable(headers)


WebsocketPath = Annotated[str, AfterValidator(_websocket_path)]
WebsocketHeaders = Annotated[dict[str, str], AfterValidator(_websocket_headers)]


class MqttConfig(BaseModel):
    """Broker addresses, identity, session and flow-control settings of the MQTT uplink.

    The broker is either `servers` (URIs tried in order, sticky to the one that works; see
    `servers.py`) or `host`/`port` (a one-server list).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: Host | None = Field(default=None, min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    servers: tuple[ServerUri, ...] = Field(default=(), max_length=32)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    prefix: str = Field(default="water", pattern=TOPIC_PREFIX_PATTERN)
    username: str | None = None
    # A literal, or better a reference: { file = "/etc/edge-agent/mqtt.pass" } or { env = "VAR" }.
    password: Secret | None = None
    tls: TlsConfig | None = None
    max_inflight: int = Field(default=32, ge=1, le=1000)
    # Messages in flight and no PUBACK for this long: the broker is stuck; the connection is
    # dropped and the rows, still in the outbox, go again on the next one (JSON encoding).
    ack_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    lease_rows: int = Field(default=64, ge=1, le=10_000)
    # The broker's largest packet where it does not announce one (MQTT 3.1.1; cloud brokers publish
    # theirs: AWS IoT Core 128 KiB, Azure IoT Hub 256 KiB). Over MQTT 5 the smaller of this and the
    # announced one. A message over it is never sent: the broker would drop the connection for it.
    broker_max_packet_size: ByteSize | None = Field(default=None, ge=1024, le=268_435_460)
    # The status topic and the Last Will are retained. False for a broker that keeps no retained
    # messages (Mosquitto's `retain_available false`) over MQTT 3.1.1, which closes the connection
    # at a retained Will without saying why; over MQTT 5 the agent finds out itself (CONNACK 0x9A).
    retain: bool = True
    encoding: Literal["json", "sparkplug_b"] = "json"
    compression: Literal["none", "deflate", "zstd"] = "none"  # JSON only, announced in MQTT 5
    rbe: RbeConfig | None = None
    sparkplug: SparkplugConfig | None = None
    # MQTT over WebSockets (ws://, or wss:// with [uplink.tls]) for networks that let a gateway out
    # on 443 only; the default ports are then 80 and 443.
    transport: Literal["tcp", "websockets"] = "tcp"
    websocket_path: WebsocketPath = Field(default="/mqtt", max_length=1024)
    websocket_headers: WebsocketHeaders = Field(default_factory=HeaderTable, max_length=32)
    # An HTTP proxy the connection goes through (HTTP CONNECT; see `core/http_proxy.py`). Checked among the
    # checks across keys, whose messages never repeat the value: the URL may hold a password.
    proxy: str | None = None
    # The proxy user's password by reference, { file = "..." } or { env = "..." } (a literal goes in
    # the URL); the user name is the URL's: "http://gw17@proxy.corp:3128".
    proxy_password: SecretRef | None = None

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> Self:
        # The config loader makes these checks itself (`cross_key_problems`), beside the keys' own
        # errors: a model validator runs only once every key is valid.
        if not (info.context or {}).get(CROSS_KEY_CHECKS_BY_CALLER):
            found = cross_key_problems(self)
            if found:
                raise ValueError("; ".join(f"{key}: {message}" for key, message in found))
        return self

    def server_list(self) -> tuple[Server, ...]:
        """The brokers in the order they are tried (`host`/`port` as a one-server list)."""
        websockets = self.transport == "websockets"
        if self.servers:
            return tuple(parse_server(uri, websockets=websockets) for uri in self.servers)
        if self.host is None:
            raise UplinkError("no broker configured")  # the validator makes this unreachable
        tls = self.tls is not None
        port = self.port if "port" in self.model_fields_set or not websockets else 443 if tls else 80
        return (Server(self.host, port, tls),)

    def proxy_server(self) -> Proxy | None:
        """The HTTP proxy to go through, without its password when that is a reference
        (`ConnectOptions.from_config` is given it resolved)."""
        return None if self.proxy is None else parse_proxy(self.proxy)

    def resolved_proxy(self, proxy_password: str | None) -> Proxy | None:
        """The proxy with `proxy_password` (the resolved `proxy_password` reference) as its password."""
        proxy = self.proxy_server()
        if proxy is not None and proxy_password is not None:
            proxy = replace(proxy, password=proxy_password)
        return proxy

    def brokers_text(self) -> str:
        """The brokers for one-line summaries: `a:1883, b:1883`."""
        return ", ".join(server.address for server in self.server_list())

    def effective_rbe(self) -> RbeConfig | None:
        """Report by exception in force: `[uplink.rbe]`, or changes only (deadband 0) for Sparkplug,
        whose DATA messages carry only what changed; None when every reading is sent."""
        if self.rbe is None and self.encoding == "sparkplug_b":
            return RbeConfig()
        return self.rbe

    def effective_client_id(self, site: str, gateway: str) -> str:
        """The configured client id, or one derived from the site and gateway (stable across restarts)."""
        return self.client_id or f"edge-{site}-{gateway}"


def cross_key_problems(config: MqttConfig, refused: Collection[str] = ()) -> list[tuple[str, str]]:
    """(key, what is wrong) for each setting that contradicts another, every one of them.

    `refused`: keys refused on their own (their value in `config` is the default, or absent): a
    check that needs one of them is not made, lest it judge the default instead of what was
    written; a key merely given (servers and host) is judged all the same."""
    given = config.model_fields_set | set(refused)

    def valid(*keys: str) -> bool:
        return not set(keys) & set(refused)

    found: list[tuple[str, str]] = []
    if valid("compression", "encoding") and config.compression != "none" and config.encoding != "json":
        found.append(("compression", "compression applies to the JSON encoding only (Sparkplug B is binary)"))
    if valid("compression", "protocol") and config.compression != "none" and config.protocol != "5":
        found.append(
            ("compression", 'compression needs protocol = "5": the MQTT 5 content type announces it')
        )
    if valid("sparkplug", "encoding") and config.sparkplug is not None and config.encoding != "sparkplug_b":
        found.append(("sparkplug", '[uplink.sparkplug] is only used with encoding = "sparkplug_b"'))
    servers = config.servers if valid("servers") else ()
    if "servers" in given and (servers or not valid("servers")) and {"host", "port"} & given:
        found.append(("servers", "give either servers = [...] or host/port, not both"))
    if valid("servers", "host") and not config.servers and config.host is None:
        found.append(("servers", 'no broker: give servers = ["mqtt://host:1883", ...] or host = "..."'))
    parsed = [parse_server(uri, websockets=config.transport == "websockets") for uri in servers]
    twice = next((s.uri for i, s in enumerate(parsed) if s in parsed[:i]), None)
    if twice is not None:  # a failover to the same broker is no failover
        found.append(("servers", f"{twice} is listed twice"))
    kinds = {server.tls for server in parsed}
    if valid("tls") and config.tls is None and True in kinds:
        found.append(
            (
                "servers",
                "mqtts:// servers need [uplink.tls] (ca_file: the CA that signs the broker's "
                "certificate; without it, the system's trust store)",
            )
        )
    if valid("tls") and config.tls is not None and False in kinds:
        # A plain-text fallback would send the gateway's data and password in clear.
        found.append(("servers", "with [uplink.tls] every server must be mqtts:// (no plain-text fallback)"))
    low, high = config.reconnect_min_s, config.reconnect_max_s
    if valid("reconnect_min_s", "reconnect_max_s") and high < low:
        found.append(
            ("reconnect_max_s", f"reconnect_max_s must be >= reconnect_min_s (got {high:g} < {low:g})")
        )
    found += _route_problems(config, given, valid("transport"), valid("proxy"))
    password = config.password is not None or "password" in refused
    if valid("username") and password and config.username is None:
        found.append(("username", "password given without username"))
    return found


def _route_problems(
    config: MqttConfig, given: Collection[str], transport_valid: bool, proxy_valid: bool
) -> list[tuple[str, str]]:
    """The WebSocket and proxy keys that contradict each other, and a proxy URL that is no proxy's
    (`cross_key_problems`)."""
    found: list[tuple[str, str]] = []
    if transport_valid and config.transport != "websockets":
        found += [
            (key, f'{key} applies to transport = "websockets" only (got transport = "tcp")')
            for key in ("websocket_path", "websocket_headers")
            if key in given
        ]
    if not proxy_valid:  # refused on its own: its value here is the default, not what was written
        return found
    try:
        proxy = config.proxy_server()
    except ValueError as exc:
        return [*found, ("proxy", f"{exc} (the value is not shown: it may hold a password)")]
    if config.proxy_password is None:
        return found
    if proxy is None:
        found.append(("proxy_password", 'proxy_password without proxy = "http://user@host:port"'))
    elif proxy.username is None:
        found.append(
            ("proxy_password", "proxy_password needs the proxy's user name in proxy: http://user@host:port")
        )
    elif proxy.password is not None:
        found.append(("proxy", "the proxy's password is both in the URL and in proxy_password: give one"))
    return found
