"""The Primary Host's STATE (Sparkplug 3.0): whether the Edge Node may publish its birth.

The host publishes `spBv1.0/STATE/{host_id}`, retained, QoS 1, as JSON
`{"online": true|false, "timestamp": <UTC ms>}` (its Will says offline). A STATE message counts
only if its timestamp is not older than the newest one seen: a stale retained message or a
late Will of an earlier host session must not take the node offline or give a false go-ahead.
What follows from a valid message is the uplink's business (`verdict()`); a malformed or stale one
is counted, logged and ignored. The plain `ONLINE`/`OFFLINE` of Sparkplug 2.x is malformed here:
such a host is told apart in the log, because the node waits for it for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import orjson
import structlog

log = structlog.get_logger(__name__)


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
    why: str = ""  # why the last ignored message was ignored

    def verdict(self, payload: bytes) -> Verdict:
        """Take one STATE payload; what it means for the Edge Node."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            legacy = payload.strip() in (b"ONLINE", b"OFFLINE")
            return self._invalid("Sparkplug 2.x text (3.0 wants JSON)" if legacy else "not JSON", payload)
        online = doc.get("online") if isinstance(doc, dict) else None
        ts = doc.get("timestamp") if isinstance(doc, dict) else None
        if type(online) is not bool or type(ts) is not int or ts < 0:
            return self._invalid("no online or timestamp", payload)
        if self.timestamp is not None and ts < self.timestamp:
            self.stale += 1
            self.why = f"stale (timestamp {ts} < {self.timestamp})"
            log.warning(
                "sparkplug.host_state_ignored",
                host=self.host_id,
                why="stale",
                timestamp=ts,
                newest=self.timestamp,
            )
            return Verdict.IGNORED
        newer = self.timestamp is None or ts > self.timestamp
        was_online = self.online
        self.online, self.timestamp = online, ts
        if online:
            return Verdict.BACK if (newer and was_online) or not was_online else Verdict.ONLINE
        return Verdict.OFFLINE

    def _invalid(self, why: str, payload: bytes) -> Verdict:
        self.invalid += 1
        self.why = why
        log.warning("sparkplug.host_state_ignored", host=self.host_id, why=why, payload=payload[:64])
        return Verdict.IGNORED
