"""The OPC UA driver's typed health (`core.health.Health`): its counters and state as the status
document shows them under the device's `driver`, and its own status lines."""

from __future__ import annotations

from dataclasses import dataclass

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

    def status_lines(self) -> list[str]:
        lines = [
            f"{self.mode}  connected {'yes' if self.connected else 'no'}  publishes {self.publishes}  "
            f"notifications {self.notifications}  reads {self.reads}"
        ]
        if self.fallback:
            lines.append(f"fallback: {self.fallback}")
        if self.unresolved or self.failed_items:
            lines.append(f"tags unresolved {len(self.unresolved)}  items refused {len(self.failed_items)}")
        if self.dropped_batches:
            lines.append(f"dropped batches {self.dropped_batches}")
        return lines
