"""A CA made with the project's own tooling, and a real Mosquitto run from the shipped broker config.

`Pki(root)` issues the broker's certificate and a `centre` client; `pki.broker()` starts Mosquitto
from `deploy/mosquitto/edge-agent.conf` and `deploy/mosquitto/acl` exactly as shipped, with only the
file paths and the port changed, so the adversarial tests attack what a utility would deploy.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import ClientTls, Mosquitto, Subscriber
from tests.support.testing import write_agent_config
from water_edge.agent.uplink.config import TlsConfig
from water_edge.provisioning.ca import CertificateAuthority
from water_edge.provisioning.config import ClaimSection
from water_edge.provisioning.identity import DeviceIdentity

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONF = ROOT / "deploy" / "mosquitto" / "edge-agent.conf"
SHIPPED_ACL = ROOT / "deploy" / "mosquitto" / "acl"
SHIPPED_DIR = "/etc/mosquitto/edge-agent/"
# The broker's name as a gateway behind a proxy knows it: no resolver here knows it, only a test
# proxy told so (`HttpProxy(names=...)`); the broker's certificate names it.
OUTSIDE_NAME = "broker.utility.example"


class ShippedMosquitto(Mosquitto):
    """Mosquitto with the shipped config; the files it names come from `files`, the port is free."""

    def __init__(self, files: Path, *, persistence: bool = False) -> None:
        super().__init__(persistence=persistence)
        conf = SHIPPED_CONF.read_text().replace(SHIPPED_DIR, f"{files}/")
        if "listener 8883\n" not in conf:
            raise AssertionError("the shipped config no longer has 'listener 8883'")
        conf = conf.replace("listener 8883\n", f"listener {self.port} 127.0.0.1\n")
        head = ["log_type all"]
        if os.geteuid() == 0:
            head.append("user root")
        if persistence:
            head += ["persistence true", f"persistence_location {self._dir}/", "autosave_interval 1"]
        self.config_path.write_text("\n".join(head) + "\n" + conf)


class Pki:
    """A CA, the broker's certificate and the files the shipped config names, in `root/broker`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.init(root / "ca", "test gateways CA")
        self.ca_file = root / "ca" / "ca.pem"
        self.crl_file = root / "ca" / "crl.pem"
        self.broker_dir = root / "broker"
        self.broker_dir.mkdir()
        self.server_key = self.broker_dir / "broker.key"
        self.server_cert = self.broker_dir / "broker.pem"
        self.server_cert.write_bytes(
            self.ca.issue_server("broker", ["127.0.0.1", "localhost", OUTSIDE_NAME], self.server_key)
        )
        self.centre_cert, self.centre_key = self.client("centre")

    def client(self, cn: str) -> tuple[Path, Path]:
        """A certificate made here for `cn` (central services, claim certificates, attackers)."""
        cert, key = self.root / f"{cn}.pem", self.root / f"{cn}.key"
        cert.write_bytes(self.ca.issue_client(cn, key))
        return cert, key

    def device(self, name: str, cn: str, serial: str, site: str = "site1") -> DeviceIdentity:
        """A gateway identity enrolled offline: key on the 'device', CSR signed by the CA."""
        identity = DeviceIdentity(self.root / name)
        csr = identity.make_csr(serial, cn, site)
        identity.install(self.ca.sign_csr(csr, days=2), self.ca_file.read_bytes())
        return identity

    def broker(self, acl: str | None = None, *, persistence: bool = False) -> ShippedMosquitto:
        """The shipped config, with the CA, CRL and ACL as they are now (`acl` replaces the ACL)."""
        for name, source in (("ca.pem", self.ca_file), ("crl.pem", self.crl_file)):
            (self.broker_dir / name).write_bytes(source.read_bytes())
        (self.broker_dir / "acl").write_text(SHIPPED_ACL.read_text() if acl is None else acl)
        return ShippedMosquitto(self.broker_dir, persistence=persistence)

    def refresh_crl(self) -> None:
        """Copy the CA's current CRL where the broker reads it (then reload the broker)."""
        (self.broker_dir / "crl.pem").write_bytes(self.crl_file.read_bytes())

    def claim(self, broker: Mosquitto, cert: Path, key: Path, timeout_s: float = 10.0) -> ClaimSection:
        """The `[security.identity.claim]` a new gateway enrols with through `broker`."""
        return ClaimSection(
            cert_file=cert,
            key_file=key,
            ca_file=self.ca_file,
            host=broker.host,
            port=broker.port,
            timeout_s=timeout_s,
        )

    def write_enrolling_agent_config(
        self,
        directory: Path,
        broker: Mosquitto,
        serial: str,
        *,
        poll_interval_ms: int,
        at_fraction: float,
        alarm_fraction: float,
        broker_host: str | None = None,
        uplink: dict[str, Any] | None = None,
    ) -> Path:
        """`directory/agent.toml` for a gateway with only a claim certificate (CN `claim`, issued
        here): it enrols as `serial` through `broker` and keeps the identity it gets in
        `directory/state/identity/current`, the uplink's TLS files. It renews from `at_fraction` of
        a certificate's lifetime and raises the alarm at `alarm_fraction` (retries 0.5 to 1 s apart,
        at most one renewal a second); one fake device polled every `poll_interval_ms`.
        `broker_host`: the broker's name for the uplink and the claim (default: its address);
        `uplink`: more `[uplink]` keys (a proxy...)."""
        host = broker.host if broker_host is None else broker_host
        claim_cert, claim_key = self.client("claim")
        identity = directory / "state" / "identity" / "current"
        return write_agent_config(
            directory,
            broker_port=broker.port,
            broker_host=host,
            devices=[{"name": "plc", "kind": "fake", "poll_interval_ms": poll_interval_ms,
                      "tags": [{"name": "flow"}]}],
            uplink={
                "tls": {
                    "ca_file": str(identity / "ca.pem"),
                    "cert_file": str(identity / "cert.pem"),
                    "key_file": str(identity / "key.pem"),
                },
                **(uplink or {}),
            },
            security={
                "identity": {
                    "serial": serial,
                    "claim": {
                        "cert_file": str(claim_cert), "key_file": str(claim_key),
                        "ca_file": str(self.ca_file), "host": host, "port": broker.port,
                        "timeout_s": 3,
                    },
                    "renewal": {
                        "at_fraction": at_fraction, "alarm_fraction": alarm_fraction, "retry_min_s": 0.5,
                        "retry_max_s": 1, "min_interval_s": 1,
                    },
                }
            },
        )  # fmt: skip

    def subscriber(self, broker: Mosquitto, topic: str, session: str | None = None) -> Subscriber:
        return Subscriber(
            broker.host,
            broker.port,
            topic,
            session=session,
            tls=ClientTls(self.ca_file, self.centre_cert, self.centre_key),
        )

    def tls(self, identity: DeviceIdentity) -> TlsConfig:
        return TlsConfig(ca_file=identity.ca_file, cert_file=identity.cert_file, key_file=identity.key_file)


