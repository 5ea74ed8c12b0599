"""USB serial adapters that swapped their kernel numbers since the last start.

A device configured on `/dev/ttyUSB0` polls whatever adapter the kernel numbered 0 at this boot
(docs/operations.md, "USB serial adapters"). The agent records, for every such port in the config,
which adapter it led to (`<state_dir>/serial_ports.json`: the adapter's by-id name, or its USB
socket when adapters share a by-id name); when a start finds another adapter behind the port, it
logs and sends `serial_adapter_changed`, naming the devices on it, both adapters and the stable
name to configure. A port whose adapter is not plugged in is left as recorded.

What the check found is kept for `edge-agent status -v` (`SerialPortStatus`, one per port in the
config): status shows it as the start found it and looks at no device node itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from water_edge.core.files import read_json_state, write_json_state
from water_edge.core.reading import Event, now_ns
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.serial_names import numbered_port

log = structlog.get_logger(__name__)

PORTS_FILE: Final = "serial_ports.json"


@dataclass(frozen=True, slots=True)
class SerialPortStatus:
    """A serial port of the config as the agent's start found it (`edge-agent status -v` shows it
    under each of its devices)."""

    port: str  # as configured
    devices: tuple[str, ...]  # the devices on it, in config order
    kernel_numbered: bool  # a name the kernel numbers (/dev/ttyUSB0), which can swap at a reboot
    # the adapter behind a kernel-numbered port at start, by the stable name to configure instead
    # (by-id, or by-path when adapters share a by-id name); None: no adapter behind it at start, or
    # the port is a stable name already
    stable_name: str | None

    def status_lines(self) -> list[str]:
        """`serial port /dev/ttyUSB0  kernel-numbered: use /dev/serial/by-id/usb-FTDI_…-port0`."""
        line = f"serial port {self.port}"
        if not self.kernel_numbered:
            return [line]
        if self.stable_name is None:
            return [
                f"{line}  kernel-numbered, no adapter behind it at start: name the adapter by its "
                "link in /dev/serial/by-id/ or /dev/serial/by-path/"
            ]
        return [f"{line}  kernel-numbered: use {self.stable_name}"]


@dataclass(frozen=True, slots=True)
class SerialCheck:
    """What `check_serial_adapters` found: the `serial_adapter_changed` events to send, and every
    serial port of the config for status."""

    events: list[Event]
    ports: tuple[SerialPortStatus, ...]


def _numbered_ports(devices: Iterable[DeviceConfig]) -> dict[str, list[str]]:
    """{serial port: the devices on it} in config order."""
    ports: dict[str, list[str]] = {}
    for device in devices:
        for port, _ in device.serial_lines():
            ports.setdefault(port, [])
            if device.name not in ports[port]:
                ports[port].append(device.name)
    return ports


def check_serial_adapters(
    state_dir: Path, devices: Iterable[DeviceConfig], link_dirs: Sequence[Path] | None = None
) -> SerialCheck:
    """Compare the adapter behind every kernel-numbered port with the one recorded; record what
    was found and return a `serial_adapter_changed` warning per port that changed, with every
    serial port as found (blocking: run off the event loop)."""
    path = state_dir / PORTS_FILE
    recorded = read_json_state(path, "serial.ports_record")
    before: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    now = dict(before)
    events = []
    ports = []
    for port, on_port in _numbered_ports(devices).items():
        names = numbered_port(port, link_dirs)
        adapter = None if names is None else names.adapter()
        ports.append(
            SerialPortStatus(
                port, tuple(on_port), names is not None, None if names is None else names.preferred()
            )
        )
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
    return SerialCheck(events, tuple(ports))
