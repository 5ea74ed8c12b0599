"""Whether a newly started release is healthy, from its status document and the old one's.

A release passes when, on its status socket: it is the version that was installed (a new process),
every driver that was up before the update is up, it has committed readings to the outbox (events
when it has no devices), and its uplink is online — or, if the old release was buffering because
the broker was unreachable, it is buffering too (committing without errors). Judging against the
old release's own state keeps a broker outage or a dead PLC during an update from rolling back a
good release, while a release that breaks what worked before is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the old release had working just before the switch (all-or-nothing if unknown)."""

    pid: int | None
    drivers_up: frozenset[str] | None  # None: no status from the old release, expect all up
    uplink_online: bool

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> Baseline:
        if status is None:
            return cls(None, None, True)
        return cls(
            status.get("agent", {}).get("pid"),
            frozenset(d["name"] for d in status.get("drivers", []) if d.get("state") == "up"),
            status.get("uplink", {}).get("state") == "online",
        )

    def to_json(self) -> dict[str, Any]:
        drivers = None if self.drivers_up is None else sorted(self.drivers_up)
        return {"pid": self.pid, "drivers_up": drivers, "uplink_online": self.uplink_online}

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Baseline:
        if not doc:
            return cls(None, None, True)
        drivers = doc.get("drivers_up")
        return cls(
            doc.get("pid"), None if drivers is None else frozenset(drivers), bool(doc.get("uplink_online"))
        )


def problems(status: dict[str, Any] | None, version: str | None, baseline: Baseline) -> list[str]:
    """What still keeps the new release from passing (empty: it passes). `version` None: a release
    with no recorded version (installed by an install.sh from before release.json), any answers."""
    if status is None:
        return ["no answer on the status socket (not running yet, or crashing)"]
    agent = status.get("agent", {})
    if version is not None and agent.get("version") != version:
        return [f"the agent answering is version {agent.get('version')}, expected {version}"]
    if baseline.pid is not None and agent.get("pid") == baseline.pid:
        return ["the old agent process still answers"]
    found: list[str] = []
    drivers = status.get("drivers", [])
    for driver in drivers:
        expected = baseline.drivers_up is None or driver.get("name") in baseline.drivers_up
        if expected and driver.get("state") != "up":
            error = f": {driver['last_error']}" if driver.get("last_error") else ""
            found.append(f"driver {driver.get('name')} is {driver.get('state')}{error}")
    pipeline = status.get("pipeline", {})
    committed = pipeline.get("committed_readings", 0) if drivers else pipeline.get("committed_events", 0)
    if not committed:
        found.append("nothing committed to the outbox yet")
    if pipeline.get("append_errors"):
        found.append(f"outbox append errors: {pipeline.get('last_error')}")
    uplink = status.get("uplink", {})
    if baseline.uplink_online and uplink.get("state") != "online":
        error = f" ({uplink['last_error']})" if uplink.get("last_error") else ""
        found.append(f"uplink {uplink.get('state')}{error}, it was online before the update")
    return found
