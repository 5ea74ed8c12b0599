"""The `[security.identity]` config section: where the device identity lives and how it enrols."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClaimSection(BaseModel):
    """Claim-based enrolment: a shared claim certificate that may only use the enrolment topics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path
    key_file: Path
    ca_file: Path
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    topic_prefix: str = Field(default="enrol", pattern=r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class RenewalSection(BaseModel):
    """When the agent renews its certificate by itself: over the uplink's connection, which needs no
    claim certificate (a renewal authenticates with the current certificate), else through the
    claim section's broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Renew once this fraction of the certificate's lifetime has passed ...
    at_fraction: float = Field(default=0.67, gt=0, lt=1)
    # ... and raise an alarm once this fraction has passed without a renewal.
    alarm_fraction: float = Field(default=0.9, gt=0, lt=1)
    # Failed attempts (and first-boot enrolment) are retried with jittered backoff between these.
    retry_min_s: float = Field(default=30.0, ge=0.1)
    retry_max_s: float = Field(default=3600.0, ge=1)
    # Never renew sooner than this after the current certificate was installed, whatever
    # `at_fraction` of its lifetime says (a short-lived certificate and a small fraction would
    # otherwise renew in a loop: the CA backdates a certificate by 5 minutes).
    min_interval_s: float = Field(default=3600.0, ge=1, le=86400)
    # The enrolment service's `--topic-prefix` (None: the claim section's, else "enrol").
    topic_prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.alarm_fraction <= self.at_fraction:
            raise ValueError(
                f"alarm_fraction ({self.alarm_fraction:g}) must be above at_fraction "
                f"({self.at_fraction:g}): the alarm says a renewal is overdue"
            )
        if self.retry_max_s < self.retry_min_s:
            raise ValueError(
                f"retry_max_s ({self.retry_max_s:g}) is below retry_min_s ({self.retry_min_s:g})"
            )
        return self


class IdentitySection(BaseModel):
    """Identity directory (relative to gateway.state_dir), serial override, optional claim enrolment.

    With `claim` and no device certificate yet, the agent enrols by itself at start (buffering
    readings meanwhile). It renews its certificate (`renewal`) over the uplink's connection when
    the uplink connects with the identity's certificate, claim section or not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Path("identity")
    # None: the Pi's CPU serial (/proc/cpuinfo), else /etc/machine-id.
    serial: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{4,64}$")
    claim: ClaimSection | None = None
    renewal: RenewalSection = RenewalSection()
