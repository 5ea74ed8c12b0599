"""Keeps the gateway's certificate: enrols by itself at first boot, renews before expiry, says when
it is running out.

First boot: with `[security.identity.claim]` and no device certificate yet, the agent enrols over
MQTT with the claim certificate (`provisioning.enrol`), retrying with jittered backoff, while the
pipeline keeps committing readings to the outbox; the uplink waits for the certificate and then
sends everything from the first reading on.

Renewal: once `renewal.at_fraction` of the certificate's lifetime has passed, the agent asks the
enrolment service for a new certificate, connecting with the current one (a new key, made on the
device); failures are retried with backoff; past `renewal.alarm_fraction` an alarm shows in
`status` and a `certificate_expiring` event is sent once. The identity directory swaps key and
certificate together (`provisioning.identity`), and the uplink loads its TLS files at every
connection, so a renewed certificate is used on the next connection without a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from water_edge.core.errors import AgentError
from water_edge.core.reading import Event, Severity, now_ns
from water_edge.provisioning.ca import subject_text_attribute
from water_edge.provisioning.config import ClaimSection, IdentitySection
from water_edge.provisioning.enrol import enrol_with_claim, renewal_section
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
    renew_at_ns: int | None  # when the agent renews it (None: no renewal configured)
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
    ) -> None:
        self.section = section
        self.identity = identity
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
        claim = section.claim
        if claim is None or identity.cert_file.exists() or not claim.cert_file.exists():
            self.ready.set()

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
        renew_at = self._renew_at(start, end)
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

    def _renew_at(self, start: int, end: int) -> int | None:
        renewal = self.section.renewal
        if self.section.claim is None or not renewal.enabled:
            return None
        return start + int((end - start) * renewal.at_fraction)

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
        renew_at = self._renew_at(_ns(cert.not_valid_before_utc), _ns(cert.not_valid_after_utc))
        if renew_at is None:
            return None
        return (renew_at - self._now()) / 1e9

    async def _sleep(self, seconds: float) -> None:
        """Sleep, counting beats (the watchdog watches them while the uplink waits for enrolment)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _BEAT_S))
            self.beats += 1

    async def _attempt(self) -> bool:
        claim = self.section.claim
        if claim is None:
            return False
        first = self.enrolling
        self._busy = "enrolling" if first else "renewing"
        try:
            section = claim if first else renewal_section(self.identity, claim)
            await asyncio.to_thread(self._enrol, section)
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

    def _enrol(self, section: ClaimSection) -> None:
        serial = device_serial(self.section.serial)
        enrol_with_claim(self.identity, section, serial, self.common_name, self.site)

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
