"""The typed health of the Modbus TCP and RTU drivers (`core.health.Health`): the counters the
status document shows under each device's `driver`, and the driver's own status line."""

from __future__ import annotations

from dataclasses import dataclass

from water_edge.drivers.serial_bus import SerialBusHealth


def _request_line(requests: int, errors: int, timeouts: int, exceptions: int, bad_frames: int = 0) -> str:
    line = f"requests {requests}  errors {errors}"
    if errors:
        frames = f", bad frames {bad_frames}" if bad_frames else ""
        line += f" (timeouts {timeouts}{frames}, exceptions {exceptions})"
    return line


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


@dataclass(frozen=True, slots=True)
class ModbusTcpHealth:
    requests: int
    errors: int  # requests without good data
    timeouts: int
    exceptions: int
    last_ok_ns: int | None
    connected: bool
    reconnects: int = 0  # connections the device closed between requests, or under a read

    def status_lines(self) -> list[str]:
        counts = _request_line(self.requests, self.errors, self.timeouts, self.exceptions)
        line = f"{counts}  connected {_yes_no(self.connected)}"
        return [line + f"  reconnects {self.reconnects}" if self.reconnects else line]


@dataclass(frozen=True, slots=True)
class ModbusRtuHealth:
    requests: int
    errors: int  # requests without good data
    timeouts: int
    exceptions: int
    writes: int
    last_ok_ns: int | None
    connected: bool
    bus: SerialBusHealth | None  # the shared port, None while the device is not open
    # Requests unanswered although bytes came back (no whole frame with a good CRC: noise, wiring,
    # line settings); `timeouts` counts those after which nothing came at all.
    bad_frames: int = 0

    def status_lines(self) -> list[str]:
        counts = _request_line(self.requests, self.errors, self.timeouts, self.exceptions, self.bad_frames)
        line = f"{counts}  writes {self.writes}  connected {_yes_no(self.connected)}"
        return [line, *(self.bus.status_lines() if self.bus is not None else [])]
