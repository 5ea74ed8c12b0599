"""The reference claim-enrolment service: answers device CSRs on the enrolment topics, signed by the CA.

    python -m water_edge.provisioning.enrol_service --dir CA_DIR --host broker --cert svc.pem --key svc.key
(or `edge-agent ca serve-enrolment`). It connects with its own client certificate, which the broker
ACL lets read `enrol/+/csr` and write `enrol/+/cert`.

The identity in the topic is the one the requester's certificate proves (see `enrol_protocol`),
and the service accepts a CSR only for that identity:

- from a claim certificate: a first certificate for a serial on the allow-list (`--allow`, `SERIAL
  GATEWAY_ID [SITE]` per line, read again whenever the file changes), for exactly the gateway id
  listed with it (and the site, when the line names one), once per serial ever (a revoked or lost
  gateway is re-enrolled offline, never again by whoever holds the shared claim certificate), and
  never for a gateway id another device holds. The same key asking again gets the same certificate
  again: gateways enrolling at the same moment share the claim identity, the broker keeps one
  connection per identity, and a gateway whose connection was taken over asks again when it is
  back;
- from an enrolled gateway: the renewal of its own certificate, with the same device serial and
  the same site, once its newest certificate has lived `renew_after` of its lifetime (half, by
  default: the agent renews at two thirds). Whoever holds a gateway's key could otherwise have
  certificates signed in a loop: an index, and after `ca revoke --name` a CRL every broker loads,
  growing without bound. The same request again (the same key: its answer was lost) gets the same
  certificate again. A gateway moves to another site by offline re-enrolment (`ca sign`).

With `--acl FILE` the service keeps a site-bound broker ACL (`broker_acl`): written at start and
after every certificate it issues, then the broker is told to reload it (`--acl-reload`), before
the reply goes out, so a gateway's first connection with its new certificate is already allowed.
The utility's own blocks (`--acl-extra FILE`: an operator console's...) are read again, checked
(`broker_acl.extra_blocks`) and appended at every write; when the check refuses them nothing is
written (`enrol.acl_failed`) and the broker keeps the file it has.

Requests are answered one at a time by a worker thread, in the order they arrived, never on the
MQTT client's network thread: signing, the ACL write and the broker's reload (up to 30 s) would
otherwise stop keep-alives and acknowledgements while they run. At most `QUEUE_LIMIT` requests
wait; more are dropped, counted and logged (a gateway asks again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import shlex
import ssl
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import paho.mqtt.client as paho
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from water_edge.core.names import is_name
from water_edge.provisioning.broker_acl import BrokerAcl
from water_edge.provisioning.ca import CertificateAuthority, Issued, reserved_name, subject_attribute
from water_edge.provisioning.enrol_options import add_service_arguments
from water_edge.provisioning.enrol_protocol import cert_topic, identity_of, is_claim
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import public_der

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
QUEUE_LIMIT = 256


def _read_request(payload: bytes) -> tuple[bytes, str]:
    """The CSR PEM and the device serial it names; ProvisioningError for anything else."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ProvisioningError("request too large")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProvisioningError("request is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("csr"), str):
        raise ProvisioningError('request must be {"csr": "<PEM>"}')
    csr_pem = doc["csr"].encode()
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ProvisioningError("csr is not a PEM CSR") from exc
    serials = csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(serials) != 1:
        raise ProvisioningError("the CSR must carry exactly one serialNumber (the device serial)")
    return csr_pem, str(serials[0].value)


def _same_key(csr: x509.CertificateSigningRequest, issued: Issued) -> bool:
    """Whether `issued` certifies the key the CSR was made with (signed by, so held by, the requester)."""
    if issued.pem is None or not csr.is_signature_valid:
        return False
    cert = x509.load_pem_x509_certificate(issued.pem.encode())
    return public_der(csr.public_key()) == public_der(cert.public_key())


