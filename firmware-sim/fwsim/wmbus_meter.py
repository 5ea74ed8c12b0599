"""A simulated household water meter with a radio: what the household draws, what the meter
counts (forward and backflow registers), the faults a utility wants found, and its telegrams.

Two kinds, as in the field:
- `compact`: a Kamstrup MULTICAL 21-style meter (C1): ELL with AES-128-CTR, a full frame (CI 78)
  every `full_every` telegrams and compact frames (CI 79) between them; its info codes record
  (VIF FF 20) carries dry/reverse/leak/burst as Kamstrup documents them.
- `oms`: an OMS meter (T1), transport layer encrypted in security mode 5 or 7 (or plain), with
  volume, backflow volume, flow, date-time and error flags (bit 2 tamper, bit 4 backflow: the
  simulator's data sheet, to map with `alarm_bits`), and the status byte's power-low bit.

Consumption: draw events arrive at a rate that follows the time of day (none 01:00-05:00 in a
normal home), each a few to tens of litres over minutes. Faults: a leak behind the meter (a
constant flow), backflow (the register running backwards), tamper, a battery running low, and a
silent household (no draws at all).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final, Literal

from water_edge.sim import wmbus_encode as enc

WATER: Final = 0x16  # cold water
Kind = Literal["compact", "oms"]
Security = Literal["none", "mode5", "mode7", "ell"]
ERROR_TAMPER: Final = 0x04
ERROR_BACKFLOW: Final = 0x10
STATUS_POWER_LOW: Final = 0x04
INFO_DRY, INFO_REVERSE, INFO_LEAK, INFO_BURST = 0x01, 0x02, 0x04, 0x08
# Compact meters' full-frame record layout (DIF/VIF, the format compact frames refer to).
COMPACT_FORMAT: Final = bytes.fromhex("02FF20041304933C4413")


def draw_rate_per_h(hour: float) -> float:
    """Draws per hour of a two-person home: morning and evening peaks, nothing in the small hours."""
    h = hour % 24.0
    if 1.0 <= h < 5.0:
        return 0.0
    return 0.4 + 2.5 * math.exp(-(((h - 7.0) / 1.2) ** 2)) + 2.0 * math.exp(-(((h - 19.5) / 1.8) ** 2))


@dataclass
class MeterSpec:
    ident: int
    kind: Kind = "oms"
    security: Security = "mode5"
    key: bytes = bytes(16)
    interval_s: float = 120.0
    manufacturer: str = "SIM"
    version: int = 0x01
    initial_m3: float = 100.0
    full_every: int = 8


@dataclass
class MeterFaults:
    leak_lph: float = 0.0
    backflow_lph: float = 0.0
    tamper: bool = False
    battery_low: bool = False
    silent: bool = False  # the household draws nothing (watch-over)
    mute: bool = False  # the radio says nothing (a dead meter)


@dataclass
class WirelessMeter:
    spec: MeterSpec
    rng: random.Random
    forward_l: float = 0.0
    backward_l: float = 0.0
    faults: MeterFaults = field(default_factory=MeterFaults)
    access: int = 0
    sent: int = 0
    _draw_l: float = 0.0  # volume left in the draw in progress
    _draw_lph: float = 0.0

    def __post_init__(self) -> None:
        self.forward_l = self.spec.initial_m3 * 1000.0

    @property
    def link_mode(self) -> str:
        return "C1" if self.spec.kind == "compact" else "T1"

    def flow_lph(self) -> float:
        forward = (self._draw_lph if self._draw_l > 0 else 0.0) + self.faults.leak_lph
        return forward - self.faults.backflow_lph

    def advance(self, dt_s: float, hour: float) -> None:
        """Consume for `dt_s` seconds at time of day `hour`."""
        starts = self.rng.random() < draw_rate_per_h(hour) * dt_s / 3600.0
        if starts and not self.faults.silent and self._draw_l <= 0:
            self._draw_l = self.rng.lognormvariate(math.log(12.0), 0.8)
            self._draw_lph = self.rng.uniform(300.0, 900.0)
        if self._draw_l > 0:
            drawn = min(self._draw_l, self._draw_lph * dt_s / 3600.0)
            self._draw_l -= drawn
            self.forward_l += drawn
        self.forward_l += self.faults.leak_lph * dt_s / 3600.0
        self.backward_l += self.faults.backflow_lph * dt_s / 3600.0

    # -- telegrams ------------------------------------------------------------------------------

    def telegram(self, minute_of_epoch: tuple[int, int, int, int, int]) -> bytes:
        """The next telegram (from the L field, no CRCs). `minute_of_epoch`: y, mo, d, h, mi."""
        self.access = (self.access + 1) & 0xFF
        self.sent += 1
        s = self.spec
        addr = enc.address(s.manufacturer, s.ident, s.version, WATER)
        if s.kind == "compact":
            return enc.frame(addr, self._compact_payload(addr))
        return enc.frame(addr, self._oms_payload(addr, minute_of_epoch))

    def _info_code(self) -> int:
        code = INFO_REVERSE if self.faults.backflow_lph > 0 else 0
        return code | (INFO_LEAK if self.faults.leak_lph > 0 else 0)

    def _compact_payload(self, addr: bytes) -> bytes:
        values = (
            self._info_code().to_bytes(2, "little")
            + int(self.forward_l).to_bytes(4, "little")
            + int(self.backward_l).to_bytes(4, "little")
            + int(self.spec.initial_m3 * 1000).to_bytes(4, "little")
        )
        full = bytearray()
        pos = 0
        for dif_vif, size in ((b"\x02\xff\x20", 2), (b"\x04\x13", 4), (b"\x04\x93\x3c", 4), (b"\x44\x13", 4)):
            full += dif_vif + values[pos : pos + size]
            pos += size
        if self.sent % self.spec.full_every == 1:
            application = b"\x78" + bytes(full)
        else:
            signature = enc.crc16(COMPACT_FORMAT).to_bytes(2, "little")
            application = b"\x79" + signature + enc.crc16(bytes(full)).to_bytes(2, "little") + values
        return enc.ell_ctr(addr, self.spec.key, self.access, self.sent, application)

    def _oms_payload(self, addr: bytes, when: tuple[int, int, int, int, int]) -> bytes:
        year, month, day, hour, minute = when
        y = year % 100
        date_f = bytes(
            (minute & 0x3F, hour & 0x1F, (day & 0x1F) | ((y & 0x07) << 5), (month & 0x0F) | ((y & 0x78) << 1))
        )
        errors = (ERROR_TAMPER if self.faults.tamper else 0) | (
            ERROR_BACKFLOW if self.faults.backflow_lph > 0 else 0
        )
        flow = max(-32768, min(32767, round(self.flow_lph())))
        records = (
            b"\x04\x13" + int(self.forward_l).to_bytes(4, "little")
            + b"\x04\x93\x3c" + int(self.backward_l).to_bytes(4, "little")
            + b"\x02\x3b" + flow.to_bytes(2, "little", signed=True)
            + b"\x04\x6d" + date_f
            + b"\x01\xfd\x17" + bytes((errors,))
        )  # fmt: skip
        status = STATUS_POWER_LOW if self.faults.battery_low else 0
        if self.spec.security == "mode5":
            return enc.tpl_mode5(addr, self.spec.key, self.access, status, records)
        if self.spec.security == "mode7":
            return enc.tpl_mode7(addr, self.spec.key, self.access, status, counter=self.sent, records=records)
        return enc.tpl_plain(self.access, status, records)
