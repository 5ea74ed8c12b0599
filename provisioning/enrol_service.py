"""The reference claim-enrolment service: answers device CSRs on the enrolment topics, signed by the CA.

    python -m water_edge.provisioning.enrol_service --dir CA_DIR --host broker --cert svc.pem --key svc.key
(or `edge-agent ca serve-enrolment`). It connects with its own client certificate, which the broker
ACL lets read `enrol/+/csr` and write `enrol/+/cert`. A serial enrols once; with `--allow`, only
listed serials enrol, each bound to its gateway id (`SERIAL GATEWAY_ID` per line).
"""

from __future__ import annotations

import argparse
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from water_edge.provisioning.ca import CertificateAuthority
from water_edge.provisioning.enrol_options import add_service_arguments
from water_edge.provisioning.enrol_protocol import cert_topic
from water_edge.provisioning.errors import ProvisioningError

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 16 * 1024


def load_allow_list(path: Path) -> dict[str, str | None]:
    """`SERIAL [GATEWAY_ID]` per line; `#` starts a comment."""
    allowed: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            allowed[words[0]] = words[1] if len(words) > 1 else None
    return allowed


class EnrolmentService:
    """Decides on one request; pure of MQTT (`answer`) plus a paho client to serve it (`start`)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        topic_prefix: str = "enrol",
        allow: dict[str, str | None] | None = None,
        days: int = 365,
    ) -> None:
        self.ca = ca
        self.prefix = topic_prefix
        self.allow = allow
        self.days = days
        self.counts = {"issued": 0, "refused": 0}
        self._client: paho.Client | None = None
        self._ready = threading.Event()

    def answer(self, serial: str, payload: bytes) -> dict[str, Any]:
        try:
            cert = self._issue(serial, payload)
        except ProvisioningError as exc:
            self.counts["refused"] += 1
            log.warning("enrol.refused", serial=serial, reason=str(exc))
            return {"status": "refused", "reason": str(exc)}
        self.counts["issued"] += 1
        log.info("enrol.issued", serial=serial)
        return {"status": "ok", "cert": cert.decode(), "ca": self.ca.cert_pem.decode()}

    def _issue(self, serial: str, payload: bytes) -> bytes:
        if len(payload) > MAX_REQUEST_BYTES:
            raise ProvisioningError("request too large")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ProvisioningError("request is not JSON") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("csr"), str):
            raise ProvisioningError('request must be {"csr": "<PEM>"}')
        expected_cn: str | None = None
        if self.allow is not None:
            if serial not in self.allow:
                raise ProvisioningError(f"serial {serial!r} is not on the enrolment allow-list")
            expected_cn = self.allow[serial]
        csr_pem = doc["csr"].encode()
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ProvisioningError("csr is not a PEM CSR") from exc
        serials = csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if [a.value for a in serials] != [serial]:
            raise ProvisioningError("the CSR's serialNumber does not match the enrolment topic")
        if any(i.device_serial == serial and not i.revoked_at for i in self.ca.issued()):
            raise ProvisioningError(f"serial {serial!r} is already enrolled (revoke it to re-enrol)")
        return self.ca.sign_csr(csr_pem, days=self.days, expect_common_name=expected_cn)

    # ------------------------------------------------------------------ MQTT

    def start(self, host: str, port: int, *, cert: Path, key: Path, ca_file: Path) -> None:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="enrolment-service", protocol=paho.MQTTv311
        )
        client.tls_set(
            ca_certs=str(ca_file),
            certfile=str(cert),
            keyfile=str(key),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.tls_insecure_set(True)  # brokers in small plants are reached by IP; the CA pins them
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a: self._ready.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        client.connect(host, port, keepalive=30)
        client.loop_start()
        self._client = client

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_connect(self, client: paho.Client, *_a: Any) -> None:
        client.subscribe(f"{self.prefix}/+/csr", qos=1)

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        serial = msg.topic[len(self.prefix) + 1 :].rsplit("/", 1)[0]
        reply = self.answer(serial, bytes(msg.payload))
        client.publish(cert_topic(self.prefix, serial), orjson.dumps(reply), qos=1)


def serve_forever(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(args.dir)
    allow = load_allow_list(args.allow) if args.allow else None
    service = EnrolmentService(ca, topic_prefix=args.topic_prefix, allow=allow, days=args.days)
    service.start(
        args.host, args.port, cert=args.cert, key=args.key, ca_file=args.broker_ca or args.dir / "ca.pem"
    )
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m water_edge.provisioning.enrol_service")
    parser.add_argument("--dir", type=Path, required=True, help="CA directory (keep it root-only)")
    add_service_arguments(parser)
    return serve_forever(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
