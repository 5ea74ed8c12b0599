"""The `[[devices]]` schema of an OPC UA server and its tags (pydantic; validated without I/O).

A tag names its variable either by NodeId (`node = "ns=2;s=pump1.flow"`, `"ns=2;i=5"`, or with
the namespace's URI, which survives a server restart that renumbers its namespaces:
`"nsu=urn:vendor:plc;s=pump1.flow"`) or by browse path below Objects (`path =
"PumpStation/Pump1/Flow"`, resolved when the driver opens; a segment may carry its namespace
index, `2:Flow`, and otherwise matches any namespace).
"""

from __future__ import annotations

import binascii
import ipaddress
import re
import struct
import uuid
from base64 import b64decode
from pathlib import Path
from typing import Final, Literal, Self

from asyncua import ua
from asyncua.ua.uaerrors import UaError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.hosts import check_host, check_port
from water_edge.core.names import NAME_PATTERN
from water_edge.core.patterns import explained
from water_edge.core.secrets import Secret
from water_edge.drivers.base import DeviceConfig

# OPC UA's names (the part after "#" of the policy URI). Basic256 and Basic128Rsa15 use SHA-1 and
# are deprecated by the OPC Foundation: refused (`_policy`).
SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
DEPRECATED_POLICIES: Final = ("Basic256", "Basic128Rsa15")
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
Mode = Literal["subscribe", "poll"]
DeadbandType = Literal["absolute", "percent"]

NODE_ID_PATTERN: Final = explained(
    r"^((ns=\d+|nsu=[^;]+);)?(i=\d+|s=.+|g=[0-9A-Fa-f-]{36}|b=[A-Za-z0-9+/=]+)$",
    "a NodeId: [ns=<index>; or nsu=<namespace URI>;] then i=<number>, s=<text>, g=<GUID> or "
    "b=<base64> (e.g. ns=2;s=pump1.flow, nsu=urn:vendor:plc;i=5)",
)
ENDPOINT_PATTERN: Final = explained(
    r"^opc\.tcp://(\[[^\]/]+\]|[^/:\[\]]+)(:\d+)?(/.*)?$",
    "an OPC UA endpoint opc.tcp://HOST[:PORT][/PATH] (e.g. opc.tcp://10.0.0.5:4840)",
)
_ENDPOINT_PARTS: Final = re.compile(r"^opc\.tcp://(\[(?P<v6>[^\]]+)\]|(?P<host>[^/:]+))(:(?P<port>\d+))?")
_NODE_ID: Final = re.compile(NODE_ID_PATTERN)
PATH_SEGMENT: Final = re.compile(r"^(\d+:)?[^/]+$")
UINT16_MAX: Final = 2**16 - 1
UINT32_MAX: Final = 2**32 - 1


def parse_node_id(text: str) -> ua.NodeId:
    """The NodeId `text` names (an ExpandedNodeId with `nsu=`), or a ValueError saying why no server
    can hold it: asyncua takes an index or identifier beyond what a request can carry, and text that
    is no base64 as the bytes of the text."""
    found = _NODE_ID.match(text)
    if found is None:
        raise ValueError("not a NodeId (e.g. ns=2;s=pump1.flow)")
    kind, value = found[3][0], found[3][2:]
    if kind == "g" and not _is_guid(value):
        raise ValueError(f"g={value} is not a GUID (e.g. g=09087e75-8e5e-499b-954f-f2a9603db28a)")
    if kind == "b" and not _is_base64(value):
        raise ValueError(f"b={value} is not base64 (e.g. b=cHVtcDE= for the bytes of 'pump1')")
    try:
        node = ua.NodeId.from_string(text)
    except UaError as exc:
        raise ValueError(f"not a NodeId: {exc}") from None
    if not 0 <= node.NamespaceIndex <= UINT16_MAX:
        raise ValueError(f"namespace index {node.NamespaceIndex} is not in 0..{UINT16_MAX}")
    if kind == "i" and not 0 <= int(value) <= UINT32_MAX:
        raise ValueError(f"numeric identifier i={value} is not in 0..{UINT32_MAX}")
    try:
        node.to_binary()
    except struct.error as exc:  # what the checks above leave out and this asyncua cannot send
        raise ValueError(f"cannot be sent in a request: {exc}") from None
    return node


def _is_guid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _is_base64(text: str) -> bool:
    try:
        b64decode(text, validate=True)
    except binascii.Error:
        return False
    return True


