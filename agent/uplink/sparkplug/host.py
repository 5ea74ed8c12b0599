"""The Primary Host's STATE (Sparkplug 3.0): whether the Edge Node may publish its birth.

The host publishes `spBv1.0/STATE/{host_id}`, retained, QoS 1, as JSON
`{"online": true|false, "timestamp": <UTC ms>}` (its Will says offline). A STATE message counts
only if its timestamp is not older than the newest one seen: a stale retained message or a
late Will of an earlier host session must not take the node offline or give a false go-ahead.
What follows from a valid message is the uplink's business (`verdict()`); a malformed one is
counted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import orjson


class Verdict(StrEnum):
    ONLINE = "online"  # the host is up, as last seen (e.g. the retained STATE after a reconnect)
    BACK = "back"  # the host is up in a newer session than the last seen: births go out again
    OFFLINE = "offline"  # the host went away: NDEATH, disconnect, next server
    IGNORED = "ignored"  # stale, a repeat, or malformed


@dataclass
class HostState:
    """The newest STATE seen from one Primary Host (kept across connections of the uplink)."""

    host_id: str
    online: bool = False
    timestamp: int | None = None
    invalid: int = 0
    stale: int = 0

    def verdict(self, payload: bytes) -> Verdict:
        """Take one STATE payload; what it means for the Edge Node."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.invalid += 1
            return Verdict.IGNORED
        online = doc.get("online") if isinstance(doc, dict) else None
        ts = doc.get("timestamp") if isinstance(doc, dict) else None
        if type(online) is not bool or type(ts) is not int or ts < 0:
            self.invalid += 1
            return Verdict.IGNORED
        if self.timestamp is not None and ts < self.timestamp:
            self.stale += 1
            return Verdict.IGNORED
        newer = self.timestamp is None or ts > self.timestamp
        was_online = self.online
        self.online, self.timestamp = online, ts
        if online:
            return Verdict.BACK if (newer and was_online) or not was_online else Verdict.ONLINE
        return Verdict.OFFLINE
