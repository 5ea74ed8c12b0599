"""Device side of enrolment over MQTT: connect with the claim certificate (first enrolment) or the
current one (renewal), send the CSR, install the certificate that comes back. Blocking (a one-off);
run it in a thread from async code.

The request goes to `{prefix}/{CN of the connecting certificate}/csr`, the only enrolment topic the
shipped broker ACL lets that certificate use (see `enrol_protocol`).

The connection takes the uplink's way out (`ClaimRoute`): a gateway whose network lets it out only
through the corporate HTTP proxy, or on 443 over WebSockets, enrols through the same proxy and
transport, or it could never enrol where it is installed."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from water_edge.core.hosts import host_port
from water_edge.core.http_proxy import Proxy, tunnel
from water_edge.provisioning.config import ClaimSection, IdentitySection
from water_edge.provisioning.enrol_protocol import cert_topic, csr_topic
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity, certificate_name

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ClaimRoute:
    """How an enrolment connection reaches its broker: the uplink's transport, and its HTTP proxy
    with the password resolved (`[uplink] transport`, `websocket_path`, `websocket_headers`, `proxy`)."""

    transport: Literal["tcp", "websockets"] = "tcp"
    websocket_path: str = "/mqtt"
    websocket_headers: tuple[tuple[str, str], ...] = ()
    proxy: Proxy | None = None

    def way(self) -> str:
        """How the route reads after a broker's address: "" (direct TCP), " over WebSockets", " through
        the proxy proxy.corp:3128"."""
        over = " over WebSockets" if self.transport == "websockets" else ""
        return over + ("" if self.proxy is None else f" through the proxy {self.proxy.address}")


DIRECT = ClaimRoute()


class _RoutedClient(paho.Client):
    """paho whose socket is a tunnel through the route's proxy when it has one (TLS, WebSockets and
    MQTT then run inside it, as the uplink's do)."""

    proxy: Proxy | None = None

    def _create_socket_connection(self) -> socket.socket:
        if self.proxy is None:
            return super()._create_socket_connection()
        return tunnel(self.proxy, self._host, self._port, self._connect_timeout)


class _Exchange:
    """One CSR -> certificate round trip on a claim connection (paho callbacks, thread-safe results)."""

    def __init__(self, claim: ClaimSection, serial: str, csr: bytes) -> None:
        self.claim, self.serial, self.csr = claim, serial, csr
        # The identity the broker will see: the CN of the certificate we connect with.
        self.requester = certificate_name(claim.cert_file)
        self.reply: dict[str, Any] = {}
        self.refused: list[str] = []
        self.done = threading.Event()
        self.subscribed = threading.Event()

    def on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused.append(str(reason))
            self.done.set()
            return
        client.subscribe(cert_topic(self.claim.topic_prefix, self.requester), qos=1)

    def on_subscribe(self, client: paho.Client, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        if any(c.is_failure for c in codes):
            self.refused.append("subscription to the enrolment topic refused")
            self.done.set()
            return
        self.subscribed.set()
        topic = csr_topic(self.claim.topic_prefix, self.requester)
        client.publish(topic, orjson.dumps({"csr": self.csr.decode()}), qos=1)

    def on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        # Devices sharing a claim certificate share its reply topic: take only the answer for us.
        # Ours names our serial (only a request the service could not read is answered without
        # one, and any claim holder can send such a request to fail everyone's enrolment).
        if isinstance(doc, dict) and doc.get("serial") == self.serial:
            self.reply.update(doc)
            self.done.set()

    def run(self, verify_hostname: bool, route: ClaimRoute) -> dict[str, Any]:
        claim = self.claim
        client = _RoutedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.serial,
            protocol=paho.MQTTv5,
            transport=route.transport,
        )
        client.connect_timeout = claim.timeout_s
        if route.transport == "websockets":
            client.ws_set_options(path=route.websocket_path, headers=dict(route.websocket_headers) or None)
        client.proxy = route.proxy
        try:
            client.tls_set(
                ca_certs=str(claim.ca_file),
                certfile=str(claim.cert_file),
                keyfile=str(claim.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ProvisioningError(f"cannot load the claim certificate: {exc}") from exc
        client.tls_insecure_set(not verify_hostname)
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_message = self.on_message
        try:
            client.connect(claim.host, claim.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise ProvisioningError(
                f"cannot reach the enrolment broker {host_port(claim.host, claim.port)}{route.way()}: {exc}"
            ) from exc
        client.loop_start()
        try:
            if not self.done.wait(claim.timeout_s):
                hint = "" if self.subscribed.is_set() else " (never subscribed: claim certificate refused?)"
                raise ProvisioningError(
                    f"no answer from the enrolment service within {claim.timeout_s:g} s{hint}"
                )
        finally:
            client.disconnect()
            client.loop_stop()
        if self.refused:
            raise ProvisioningError(f"enrolment broker refused: {self.refused[0]}")
        return self.reply


def enrol_with_claim(
    identity: DeviceIdentity,
    claim: ClaimSection,
    serial: str,
    common_name: str,
    site: str | None = None,
    *,
    verify_hostname: bool = True,
    route: ClaimRoute = DIRECT,
) -> None:
    """Get a certificate for this device's key from the enrolment service and make it current.

    With the claim certificate in `claim` this is a first enrolment; to renew, pass a `claim`
    section pointing at the current certificate (`renewal_section`). `route`: the uplink's way out."""
    csr = identity.make_csr(serial, common_name, site)
    reply = _Exchange(claim, serial, csr).run(verify_hostname, route)
    install_reply(identity, reply, serial, common_name)


def install_reply(identity: DeviceIdentity, reply: dict[str, Any], serial: str, common_name: str) -> None:
    """Install the certificate of the enrolment service's answer `reply`; raise its refusal."""
    if reply.get("status") != "ok":
        raise ProvisioningError(f"enrolment refused: {reply.get('reason', 'no reason given')}")
    cert, ca = reply.get("cert"), reply.get("ca")
    if not isinstance(cert, str) or not isinstance(ca, str):
        raise ProvisioningError("enrolment answer carries no certificate")
    identity.install(cert.encode(), ca.encode())
    log.info("enrol.installed", serial=serial, common_name=common_name)


def renewal_section(identity: DeviceIdentity, claim: ClaimSection) -> ClaimSection:
    """`claim` with the current device certificate in place of the claim certificate (renewal)."""
    if not identity.cert_file.exists():
        raise ProvisioningError(f"no certificate in {identity.current} to renew; enrol first")
    return claim.model_copy(
        update={"cert_file": identity.cert_file, "key_file": identity.key_file, "ca_file": identity.ca_file}
    )


def renewal_topic_prefix(section: IdentitySection) -> str:
    """The enrolment service's topic prefix a renewal uses: `renewal.topic_prefix`, else the claim
    section's, else the service's default `enrol` (a gateway enrolled offline has no claim)."""
    if section.renewal.topic_prefix is not None:
        return section.renewal.topic_prefix
    return "enrol" if section.claim is None else section.claim.topic_prefix