class Deadband(BaseModel):
    """Report a change only when it exceeds `value` (absolute, or percent of the EURange)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: DeadbandType = "absolute"
    value: float = Field(gt=0)


class OpcUaTag(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    node: str | None = Field(default=None, pattern=NODE_ID_PATTERN, max_length=4096)
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    # Empty: the unit comes from the variable's EngineeringUnits property, if it has one.
    unit: str = Field(default="", max_length=32)
    sampling_interval_ms: float | None = Field(default=None, ge=0, le=86_400_000)
    deadband: Deadband | None = None

    @field_validator("node")
    @classmethod
    def _node_id(cls, node: str | None) -> str | None:
        if node is not None:
            parse_node_id(node)
        return node

    @model_validator(mode="after")
    def _check_address(self) -> Self:
        if (self.node is None) == (self.path is None):
            raise ValueError(
                f"tag {self.name!r}: give exactly one of 'node' (a NodeId such as \"ns=2;s=pump1.flow\") "
                "or 'path' (a browse path below Objects such as \"PumpStation/Pump1/Flow\")"
            )
        if self.path is not None:
            segments = self.path.strip("/").split("/")
            if not all(PATH_SEGMENT.match(s) for s in segments):
                raise ValueError(f"tag {self.name!r}: path {self.path!r} has an empty segment")
        return self


class OpcUaConfig(DeviceConfig):
    """An OPC UA server (a PLC, SCADA server or gateway)."""

    kind: Literal["opcua"]
    endpoint: str = Field(pattern=ENDPOINT_PATTERN, max_length=1024)
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode = "None"
    # PEM or DER files; the client certificate's URI (SAN) is used as the application URI.
    certificate: Path | None = None
    private_key: Path | None = None
    # Pin the server's certificate; without it the certificate the server presents is used.
    server_certificate: Path | None = None
    username: str | None = Field(default=None, min_length=1, max_length=256)
    # A literal, or a reference: { file = "/etc/edge-agent/opcua.pass" } or { env = "VAR" }.
    password: Secret | None = None
    mode: Mode = "subscribe"

    @field_validator("security_policy", mode="before")
    @classmethod
    def _policy(cls, value: object) -> object:
        if value in DEPRECATED_POLICIES:
            raise ValueError(
                f"{value} is deprecated by the OPC Foundation (SHA-1) and not supported: offer "
                "Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss on the server"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _host_and_port(cls, endpoint: str) -> str:
        parts = _ENDPOINT_PARTS.match(endpoint)
        if parts is None:  # the pattern, checked first, has said so
            return endpoint
        if parts["v6"] is not None:
            try:
                ipaddress.IPv6Address(parts["v6"])
            except ValueError:
                words = f"[{parts['v6']}] is not an IPv6 address (a name or IPv4 address goes unbracketed)"
                raise ValueError(words) from None
        else:
            check_host(parts["host"])
        if parts["port"] is not None:
            check_port(parts["port"])
        return endpoint

    def endpoint_text(self) -> str:
        return self.endpoint

    def point_count(self) -> int:
        return len(self.tags)

    def tag_names(self) -> frozenset[str]:
        return frozenset(tag.name for tag in self.tags)

    def frozen_check_note(self) -> str | None:
        if self.frozen_after_s is None or self.mode != "subscribe":
            return None
        return (
            "a subscription reports only changes: values that stop changing send nothing, and "
            'nothing is judged; use mode = "poll" for this check (stale_after_ms notices a '
            "subscription gone silent)"
        )

    publishing_interval_ms: float = Field(default=1000, gt=0, le=3_600_000)
    sampling_interval_ms: float = Field(default=1000, ge=0, le=86_400_000)
    # Notifications the server may queue per item between two publishes (1 = latest only).
    queue_size: int = Field(default=1, ge=1, le=10_000)
    session_timeout_ms: int = Field(default=60_000, ge=1000, le=3_600_000)
    request_timeout_ms: int = Field(default=5000, ge=100, le=600_000)
    # A subscription that delivers nothing (not even a keep-alive) for this long is lost.
    stale_after_ms: int | None = Field(default=None, ge=1000, le=3_600_000)
    # A value whose device timestamp is further than this from the gateway's clock when it arrives
    # (a PLC clock years off, reset to 1970) is stamped with its arrival time instead.
    clock_tolerance_ms: int = Field(default=300_000, ge=1000, le=315_576_000_000)
    # Items per CreateMonitoredItems / Read request (servers limit this; 1000 is common).
    max_items_per_request: int = Field(default=1000, ge=1, le=100_000)
    tags: list[OpcUaTag] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [t.name for t in self.tags]
        dupes = sorted({n for i, n in enumerate(names) if n in names[:i]})
        if dupes:
            raise ValueError(f"duplicate tag names: {', '.join(dupes)}")
        secure = self.security_policy != "None"
        if secure != (self.security_mode != "None"):
            raise ValueError(
                'security_policy and security_mode go together: policy "None" with mode "None", '
                'or another policy ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss") '
                'with mode "Sign" or "SignAndEncrypt"'
            )
        if secure and (self.certificate is None or self.private_key is None):
            raise ValueError(
                f"security_policy {self.security_policy!r} needs 'certificate' and 'private_key' "
                "(the client's certificate and key files)"
            )
        if (self.password is not None) and self.username is None:
            raise ValueError("'password' given without 'username'")
        return self


__all__ = ["Deadband", "OpcUaConfig", "OpcUaTag", "parse_node_id"]
