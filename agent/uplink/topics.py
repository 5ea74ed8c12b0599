"""Topic names of the uplink: `{prefix}/{site}/{gateway}/{stream}` for data, `.../status` for presence."""

from __future__ import annotations

import re
from dataclasses import dataclass

from water_edge.core.errors import UplinkError

_LEVEL = re.compile(r"^[A-Za-z0-9_.:-]+$")
STATUS_LEVEL = "status"
# Commands to the gateway arrive under `{base}/cmd/...`; no data stream may publish there.
COMMAND_LEVEL = "cmd"
# Parts of a learnt-state backup for the centre (agent/backup_parts.py).
STATE_BACKUP_LEVEL = "state_backup"
RESERVED_LEVELS = frozenset((STATUS_LEVEL, COMMAND_LEVEL, STATE_BACKUP_LEVEL))


def check_level(name: str, what: str) -> str:
    """Return `name` if it is one safe topic level (no `+`, `#`, `/`, empty or exotic characters)."""
    if not _LEVEL.match(name):
        raise UplinkError(f"{what} {name!r} is not a valid MQTT topic level (allowed: A-Z a-z 0-9 _ . : -)")
    return name


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic layout of one gateway; build once, then `stream()` is a cheap lookup."""

    prefix: str
    site: str
    gateway: str

    def __post_init__(self) -> None:
        for level in self.prefix.split("/"):
            check_level(level, "prefix level")
        check_level(self.site, "site")
        check_level(self.gateway, "gateway")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.gateway}"

    @property
    def status(self) -> str:
        """Retained presence topic: online after connect, offline on stop or (as Last Will) on loss."""
        return f"{self.base}/{STATUS_LEVEL}"

    @property
    def commands(self) -> str:
        """Subscription filter of the command channel: `{base}/cmd/#`."""
        return f"{self.base}/{COMMAND_LEVEL}/#"

    @property
    def state_backup(self) -> str:
        """Where the parts of a learnt-state backup go (agent/backup_parts.py)."""
        return f"{self.base}/{STATE_BACKUP_LEVEL}"

    def command_suffix(self, topic: str) -> str | None:
        """`a/b` for a topic `{base}/cmd/a/b`; None if the topic is not a command topic."""
        head = f"{self.base}/{COMMAND_LEVEL}/"
        return topic[len(head) :] if topic.startswith(head) and len(topic) > len(head) else None

    def stream(self, stream: str) -> str:
        """The data topic of one outbox stream. `status`, `cmd` and `state_backup` are reserved."""
        check_level(stream, "stream")
        if stream in RESERVED_LEVELS:
            raise UplinkError(f"stream name {stream!r} is reserved (status, command and state backup topics)")
        return f"{self.base}/{stream}"
