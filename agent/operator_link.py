"""The operator console's MQTT connection to one gateway: it publishes signed commands on the
gateway's `cmd/` topics and reads the gateway's answers (`command_result` events) on its JSON
`events` topic, compressed or not, or in a Sparkplug B node's NDATA.

Shared by `edge-agent ca send-command` (agent.command_sender) and `ca send-state-restore`
(agent.restore_sender). An answer is matched to what was sent by the command's id, or, for a
refusal before the gateway checked the signature (it believes no id then), by the digest of the
payload it answers (`sha`, `sha_of`).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion

from water_edge.agent.uplink.compression import decompress
from water_edge.agent.uplink.sparkplug.proto import Payload
from water_edge.agent.uplink.sparkplug.topics import SparkplugTopics
from water_edge.core.errors import AgentError


class ConsoleError(AgentError):
    """Why the console could not do what it was asked, in words for the operator."""


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the operator's connection goes, and with which credentials."""

    host: str
    port: int = 8883
    ca_file: Path | None = None  # TLS when given (or with a client certificate)
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    connect_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Answer:
    """A gateway's `command_result`."""

    command_id: str  # "" for a refusal before the signature was checked (`unread`)
    status: str  # ok | refused | failed
    reason: str | None
    result: dict[str, Any]
    sha: str | None = None  # of the payload the gateway answers (`sha_of`); None from a release before it

    @property
    def unread(self) -> bool:
        """Refused before its signature was checked: the gateway believes nothing it says, its id
        included (too large, malformed, an unknown key, a bad signature)."""
        return not self.command_id and self.status != "ok"

    def answers(self, command_id: str, payload_sha: str) -> bool:
        """Whether this answers the command `command_id` whose payload's digest is `payload_sha`:
        by its id, or an unread refusal by the digest (only those very bytes give it, and they
        would not have been refused unread had they verified). From a gateway that names no digest
        (an older release), any unread refusal of the type is taken as this command's."""
        if self.command_id:
            return self.command_id == command_id
        return self.unread and (self.sha is None or self.sha == payload_sha)


def sha_of(payload: bytes) -> str:
    """What a gateway's answer says of the payload it answers (`detail.sha`)."""
    return hashlib.sha256(payload).hexdigest()[:16]


def answer_of(event: dict[str, Any], command_type: str) -> Answer | None:
    """The answer an event is, when it is a `command_result` for a command of `command_type`."""
    detail = event.get("detail")
    if event.get("kind") != "command_result" or not isinstance(detail, dict):
        return None
    command_id = detail.get("id")
    if detail.get("type") != command_type or not isinstance(command_id, str | None):
        return None
    result = detail.get("result")
    sha = detail.get("sha")
    return Answer(
        command_id or "",
        str(detail.get("status")),
        None if detail.get("reason") is None else str(detail.get("reason")),
        result if isinstance(result, dict) else {},
        sha if isinstance(sha, str) else None,
    )


def json_events(payload: bytes, content_type: str) -> list[Any]:
    """The events of a JSON uplink's `events` message (compressed or not)."""
    document = orjson.loads(decompress(content_type, payload))
    events = document.get("events") if isinstance(document, dict) else None
    return events if isinstance(events, list) else []


def sparkplug_events(payload: bytes, _content_type: str) -> list[Any]:
    """The events of a Sparkplug B node's NDATA: the values of its `Events/Event` metric, each a
    JSON document with a `kind` (found by that shape: NDATA names the metric by its alias only)."""
    found = []
    for metric in Payload.FromString(payload).metrics:
        if metric.WhichOneof("value") != "string_value":
            continue
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(metric.string_value)
            if isinstance(document, dict) and "kind" in document:
                found.append(document)
    return found


EventDecoder = Callable[[bytes, str], list[Any]]


class OperatorLink:
    """The operator's MQTT connection: publishes commands, collects the gateway's events."""

    def __init__(self, broker: Broker, events_topic: str, decode: EventDecoder, *, name: str) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events_topic = events_topic
        self._decode = decode
        self._subscribed = queue.Queue[bool]()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:12]}",
                             protocol=paho.MQTTv5)  # fmt: skip
        client.connect_timeout = broker.connect_timeout_s
        if broker.ca_file is not None or broker.cert_file is not None:
            try:
                client.tls_set(
                    ca_certs=None if broker.ca_file is None else str(broker.ca_file),
                    certfile=None if broker.cert_file is None else str(broker.cert_file),
                    keyfile=None if broker.key_file is None else str(broker.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConsoleError(f"cannot load the TLS files: {exc}") from exc
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._acks: dict[int, Any] = {}  # message id -> the broker's PUBACK reason
        self._acked = threading.Condition()
        self.client = client
        self.broker = broker

    @classmethod
    def to_gateway(cls, broker: Broker, base: str, sparkplug: str | None, *, name: str) -> OperatorLink:
        """A link reading the answers of the gateway at `base` (`{prefix}/{site}/{gateway}`): on its
        JSON `events` topic, or with `sparkplug` ("GROUP/NODE") in that node's NDATA."""
        if sparkplug is None:
            return cls(broker, f"{base}/events", json_events, name=name)
        group, _, node = sparkplug.partition("/")
        return cls(broker, SparkplugTopics(group, node).ndata, sparkplug_events, name=name)

    def open(self) -> None:
        where = f"{self.broker.host}:{self.broker.port}"
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise ConsoleError(f"cannot reach the broker {where}: {exc}") from exc
        self.client.loop_start()
        try:
            ok = self._subscribed.get(timeout=self.broker.connect_timeout_s)
        except queue.Empty:
            ok = False
        if not ok:
            self.close()
            raise ConsoleError(
                f"the broker {where} did not let this connection read {self.events_topic} within "
                f"{self.broker.connect_timeout_s:g} s: the gateway's answers come there (its ACL?)"
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK: a broker whose ACL does not let this
        console write the gateway's command topics says so (MQTT 5: 0x87), and that is said here
        rather than waited out as a gateway that does not answer."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConsoleError(f"cannot publish on {topic}: {paho.error_string(info.rc)}")
        timeout = self.broker.connect_timeout_s
        with self._acked:
            acked = self._acked.wait_for(lambda: info.mid in self._acks, timeout)
            reason = self._acks.pop(info.mid, None)
        if not acked:
            raise ConsoleError(f"the broker did not acknowledge the message on {topic} within {timeout:g} s")
        if reason is not None and reason.is_failure:
            raise ConsoleError(
                f"the broker refused the message on {topic}: {reason} (0x{reason.value:02X}); may this "
                "console's broker login write the gateway's cmd/ topics (its ACL)?"
            )

    def _on_connect(self, client: paho.Client, _u: Any, _flags: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            self._subscribed.put(False)
            return
        client.subscribe(self.events_topic, qos=1)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any = None) -> None:
        with self._acked:
            self._acks[mid] = reason
            self._acked.notify_all()

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, reasons: Any, _p: Any = None) -> None:
        self._subscribed.put(all(not r.is_failure for r in reasons))

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        content_type = getattr(msg.properties, "ContentType", "") or ""
        try:
            events = self._decode(bytes(msg.payload), content_type)
        except (ValueError, OSError, DecodeError):
            return  # not the documented payload: not an answer to us
        for event in events:
            if isinstance(event, dict):
                self.events.put(event)
