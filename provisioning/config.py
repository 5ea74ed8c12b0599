"""The `[security.identity]` config section: where the device identity lives and how it enrols."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


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


class IdentitySection(BaseModel):
    """Identity directory (relative to gateway.state_dir), serial override, optional claim enrolment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Path("identity")
    # None: the Pi's CPU serial (/proc/cpuinfo), else /etc/machine-id.
    serial: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{4,64}$")
    claim: ClaimSection | None = None
