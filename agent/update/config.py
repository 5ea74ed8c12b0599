"""The `[update]` config section: where releases live, which keys sign them, how long a trial lasts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from water_edge.core.sizes import ByteSize


class UpdateSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The A/B install root (deploy/install.sh); the agent reads it to report its releases.
    root: Path = Path("/opt/edge-agent")
    # `NAME BASE64-KEY` lines; root-owned, outside what the agent may write. The updater, which runs
    # as root, takes its own copy of this path from its command line, never from this file.
    release_keys: Path = Path("/etc/edge-agent/release-keys")
    # A new release is kept only if it passes the health check within this time.
    health_window_s: float = Field(default=300.0, ge=5, le=3600)
    # ... and rolled back before the window ends once its supervisor (systemd's NRestarts) has had to
    # restart it this many times: a release that cannot start reads no device. 0: the window only.
    rollback_after_restarts: int = Field(default=3, ge=0, le=100)
    # Largest bundle the agent downloads or assembles from chunks.
    max_bundle_bytes: ByteSize = Field(default=512 * 2**20, ge=2**20, le=4 * 2**30)
    download_timeout_s: float = Field(default=600.0, gt=0, le=7200)
    # CA bundle for https downloads (default: the system's).
    ca_file: Path | None = None
    # An `update` by URL makes the gateway fetch it from inside the plant network: https only (a
    # plant host rarely has a certificate the gateway trusts), unless this says otherwise ...
    allow_http: bool = False
    # ... and, when listed, only from these hosts (redirects included). Empty: any host.
    download_hosts: tuple[str, ...] = ()

    @field_validator("download_hosts")
    @classmethod
    def _host_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(h.strip().strip("[]").lower() for h in hosts)
        for name in names:
            if not name or any(c in name for c in "/@ \t?#") or (":" in name and not _ipv6(name)):
                raise ValueError(f"{name!r} is not a host name or address (no scheme, path or port)")
        return names


def _ipv6(name: str) -> bool:
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        return False
    return True