class TlsClient:
    """A blocking MQTT 5 client with a certificate, for playing a central service or an attacker."""

    def __init__(
        self,
        broker: Mosquitto,
        cert: Path,
        key: Path,
        ca: Path,
        *,
        client_id: str = "",
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[str] = []
        self._cond = threading.Condition()
        self._acks: dict[int, Any] = {}
        self._subacks: list[Any] = []
        self._connected = threading.Event()
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = lambda *_a: self._connected.set()
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.connect(broker.host, broker.port, keepalive=30)
        c.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("no CONNACK")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        with self._cond:
            self._subacks.append(codes[0])
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self.disconnects.append(str(reason))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> Any:
        """Publish at QoS 1 and return the PUBACK's reason code (or None if the connection closed)."""
        info = self.client.publish(topic, payload, qos=1)
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self._acks or bool(self.disconnects), 10)
            return self._acks.get(info.mid)

    def subscribe(self, topic: str) -> Any:
        """Subscribe at QoS 1 and return the SUBACK's reason code."""
        count = len(self._subacks)
        self.client.subscribe(topic, qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._subacks) > count, 10):
                raise TimeoutError("no SUBACK")
            return self._subacks[count]

    def wait_message(self, predicate: Any, timeout: float = 10.0) -> tuple[str, bytes]:
        with self._cond:
            found: list[tuple[str, bytes]] = []

            def match() -> bool:
                found[:] = [m for m in self.messages if predicate(m)]
                return bool(found)

            if not self._cond.wait_for(match, timeout):
                raise TimeoutError(f"no matching message among {len(self.messages)}")
            return found[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
