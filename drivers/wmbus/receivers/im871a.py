"""IMST iM871A (WiMOD wM-Bus) USB stick, host controller interface (HCI) over its serial port.

    A5 | ctrl<<4 | endpoint | msg id | length | payload | [timestamp 4] [RSSI 1] [CRC16 2]

A received telegram is endpoint 2 (radio link), message 03h; its payload starts at the C field
(the stick drops the L field, which the length gives, and the link layer's CRCs). The optional CRC
is CRC-16/CCITT (reflected, initial FFFF, complemented), LSB first, over everything after A5.
Setting the link mode: endpoint 1 (device management), SET_CONFIG (03h), in RAM only.
"""

from __future__ import annotations

from typing import Final

from water_edge.drivers.wmbus.receivers import Received, ReceiverCounters
from water_edge.drivers.wmbus.receivers.framing import FrameSplitter

SOF: Final = 0xA5
DEVMGMT: Final = 0x01
RADIOLINK: Final = 0x02
WMBUSMSG_IND: Final = 0x03
SET_CONFIG_REQ: Final = 0x03
SET_CONFIG_RSP: Final = 0x04
HAS_TIMESTAMP: Final = 0x20
HAS_RSSI: Final = 0x40
HAS_CRC: Final = 0x80
# SET_CONFIG link mode values (iM871A HCI specification).
LINK_MODE_CODES: Final = {"S1": 0x00, "T1": 0x03, "C1": 0x06}


def crc_ccitt(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def rssi_dbm(raw: int) -> float:
    """The stick's RSSI byte in dBm (linear over -126.7 .. -0.7 dBm, as IMST specifies it)."""
    return round(raw * 80.0 / 150.0 - 100.0 - 4000.0 / 150.0, 1)


def message(endpoint: int, msg_id: int, payload: bytes = b"", *, crc: bool = True) -> bytes:
    """An HCI message as the host sends it (and as firmware-sim's stick answers)."""
    head = bytes(((HAS_CRC if crc else 0) | endpoint, msg_id, len(payload))) + payload
    tail = crc_ccitt(head).to_bytes(2, "little") if crc else b""
    return bytes((SOF,)) + head + tail


def _frame_size(head: bytearray) -> int:
    ctrl = head[1] & 0xF0
    size = 4 + head[3] + (4 if ctrl & HAS_TIMESTAMP else 0) + (1 if ctrl & HAS_RSSI else 0)
    return size + (2 if ctrl & HAS_CRC else 0)


def _crc_ok(frame: bytes) -> bool:
    if not frame[1] & HAS_CRC:
        return True
    return crc_ccitt(frame[1:-2]) == int.from_bytes(frame[-2:], "little")


class Im871a:
    kind = "im871a"
    rssi_unit = "dBm"

    def __init__(self) -> None:
        self.counters = ReceiverCounters()
        self._frames = FrameSplitter(SOF, 4, _frame_size, _crc_ok, self.counters)
        self.setup_status: int | None = None

    def setup(self, link_modes: tuple[str, ...]) -> list[bytes]:
        mode = LINK_MODE_CODES[link_modes[0]] if link_modes else LINK_MODE_CODES["T1"]
        # NVM flag 0 (RAM), IIFlag1 bit 0 device mode + bit 1 link mode; device mode 0 (other).
        return [message(DEVMGMT, SET_CONFIG_REQ, bytes((0x00, 0x03, 0x00, mode)))]

    def reset(self) -> None:
        self._frames.reset()

    def feed(self, data: bytes) -> list[Received]:
        out: list[Received] = []
        for frame in self._frames.feed(data):
            if frame[1] & 0x0F == DEVMGMT and frame[2] == SET_CONFIG_RSP and frame[3] >= 1:
                self.setup_status = frame[4]
                continue
            received = self._message(frame, frame[1] & 0xF0)
            if received is not None:
                self.counters.frames += 1
                out.append(received)
        return out

    @staticmethod
    def _message(frame: bytes, ctrl: int) -> Received | None:
        endpoint, msg_id, length = frame[1] & 0x0F, frame[2], frame[3]
        if endpoint != RADIOLINK or msg_id != WMBUSMSG_IND or length < 10:
            return None  # answers to our commands, status indications
        payload = frame[4 : 4 + length]
        rssi = None
        if ctrl & HAS_RSSI:
            rssi = rssi_dbm(frame[4 + length + (4 if ctrl & HAS_TIMESTAMP else 0)])
        return Received(bytes((len(payload),)) + payload, rssi)
