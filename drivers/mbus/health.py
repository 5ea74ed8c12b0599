"""The M-Bus driver's typed health (`core.health.Health`): its meter and link counters as the status
document shows them under the device's `driver`, and its own status lines."""

from __future__ import annotations

from dataclasses import dataclass, field

from water_edge.drivers.serial_bus import SerialBusHealth


@dataclass(frozen=True, slots=True)
class MbusHealth:
    open: bool
    port: str
    polls: int
    meter_reads: int
    meter_failures: int  # meter reads that gave bad readings (timeout, bad frame, undecodable)
    decode_errors: int  # telegrams that arrived intact but could not be decoded
    requests: int  # link level: frames sent, retries included
    retries: int
    timeouts: int
    checksum_errors: int
    frame_errors: int
    wrong_meter: int  # secondary reads answered by another meter's telegram (never stored)
    bus: SerialBusHealth | None  # the shared port, None while the device is not open
    stray_answers: int = 0  # answers of the wrong kind or from another address (a late one), asked again
    noise_bytes: int = 0  # bytes of line noise skipped in front of answers
    no_key: int = 0  # encrypted telegrams of meters without a usable key
    wrong_key: int = 0  # telegrams the configured key does not decrypt
    bad_mac: int = 0  # mode 7 telegrams whose AFL MAC does not match (altered, or no MAC)
    meters_without_key: list[str] = field(default_factory=list)  # latest telegram encrypted, no key
    meters_wrong_key: list[str] = field(default_factory=list)  # latest telegram not decrypted by the key

    def status_lines(self) -> list[str]:
        lines = [
            f"meter reads {self.meter_reads}  failures {self.meter_failures}  decode errors "
            f"{self.decode_errors}  open {'yes' if self.open else 'no'}",
            f"link requests {self.requests}  retries {self.retries}  timeouts {self.timeouts}  "
            f"checksum errors {self.checksum_errors}  frame errors {self.frame_errors}  wrong meter "
            f"{self.wrong_meter}  stray answers {self.stray_answers}  noise bytes {self.noise_bytes}",
        ]
        if self.meters_without_key:
            lines.append("encrypted, without key: " + ", ".join(self.meters_without_key))
        if self.meters_wrong_key:
            lines.append("key does not decrypt: " + ", ".join(self.meters_wrong_key))
        return [*lines, *(self.bus.status_lines() if self.bus is not None else [])]
