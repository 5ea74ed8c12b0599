"""The text output of rtl_wmbus (an RTL-SDR demodulator), one telegram per line:

    T1;1;1;2019-04-03 19:00:42.000;97;148;88888888;0x6e4401068888...

fields: link mode; CRC ok (1/0); frame decoded (1/0); time; RSSI; link quality; ID; the telegram in
hex from the L field with the CRCs removed. Lines with a failed CRC are counted, not delivered.
"""

from __future__ import annotations

from typing import Final

from water_edge.drivers.wmbus.receivers import Received, ReceiverCounters

MAX_LINE: Final = 2048
FIELDS: Final = 8


class RtlWmbus:
    kind = "rtlwmbus"
    rssi_unit = ""

    def __init__(self) -> None:
        self.counters = ReceiverCounters()
        self._buffer = bytearray()
        self.setup_status: int | None = None  # nothing to set up: never answered

    def setup(self, link_modes: tuple[str, ...]) -> list[bytes]:
        return []  # the demodulator is configured on its own command line

    def reset(self) -> None:
        self.counters.garbage_bytes += len(self._buffer)
        self._buffer.clear()

    def feed(self, data: bytes) -> list[Received]:
        self._buffer += data
        out: list[Received] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).strip()
            del self._buffer[: end + 1]
            if line:
                received = self._line(line)
                if received is not None:
                    out.append(received)
        if len(self._buffer) > MAX_LINE:
            self.counters.garbage_bytes += len(self._buffer)
            self._buffer.clear()
        return out

    def _line(self, line: bytes) -> Received | None:
        fields = line.decode("ascii", "replace").split(";")
        if len(fields) != FIELDS or not fields[7].lower().startswith("0x"):
            self.counters.garbage_bytes += len(line) + 1
            return None
        if fields[1] != "1":
            self.counters.crc_errors += 1
            return None
        try:
            raw = bytes.fromhex(fields[7][2:])
        except ValueError:
            self.counters.garbage_bytes += len(line) + 1
            return None
        try:
            rssi: float | None = float(fields[4])
        except ValueError:
            rssi = None
        self.counters.frames += 1
        return Received(raw, rssi, fields[0] or None, rssi_unit=self.rssi_unit)
