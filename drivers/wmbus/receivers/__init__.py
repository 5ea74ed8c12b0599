"""Receivers of wireless M-Bus telegrams: each is an incremental parser of what its device sends
(`feed(bytes) -> [Received]`) and the commands that set it up (`setup(link_modes)`); the driver
owns the byte stream. Kinds: `im871a` (IMST iM871A, WiMOD HCI), `amb8465` (Amber/Würth AMB8465
command mode), `rtlwmbus` (the text lines of rtl_wmbus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

LINK_MODES = ("T1", "C1", "S1")


@dataclass(frozen=True, slots=True)
class Received:
    """One telegram as the receiver delivered it: from the L field on (CRCs removed by the
    receiver, or still there: the decoder accepts both)."""

    raw: bytes
    rssi: float | None = None
    link_mode: str | None = None
    rssi_unit: str = "dBm"  # rtl_wmbus prints an uncalibrated figure: unit ""


@dataclass
class ReceiverCounters:
    frames: int = 0  # telegrams delivered
    garbage_bytes: int = 0  # bytes skipped while looking for a frame
    crc_errors: int = 0  # frames the receiver itself marked or we found corrupted


class Receiver(Protocol):
    kind: str
    # What its signal levels are in: the sticks report dBm; rtl_wmbus an uncalibrated figure of its
    # own ("": comparable only with itself).
    rssi_unit: str
    counters: ReceiverCounters
    # The status byte of the stick's answer to the last set-up command (0: done), None until one
    # arrives; the driver clears it before sending set-up commands.
    setup_status: int | None

    def setup(self, link_modes: tuple[str, ...]) -> list[bytes]:
        """Commands to write once the stream is open (none for a listen-only source)."""
        ...

    def feed(self, data: bytes) -> list[Received]:
        """Bytes as they arrived; the telegrams they complete."""
        ...

    def reset(self) -> None:
        """Forget a frame or line begun before the stream was lost (its bytes count as garbage): what
        a reopened stream sends starts afresh."""
        ...


def build(kind: str) -> Receiver:
    if kind == "im871a":
        from water_edge.drivers.wmbus.receivers.im871a import Im871a

        return Im871a()
    if kind == "amb8465":
        from water_edge.drivers.wmbus.receivers.amber import Amb8465

        return Amb8465()
    if kind == "rtlwmbus":
        from water_edge.drivers.wmbus.receivers.rtlwmbus import RtlWmbus

        return RtlWmbus()
    raise ValueError(f"unknown receiver {kind!r}")
