"""The OPC UA driver's typed health (`core.health.Health`): its counters and state as the status
document shows them under the device's `driver`, and its own status lines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from water_edge.drivers.opcua.certificate_file import certificate_expiry
from water_edge.drivers.opcua.config import Mode


@dataclass(frozen=True, slots=True)
class OpcUaHealth:
    publishes: int
    notifications: int
    reads: int
    dropped_batches: int
    keepalives: int
    connected: bool
    mode: Mode
    fallback: str | None  # why the driver polls although it was asked to subscribe
    unresolved: dict[str, str]  # tag -> why its browse path did not resolve
    failed_items: dict[str, str]  # tag -> the status code with which its monitored item was refused
    last_ok_ns: int | None
    uncertain_values: int = 0  # values the server sent (or a read returned) that are uncertain
    bad_values: int = 0  # ... that are bad (a Bad status code, or a value that cannot be a reading)
    clock_replaced: int = 0  # values stamped on arrival: the device's time was off or before 1970
    device_clock_offset_s: float | None = None  # the last such device time minus arrival
    # items per request of the services the server limits below `max_items_per_request`
    batch_limits: dict[str, int] = field(default_factory=dict)
    # the client certificate's end of validity (security policy other than None), once read
    client_certificate_not_after_ns: int | None = None

    def problems(self) -> list[str]:
        """What makes the agent degraded (`core.health.Problems`): a client certificate near or
        past its end."""
        if self.client_certificate_not_after_ns is None:
            return []
        said = certificate_expiry(self.client_certificate_not_after_ns, time.time_ns())
        return [] if said is None else [said]

    def status_lines(self) -> list[str]:
        lines = [
            f"{self.mode}  connected {'yes' if self.connected else 'no'}  publishes {self.publishes}  "
            f"notifications {self.notifications}  reads {self.reads}"
        ]
        if self.fallback:
            lines.append(f"fallback: {self.fallback}")
        if self.unresolved or self.failed_items:
            lines.append(f"tags unresolved {len(self.unresolved)}  items refused {len(self.failed_items)}")
        if self.uncertain_values or self.bad_values:
            lines.append(f"values uncertain {self.uncertain_values}  bad {self.bad_values}")
        if self.clock_replaced:
            off = self.device_clock_offset_s
            clock = "before 1970" if off is None else f"off by {off:+.0f} s"
            lines.append(f"device clock {clock}: {self.clock_replaced} values stamped on arrival")
        if self.batch_limits:
            limits = ", ".join(f"{service} {n}" for service, n in self.batch_limits.items())
            lines.append(f"server limits items per request: {limits}")
        if self.dropped_batches:
            lines.append(f"dropped batches {self.dropped_batches}")
        return lines + self.problems()
