"""Keeps the gateway's certificate: enrols by itself at first boot, renews before expiry, says when
it is running out.

First boot: with `[security.identity.claim]` and no device certificate yet, the agent enrols over
MQTT with the claim certificate (`provisioning.enrol`), retrying with jittered backoff, while the
pipeline keeps committing readings to the outbox; the uplink waits for the certificate and then
sends everything from the first reading on.

Renewal: once `renewal.at_fraction` of the certificate's lifetime has passed, the agent asks the
enrolment service for a new certificate (a new key, made on the device); failures are retried with
backoff; past `renewal.alarm_fraction` an alarm shows in `status` and a `certificate_expiring`
event is sent once. The identity directory swaps key and certificate together
(`provisioning.identity`), and the uplink loads its TLS files at every connection, so a renewed
certificate is used on the next connection without a restart.

A renewal authenticates with the current certificate, so it needs no claim certificate: a gateway
enrolled offline (no `[security.identity.claim]`) renews too, over the uplink's connection, with
the enrolment service's topic prefix (`renewal.topic_prefix`, else the claim section's, else
`enrol`).

The renewal never disturbs the uplink. The shipped broker config makes a certificate's CN the
client id (`use_username_as_clientid`), so a second connection with the gateway's certificate
would close the uplink's and publish its Last Will (`offline`, `lost`). When the uplink connects
with the device certificate, the request therefore goes over the uplink's own connection
(`UplinkTap`: publish on `enrol/<id>/csr`, the answer on `enrol/<id>/cert` of the same session),
and a renewal due while the uplink is not connected (at start, before its first connection, or
during an outage) waits for it: a connection of the keeper's own would race the uplink's
(re)connection under the same client id. Only when the uplink is connected to another broker than
the claim section's and no answer comes there does the keeper connect to the claim section's
broker (where the uplink is not connected) with the current certificate. When the uplink connects
with another certificate, the keeper renews on a connection of its own to the claim section's
broker (nothing of the uplink's to close); without a claim section it then cannot renew at all,
and `check-config` says so.

When: the lifetime is counted from when the certificate was installed (its file's time), not from
its notBefore, which the CA backdates by 5 minutes; and never sooner than `renewal.min_interval_s`
after the install. A small `at_fraction` of a short lifetime used to make a certificate due the
moment it was installed, and the agent renewed in a loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from water_edge.agent.uplink.config import MqttConfig
from water_edge.core.errors import AgentError
from water_edge.core.hosts import host_port
from water_edge.core.reading import Event, Severity, now_ns
from water_edge.core.secrets import resolve_secret
from water_edge.provisioning.ca import subject_text_attribute
from water_edge.provisioning.config import ClaimSection, IdentitySection
from water_edge.provisioning.enrol import (
    DIRECT,
    ClaimRoute,
    enrol_with_claim,
    install_reply,
    renewal_section,
    renewal_topic_prefix,
)
from water_edge.provisioning.enrol_protocol import cert_topic, csr_topic
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity, device_serial

log = structlog.get_logger(__name__)

CertState = Literal["none", "enrolling", "valid", "renewing", "expiring", "expired"]
_BEAT_S = 1.0


@dataclass(frozen=True, slots=True)
class CertificateHealth:
    """The device certificate and its upkeep (`core.health.Health`)."""

    state: CertState
    subject: str | None
    not_before_ns: int | None
    not_after_ns: int | None
    renew_at_ns: int | None  # when the agent renews it (None: it cannot renew it, or must not)
    renewals: int
    failed_attempts: int  # since the last success
    last_error: str | None

    def status_lines(self) -> list[str]:
        if self.state == "none":
            return []
        if self.state == "enrolling":
            why = f": {self.last_error}" if self.last_error else ""
            return [
                f"cert     enrolling with the claim certificate (attempt {self.failed_attempts + 1}){why}"
            ]
        until = _date(self.not_after_ns)
        renew = f"  renews {_date(self.renew_at_ns)}" if self.renew_at_ns else ""
        err = f"  last error: {self.last_error}" if self.last_error and self.failed_attempts else ""
        holder = _holder(self.subject)
        return [f"cert     {self.state}{holder}  until {until}{renew}  renewed {self.renewals}x{err}"]

    def alarm_lines(self) -> list[str]:
        if self.state == "expired":
            return [f"device certificate expired {_date(self.not_after_ns)}: the broker will refuse it"]
        if self.state == "expiring":
            return [f"device certificate expires {_date(self.not_after_ns)} and is not renewed yet"]
        return []


def _holder(subject: str | None) -> str:
    """`  gw-01, site north`: the name and site the broker knows the gateway by (a site-bound ACL
    grants it only that site's topics), from the certificate's subject."""
    if subject is None:
        return ""
    cn = subject_text_attribute(subject, NameOID.COMMON_NAME)
    ou = subject_text_attribute(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    return (f"  {cn}" if cn else "") + (f", site {ou}" if ou else "")


def _date(ns: int | None) -> str:
    if ns is None:
        return "?"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ns(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1e9)


# ---------------------------------------------------------------------- over the uplink


class _Reason(Protocol):
    @property
    def is_failure(self) -> bool: ...


class _Connack(Protocol):
    @property
    def reason(self) -> _Reason: ...


class _Transport(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int: ...

    def subscribe(self, topic_filter: str, qos: int) -> None: ...


class _Listener(Protocol):
    closed: asyncio.Event

    def on_connack(self, connack: Any) -> None: ...

    def on_puback(self, mid: int, reason: Any) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None: ...

    def on_unsuback(self, mid: int) -> None: ...

    def on_closed(self, reason: str) -> None: ...


class _Tapped:
    """The listener of one uplink connection: the tap's reply and PUBACK go to the tap, every other
    event to the uplink's session, untouched."""

    def __init__(self, tap: UplinkTap, session: _Listener, transport: _Transport) -> None:
        self.tap, self.session, self.transport = tap, session, transport
        self.up = False
        self.mids: set[int] = set()

    @property
    def usable(self) -> bool:
        return self.up and not self.session.closed.is_set()

    def on_connack(self, connack: _Connack) -> None:
        self.up = not connack.reason.is_failure
        self.session.on_connack(connack)

    def on_puback(self, mid: int, reason: Any) -> None:
        if mid in self.mids:
            self.mids.discard(mid)
            if reason.is_failure:
                self.tap.refused(f"the broker refused the request on {self.tap.request_topic}: {reason}")
            return
        self.session.on_puback(mid, reason)

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.tap.reply_topic:
            self.tap.answer(payload)
            return
        self.session.on_message(topic, payload)

    def on_unsuback(self, mid: int) -> None:
        self.session.on_unsuback(mid)

    def on_closed(self, reason: str) -> None:
        self.up = False
        self.session.on_closed(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class UplinkTap:
    """Enrolment requests over the uplink's connection (the uplink's `ConnectionTap`): the CSR is
    published on `{prefix}/{id}/csr` and the answer taken from `{prefix}/{id}/cert` on the same
    session, which the shipped ACL grants the certificate the uplink connects with."""

    def __init__(self, prefix: str, identity: str) -> None:
        self.request_topic = csr_topic(prefix, identity)
        self.reply_topic = cert_topic(prefix, identity)
        self._conn: _Tapped | None = None
        self._waiting: tuple[str, asyncio.Future[dict[str, Any]]] | None = None
        self.requests = 0

    def listener(self, session: Any, transport: Any) -> Any:
        self._conn = _Tapped(self, session, transport)
        return self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.usable

    def answer(self, payload: bytes) -> None:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        waiting = self._waiting
        if waiting is None or not isinstance(doc, dict) or doc.get("serial") != waiting[0]:
            return
        if not waiting[1].done():
            waiting[1].set_result(doc)

    def refused(self, why: str) -> None:
        if self._waiting is not None and not self._waiting[1].done():
            self._waiting[1].set_exception(ProvisioningError(why))

    async def exchange(self, serial: str, csr: bytes, timeout_s: float) -> dict[str, Any] | None:
        """The service's answer to `csr`; None when the uplink is not connected (or closes before
        the request is sent); raises `ProvisioningError` when the broker refuses the request or no
        answer comes within `timeout_s`."""
        conn = self._conn
        if conn is None or not conn.usable:
            return None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting = (serial, fut)
        closed = asyncio.ensure_future(conn.session.closed.wait())
        try:
            try:
                # In order on one connection: the subscription is in place before the request
                # reaches the service (both QoS 1; an unchanged subscription is harmless).
                conn.transport.subscribe(self.reply_topic, qos=1)
                conn.mids.add(
                    conn.transport.publish(self.request_topic, orjson.dumps({"csr": csr.decode()}), 1)
                )
            except (AgentError, OSError) as exc:
                log.info("identity.uplink_unusable", error=str(exc))
                return None
            self.requests += 1
            waiting: set[asyncio.Future[Any]] = {fut, closed}
            await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting = None
            closed.cancel()
        if fut.done():
            return fut.result()
        fut.cancel()
        if conn.session.closed.is_set():
            raise ProvisioningError("the uplink's connection closed before the enrolment service answered")
        raise ProvisioningError(
            f"no answer from the enrolment service over the uplink's connection within {timeout_s:g} s"
        )


class IdentityKeeper:
    def __init__(
        self,
        section: IdentitySection,
        identity: DeviceIdentity,
        *,
        common_name: str,
        site: str,
        emit: Callable[[Event], Awaitable[None]],
        clock_ns: Callable[[], int] = time.time_ns,
        route: ClaimRoute = DIRECT,
    ) -> None:
        self.section = section
        self.identity = identity
        self.route = route  # the uplink's way out, which an enrolment connection takes too
        self.common_name = common_name
        self.site = site
        self._emit = emit
        self._now = clock_ns
        self.ready = asyncio.Event()
        self.beats = 0
        self.renewals = 0
        self.failed = 0
        self.last_error: str | None = None
        self._busy: CertState | None = None
        self._alarmed = False
        self.tap: UplinkTap | None = None
        self._uplink_broker: Callable[[], str] | None = None
        self.via_uplink = 0  # renewals answered over the uplink's connection
        claim = section.claim
        if claim is None or identity.cert_file.exists() or not claim.cert_file.exists():
            self.ready.set()

    def share_uplink(self, uplink: Any, cert_file: Path | None) -> None:
        """Renew over `uplink`'s connection (see the module docstring) when it connects with the
        device certificate (`cert_file`, its `[uplink.tls] cert_file`)."""
        if not self.section.renewal.enabled or cert_file is None:
            return
        if os.path.realpath(cert_file) != os.path.realpath(self.identity.cert_file):
            return  # the uplink connects as someone else: its connection cannot renew this one
        self.tap = UplinkTap(renewal_topic_prefix(self.section), self.common_name)
        uplink.tap = self.tap
        self._uplink_broker = lambda: str(uplink.health().broker)

    @property
    def enrolling(self) -> bool:
        return not self.ready.is_set()

    def _cert(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(self.identity.cert_file.read_bytes())
        except (OSError, ValueError):
            return None

    def health(self) -> CertificateHealth:
        cert = self._cert()
        if cert is None:
            state: CertState = "enrolling" if self.enrolling else "none"
            return CertificateHealth(
                state, None, None, None, None, self.renewals, self.failed, self.last_error
            )
        start, end = _ns(cert.not_valid_before_utc), _ns(cert.not_valid_after_utc)
        renew_at = self._renew_at(start, end, self._installed_ns())
        return CertificateHealth(
            self._state(start, end),
            cert.subject.rfc4514_string(),
            start,
            end,
            renew_at,
            self.renewals,
            self.failed,
            self.last_error,
        )

    def _installed_ns(self) -> int | None:
        """When the current certificate was installed (its file's time), None if unknown."""
        try:
            return os.stat(self.identity.cert_file).st_mtime_ns
        except OSError:
            return None

    def _renew_at(self, start: int, end: int, installed: int | None) -> int | None:
        """`at_fraction` of the lifetime counted from the install (notBefore when that was later),
        and at least `min_interval_s` after the install, but not after the alarm."""
        renewal = self.section.renewal
        if not renewal.enabled or (self.section.claim is None and self.tap is None):
            return None  # disabled, or nothing to renew through (`check-config` says so)
        if installed is None:
            return start + int((end - start) * renewal.at_fraction)
        installed = min(installed, self._now())  # a file time in the future counts from now
        held = max(start, installed)
        due = held + int((end - held) * renewal.at_fraction)
        alarm = start + int((end - start) * renewal.alarm_fraction)
        floor = min(installed + int(renewal.min_interval_s * 1e9), max(alarm, due))
        return max(due, floor)

    def _state(self, start: int, end: int) -> CertState:
        now = self._now()
        if now >= end:
            return "expired"
        if self._busy is not None:
            return self._busy
        if now >= start + int((end - start) * self.section.renewal.alarm_fraction):
            return "expiring"
        return "valid"

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        backoff = self.section.renewal.retry_min_s
        while True:
            self.beats += 1
            due = self._due()
            if due is None:
                await self._check_expiring()
                await self._sleep(60.0)
                continue
            if due > 0:
                await self._sleep(min(due, 60.0))
                continue
            if self._waits_for_uplink():
                await self._sleep(_BEAT_S)  # not a failure: the uplink's connection comes first
                continue
            ok = await self._attempt()
            if ok:
                backoff = self.section.renewal.retry_min_s
                continue
            await self._check_expiring()
            await self._sleep(random.uniform(backoff / 2, backoff))  # noqa: S311 - jitter
            backoff = min(backoff * 2, self.section.renewal.retry_max_s)

    def _due(self) -> float | None:
        """Seconds until the next enrolment or renewal (<= 0: now), None when there is none to do."""
        if self.enrolling:
            return 0.0
        cert = self._cert()
        if cert is None:
            return None
        renew_at = self._renew_at(
            _ns(cert.not_valid_before_utc), _ns(cert.not_valid_after_utc), self._installed_ns()
        )
        if renew_at is None:
            return None
        return (renew_at - self._now()) / 1e9

    def _waits_for_uplink(self) -> bool:
        """A renewal goes over the uplink's connection and the uplink is not connected (at start,
        before its first connection, or in an outage): wait for it rather than connect as the
        gateway beside it (the two connections would close each other, see the module docstring)."""
        return not self.enrolling and self.tap is not None and not self.tap.connected

    async def _sleep(self, seconds: float) -> None:
        """Sleep, counting beats (the watchdog watches them while the uplink waits for enrolment)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _BEAT_S))
            self.beats += 1

    async def _attempt(self) -> bool:
        claim = self.section.claim
        first = self.enrolling
        if claim is None and (first or self.tap is None):
            return False
        self._busy = "enrolling" if first else "renewing"
        try:
            if first and claim is not None:
                await asyncio.to_thread(self._enrol, claim)
            elif self.tap is None or not await self._renew_over_uplink(self.tap, claim):
                assert claim is not None  # no tap and no claim: nothing due (`_renew_at`)
                await asyncio.to_thread(self._enrol, renewal_section(self.identity, claim))
        except (AgentError, OSError) as exc:
            self.failed += 1
            self.last_error = str(exc)
            log.warning("identity.attempt_failed", first=first, attempts=self.failed, error=str(exc))
            return False
        finally:
            self._busy = None
        self.failed, self.last_error, self._alarmed = 0, None, False
        health = self.health()
        if first:
            self.ready.set()
            await self._event("certificate_enrolled", "info", health)
        else:
            self.renewals += 1
            await self._event("certificate_renewed", "info", health)
        return True

    async def _renew_over_uplink(self, tap: UplinkTap, claim: ClaimSection | None) -> bool:
        """Renew over the uplink's connection; False when the keeper renews on a connection of its
        own instead: connected to a broker other than the claim section's, the uplink got no
        answer (the enrolment service is on the claim section's broker, where the uplink is not
        connected: nothing to close there). Raises when the uplink's connection is gone: the
        renewal is retried over it once it is back, never beside its reconnection."""
        gone = ProvisioningError("the uplink's connection closed before the renewal was sent")
        if not tap.connected:
            raise gone
        serial = device_serial(self.section.serial)
        csr = await asyncio.to_thread(self.identity.make_csr, serial, self.common_name, self.site)
        timeout_s = 30.0 if claim is None else claim.timeout_s
        try:
            reply = await tap.exchange(serial, csr, timeout_s)
        except ProvisioningError:
            if claim is None or self._uplink_broker is None or _same_broker(self._uplink_broker(), claim):
                raise
            log.info("identity.renewal_on_claim_broker", broker=f"{claim.host}:{claim.port}")
            return False
        if reply is None:
            raise gone
        await asyncio.to_thread(install_reply, self.identity, reply, serial, self.common_name)
        self.via_uplink += 1
        return True

    def _enrol(self, section: ClaimSection) -> None:
        serial = device_serial(self.section.serial)
        enrol_with_claim(self.identity, section, serial, self.common_name, self.site, route=self.route)

    async def _check_expiring(self) -> None:
        health = self.health()
        if health.alarm_lines() and not self._alarmed:
            self._alarmed = True
            await self._event("certificate_expiring", "alarm", health)

    async def _event(self, kind: str, severity: Severity, health: CertificateHealth) -> None:
        log.info(f"identity.{kind}", subject=health.subject, not_after=_date(health.not_after_ns))
        await self._emit(
            Event(
                kind,
                "agent",
                now_ns(),
                severity,
                detail={
                    "subject": health.subject,
                    "not_after_ns": health.not_after_ns,
                    "last_error": self.last_error,
                },
            )
        )


def claim_route(uplink: MqttConfig) -> ClaimRoute:
    """The uplink's way out (`[uplink] transport`, `websocket_*`, `proxy` with its password read
    now), which a claim enrolment takes: where the gateway's only way out is the corporate proxy, a
    direct connection to the enrolment broker would never be let through."""
    return ClaimRoute(
        transport=uplink.transport,
        websocket_path=uplink.websocket_path,
        websocket_headers=tuple(uplink.websocket_headers.items()),
        proxy=uplink.resolved_proxy(resolve_secret(uplink.proxy_password)),
    )


def _same_broker(address: str, claim: ClaimSection) -> bool:
    """Whether the uplink's broker (`host:port` as its health shows it) is the claim section's."""
    return address.lower() == host_port(claim.host, claim.port).lower()