class Allowed(NamedTuple):
    """An allow-list line: the gateway id a serial enrols as, and the site, when the line names one."""

    gateway: str
    site: str | None = None


def load_allow_list(path: Path) -> dict[str, Allowed]:
    """`SERIAL GATEWAY_ID [SITE]` per line; `#` starts a comment. ProvisioningError naming the line if not."""
    allowed: dict[str, Allowed] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisioningError(f"cannot read the allow-list {path}: {exc.strerror}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) not in (2, 3):
            raise ProvisioningError(
                f"{path}:{number}: expected 'SERIAL GATEWAY_ID [SITE]', got {line.strip()!r}"
            )
        serial, gateway, *site = words
        if reserved_name(gateway):
            raise ProvisioningError(f"{path}:{number}: {gateway!r} is reserved, not a gateway id")
        if site and not is_name(site[0]):
            raise ProvisioningError(
                f"{path}:{number}: site {site[0]!r} is not a name (letters, digits, '_', '.', '-')"
            )
        if serial in allowed:
            raise ProvisioningError(f"{path}:{number}: serial {serial!r} is listed twice")
        allowed[serial] = Allowed(gateway, site[0] if site else None)
    return allowed


class _AllowFile:
    """The allow-list file, read again when it changes (inode, size or mtime: checked at every
    claim request, cheap at enrolment rates), so a serial listed just before installation enrols
    without a restart of the service."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self.allow: dict[str, Allowed] = {}
        self._read()  # a list that cannot be read stops the service at start, naming the line

    def current(self) -> dict[str, Allowed]:
        """The list as the file is now; while it cannot be read, ProvisioningError: the request is
        refused (an allow-list is never guessed at) and the log names the file and line
        (`enrol.allow_list_unreadable`; the requester is not told, the line names other serials)."""
        try:
            self._read()
        except ProvisioningError as exc:
            log.error("enrol.allow_list_unreadable", path=str(self.path), reason=str(exc))
            raise ProvisioningError(
                "the enrolment allow-list cannot be read at the moment (see the service's log)"
            ) from exc
        return self.allow

    def _read(self) -> None:
        try:
            info = self.path.stat()
        except OSError as exc:
            raise ProvisioningError(f"cannot read the allow-list {self.path}: {exc.strerror}") from exc
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            self.allow = load_allow_list(self.path)
            self._seen = seen
            log.info("enrol.allow_list_read", path=str(self.path), serials=len(self.allow))


class EnrolmentService:
    """Decides on one request; pure of MQTT (`answer`) plus a paho client to serve it (`start`)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        topic_prefix: str = "enrol",
        allow: Mapping[str, str | Allowed] | None = None,
        days: int = 365,
        lifetime: dt.timedelta | None = None,
        renew_after: float = 0.5,
        acl: BrokerAcl | None = None,
        allow_file: Path | None = None,
    ) -> None:
        """`allow`: the allow-list as given; `allow_file`: read from that file, and again whenever
        it changes (the service's `--allow`)."""
        self.ca = ca
        self._allow_file = None if allow_file is None else _AllowFile(allow_file)
        self.renew_after = renew_after
        self.prefix = topic_prefix
        self.allow = (
            None
            if allow is None
            else {k: v if isinstance(v, Allowed) else Allowed(v) for k, v in allow.items()}
        )
        self.acl = acl
        self.days = days
        # A lifetime shorter than a day (a test CA's short-lived certificates); `days` otherwise.
        self.lifetime = lifetime
        self.counts = {"issued": 0, "refused": 0, "dropped": 0, "failed": 0}
        self.acl_failures = 0
        self._client: paho.Client | None = None
        self._ready = threading.Event()
        self._requests: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_LIMIT)
        self._worker: threading.Thread | None = None

    def answer(self, identity: str, payload: bytes) -> dict[str, Any]:
        """The reply to a request published on `{prefix}/{identity}/csr` (never raises)."""
        serial: str | None = None
        try:
            csr_pem, serial = _read_request(payload)
            cert = self._issue(identity, csr_pem, serial)
        except ProvisioningError as exc:
            self.counts["refused"] += 1
            log.warning("enrol.refused", identity=identity[:64], serial=serial, reason=str(exc))
            return {"status": "refused", "serial": serial, "reason": str(exc)}
        self.counts["issued"] += 1
        log.info("enrol.issued", identity=identity, serial=serial)
        self.write_acl()
        return {"status": "ok", "serial": serial, "cert": cert.decode(), "ca": self.ca.cert_pem.decode()}

    def write_acl(self) -> bool:
        """Write the site-bound ACL for the register as it is now and have the broker reload it
        (with `acl`); False, counted and logged, when that fails: the gateways enrolled since are
        refused by the broker until it succeeds (at the next certificate, or `ca acl` by hand)."""
        if self.acl is None:
            return True
        try:
            found = self.acl.write(self.ca)
        except (ProvisioningError, OSError) as exc:
            self.acl_failures += 1
            log.error("enrol.acl_failed", path=str(self.acl.path), reason=str(exc))
            return False
        log.info(
            "enrol.acl_written",
            path=str(self.acl.path),
            gateways=len(found.sites),
            left_out=found.left_out,
            kept=list(found.kept),
        )
        return True

    def _issue(self, identity: str, csr_pem: bytes, serial: str) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if len(names) == 1 else None
        site = subject_attribute(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if is_claim(identity):
            return self._first_certificate(csr_pem, serial, common_name, site)
        # An enrolled gateway: its own certificate again, same name, same device.
        if common_name != identity:
            raise ProvisioningError(f"a gateway connected as {identity!r} may renew only its own certificate")
        current = self.ca.holder(identity)
        if current is None:
            raise ProvisioningError(f"{identity!r} holds no valid certificate of this CA to renew")
        if current.device_serial != serial:
            raise ProvisioningError(
                f"the CSR's serialNumber {serial!r} is not the one of {identity!r}'s certificate"
            )
        if current.site is not None and site != current.site:
            # The site is what a site-bound ACL binds a gateway to; its key must not move it.
            raise ProvisioningError(
                f"the CSR names site {site!r}, {identity!r}'s certificate {current.site!r}; "
                "a gateway moves to another site by offline re-enrolment (edge-agent ca sign)"
            )
        if _same_key(csr, current):
            assert current.pem is not None
            return current.pem.encode()  # a repeated request: its answer was lost on the way
        validity = current.validity()
        now = dt.datetime.now(dt.UTC)
        if validity is not None:
            start, end = validity
            due = start + (end - start) * self.renew_after
            if now < due:
                raise ProvisioningError(
                    f"renewal too early: the certificate {current.serial} of {identity!r} has lived "
                    f"{(now - start) / (end - start):.0%} of its lifetime; renewals are signed from "
                    f"{due:%Y-%m-%d %H:%M:%S} UTC ({self.renew_after:.0%} of it)"
                )
        return self.ca.sign_csr(csr_pem, days=self.days, **self._window(), expect_common_name=identity)

    def _first_certificate(
        self, csr_pem: bytes, serial: str, common_name: str | None, site: str | None
    ) -> bytes:
        if self._allow_file is not None:
            self.allow = self._allow_file.current()
        if self.allow is None:
            raise ProvisioningError("this service enrols no claim certificates (no allow-list)")
        allowed = self.allow.get(serial)
        if allowed is None:
            raise ProvisioningError(f"serial {serial!r} is not on the enrolment allow-list")
        gateway = allowed.gateway
        if common_name != gateway:
            raise ProvisioningError(f"the CSR is for {common_name!r}, expected {gateway!r}")
        if allowed.site is not None and site != allowed.site:
            raise ProvisioningError(f"the CSR names site {site!r}, the allow-list {allowed.site!r}")
        enrolled = [i for i in self.ca.issued() if i.device_serial == serial]
        csr = x509.load_pem_x509_csr(csr_pem)
        for item in enrolled:
            # The same key asking again: its answer was lost (gateways enrolling at the same moment
            # share the claim identity, and the broker keeps one connection per identity).
            if item.valid and item.common_name == gateway and _same_key(csr, item):
                assert item.pem is not None
                return item.pem.encode()
        if enrolled:
            raise ProvisioningError(
                f"serial {serial!r} was already enrolled; re-enrol it offline (edge-agent ca sign)"
            )
        # sign_csr also refuses a gateway id that another device holds a valid certificate for.
        return self.ca.sign_csr(csr_pem, days=self.days, **self._window(), expect_common_name=gateway)

    def _window(self) -> dict[str, dt.datetime]:
        """not_before/not_after for a `lifetime` (backdated by 5 % of it for clock skew, at most the
        CA's usual 5 minutes); empty to let the CA use `days`."""
        if self.lifetime is None:
            return {}
        now = dt.datetime.now(dt.UTC)
        start = now - min(dt.timedelta(minutes=5), self.lifetime * 0.05)
        return {"not_before": start, "not_after": now + self.lifetime}

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
        self._client = client
        self._worker = threading.Thread(target=self._serve, name="enrolment-requests", daemon=True)
        self._worker.start()
        client.connect(host, port, keepalive=30)
        client.loop_start()

    @property
    def waiting(self) -> int:
        """Requests received and not yet taken up by the worker."""
        return self._requests.qsize()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        if self._worker is not None:
            self._requests.put(None)  # after the requests already waiting
            self._worker.join()
            self._worker = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_connect(self, client: paho.Client, *_a: Any) -> None:
        client.subscribe(f"{self.prefix}/+/csr", qos=1)

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        identity = identity_of(self.prefix, msg.topic)
        if identity is None:
            log.warning("enrol.ignored", topic=msg.topic[:200])
            return
        try:
            self._requests.put_nowait((identity, bytes(msg.payload)))
        except queue.Full:
            self.counts["dropped"] += 1
            log.warning("enrol.dropped", identity=identity[:64], waiting=QUEUE_LIMIT)

    def _serve(self) -> None:
        """The worker: answer each waiting request and publish the reply, until `stop`."""
        while (request := self._requests.get()) is not None:
            identity, payload = request
            try:
                reply = self.answer(identity, payload)
            except Exception:  # a request the service cannot judge must not stop it
                self.counts["failed"] += 1
                log.exception("enrol.failed", identity=identity[:64])
                reply = {"status": "refused", "serial": None, "reason": "the service failed on this request"}
            assert self._client is not None
            self._client.publish(cert_topic(self.prefix, identity), orjson.dumps(reply), qos=1)


def serve_forever(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(args.dir)
    acl = None
    if args.acl is not None and not args.acl.parent.is_dir():
        # Never made here: a mistyped directory is not the file the broker reads, and the service
        # would report every write as done while new gateways are refused.
        sys.stderr.write(
            f"enrolment service: cannot write the ACL {args.acl}: its directory {args.acl.parent} "
            "does not exist (not creating it: is the path mistyped?)\n"
        )
        return 1
    if args.acl is not None:
        acl = BrokerAcl(
            args.acl,
            prefix=args.acl_prefix,
            host_id=args.acl_host_id,
            enrol_prefix=args.topic_prefix,
            reload_command=shlex.split(args.acl_reload or ""),
            extra=args.acl_extra,
        )
    elif args.acl_extra is not None:
        sys.stderr.write("enrolment service: --acl-extra needs --acl (the ACL its blocks are kept in)\n")
        return 1
    service = EnrolmentService(
        ca,
        topic_prefix=args.topic_prefix,
        days=args.days,
        renew_after=args.renew_after,
        acl=acl,
        allow_file=args.allow,
    )
    if not service.write_acl():
        sys.stderr.write(f"enrolment service: cannot write or reload the ACL {args.acl} (see the log)\n")
        return 1
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
