"""USB serial adapters that swapped their kernel numbers since the last start.

A device configured on `/dev/ttyUSB0` polls whatever adapter the kernel numbered 0 at this boot
(docs/operations.md, "USB serial adapters"). The agent records, for every such port in the config,
which adapter it led to (`<state_dir>/serial_ports.json`: the adapter's by-id name, or its USB
socket when adapters share a by-id name); when a start finds another adapter behind the port, it
logs and sends `serial_adapter_changed`, naming the devices on it, both adapters and the stable
name to configure. A port whose adapter is not plugged in is left as recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from water_edge.core.files import read_json_state, write_json_state
from water_edge.core.reading import Event, now_ns
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.serial_names import numbered_port

log = structlog.get_logger(__name__)

PORTS_FILE: Final = "serial_ports.json"


def _numbered_ports(devices: Iterable[DeviceConfig]) -> dict[str, list[str]]:
    """{kernel-numbered port: the devices on it} in config order."""
    ports: dict[str, list[str]] = {}
    for device in devices:
        for port, _ in device.serial_lines():
            ports.setdefault(port, [])
            if device.name not in ports[port]:
                ports[port].append(device.name)
    return ports


def check_serial_adapters(
    state_dir: Path, devices: Iterable[DeviceConfig], link_dirs: Sequence[Path] | None = None
) -> list[Event]:
    """Compare the adapter behind every kernel-numbered port with the one recorded; record what
    was found and return a `serial_adapter_changed` warning per port that changed (blocking: run
    off the event loop)."""
    path = state_dir / PORTS_FILE
    recorded = read_json_state(path, "serial.ports_record")
    before: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    now = dict(before)
    events = []
    for port, on_port in _numbered_ports(devices).items():
        names = numbered_port(port, link_dirs)
        adapter = None if names is None else names.adapter()
        if names is None or adapter is None:
            continue  # a stable name, or no adapter behind the port now: nothing to compare
        now[port] = {"adapter": adapter, "by_id": list(names.by_id), "by_path": list(names.by_path)}
        previous = before.get(port)
        was = previous.get("adapter") if isinstance(previous, dict) else None
        if was is None or was == adapter:
            continue
        stable = names.preferred()
        detail: dict[str, Any] = {
            "port": port,
            "devices": on_port,
            "previous_adapter": was,
            "adapter": adapter,
            "stable_name": stable,
            "what_to_do": (
                f"{port} now leads to another USB adapter than at the last start (adapters swapped "
                f"numbers at boot, or one was replaced): check that the line of {', '.join(on_port)} "
                f"is on {adapter}, and configure the port by its stable name ({stable}) so that a "
                "reboot cannot swap it"
            ),
        }
        log.warning("serial.adapter_changed", **detail)
        events.append(Event("serial_adapter_changed", on_port[0], now_ns(), "warning", detail=detail))
    if now != before:
        write_json_state(path, now, "serial.ports_record")
    return events
