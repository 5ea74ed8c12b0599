"""The retained status topic `{base}/status`: what `online`, `offline` and the Last Will say.

Each names the package version (`agent`) and, on a gateway, the release it runs from (`release`,
see agent/release_name.py): the centre's one way to tell which build a gateway runs.

Monitoring reads this topic to know whether a gateway is connected: `online` after every
connect, `offline` with reason `stopped` on a clean stop, and the Will (`offline`, reason `lost`)
that the broker publishes when the connection ends without DISCONNECT.
"""

from __future__ import annotations

from typing import Any

import orjson

from water_edge.agent import __version__
from water_edge.agent.release_name import RELEASE
from water_edge.agent.uplink.topics import Topics
from water_edge.agent.uplink.transport import Will
from water_edge.core.reading import now_ns


def status_payload(topics: Topics, state: str, reason: str | None = None) -> bytes:
    """The JSON document of one status message, stamped now."""
    doc: dict[str, Any] = {
        "state": state,
        "site": topics.site,
        "gateway": topics.gateway,
        "ts": now_ns(),
        "agent": __version__,
    }
    if RELEASE is not None:
        doc["release"] = RELEASE
    if reason is not None:
        doc["reason"] = reason
    return orjson.dumps(doc)


def online(topics: Topics) -> bytes:
    return status_payload(topics, "online")


def stopped(topics: Topics) -> bytes:
    return status_payload(topics, "offline", "stopped")


def last_will(topics: Topics, *, retain: bool = True) -> Will:
    """At QoS 1, retained (where the broker keeps retained messages) like the status messages it
    replaces."""
    return Will(topics.status, status_payload(topics, "offline", "lost"), qos=1, retain=retain)
