"""Amber (Würth Elektronik) AMB8465 wM-Bus USB stick in command mode, 9600 Bd.

    FF | command | length | payload | XOR of all preceding bytes

A received telegram is command 03h (DATA_IND); its payload starts at the C field (the length
replaces the L field; the link layer's CRCs are gone) and, as the stick is configured by default,
ends with one RSSI byte. Setting the link mode: SET_MODE (04h), volatile.
"""

from __future__ import annotations

from functools import reduce
from typing import Final

from water_edge.drivers.wmbus.receivers import Received, ReceiverCounters
from water_edge.drivers.wmbus.receivers.framing import FrameSplitter

SOF: Final = 0xFF
DATA_IND: Final = 0x03
SET_MODE_REQ: Final = 0x04
CONFIRMATION: Final = 0x80  # a command's confirmation is the command | 80h
# SET_MODE values for a collector (the "other" role) in the AMB8465 manual.
LINK_MODE_CODES: Final = {"S1": 0x03, "T1": 0x08, "C1": 0x0E}


def checksum(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def command(cmd: int, payload: bytes = b"") -> bytes:
    head = bytes((SOF, cmd, len(payload))) + payload
    return head + bytes((checksum(head),))


def rssi_dbm(raw: int) -> float:
    """The stick's RSSI byte in dBm (two's complement half-dB steps, offset -74 dBm)."""
    signed = raw - 256 if raw >= 128 else raw
    return signed / 2 - 74.0


class Amb8465:
    kind = "amb8465"
    rssi_unit = "dBm"

    def __init__(self, rssi_appended: bool = True) -> None:
        self.counters = ReceiverCounters()
        self._frames = FrameSplitter(
            SOF,
            3,
            lambda head: 3 + head[2] + 1,
            lambda frame: checksum(frame[:-1]) == frame[-1],
            self.counters,
        )
        self._rssi = rssi_appended
        self.setup_status: int | None = None

    def setup(self, link_modes: tuple[str, ...]) -> list[bytes]:
        mode = LINK_MODE_CODES[link_modes[0]] if link_modes else LINK_MODE_CODES["T1"]
        return [command(SET_MODE_REQ, bytes((mode,)))]

    def reset(self) -> None:
        self._frames.reset()

    def feed(self, data: bytes) -> list[Received]:
        out: list[Received] = []
        for frame in self._frames.feed(data):
            if frame[1] == SET_MODE_REQ | CONFIRMATION and frame[2] >= 1:
                self.setup_status = frame[3]
                continue
            if frame[1] != DATA_IND or frame[2] < 10 + (1 if self._rssi else 0):
                continue  # another command's confirmation
            payload = frame[3:-1]
            rssi = None
            if self._rssi:
                payload, rssi = payload[:-1], rssi_dbm(payload[-1])
            self.counters.frames += 1
            out.append(Received(bytes((len(payload),)) + payload, rssi))
        return out
