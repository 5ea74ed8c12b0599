"""A simulated M-Bus water meter: identity, registers fed by the pump station, and the EN 13757-3
RSP_UD telegrams it answers with (volume, flow, temperature, date-time, due-date storage values,
error flags, a manufacturer-specific trailer; optionally a second telegram with monthly values).
A meter given a `key` encrypts everything after its long header with OMS security mode 5
(AES-128-CBC, IV = manufacturer + address + access number x 8, 2F 2F check bytes, 2F fillers), as
OMS wired meters do.

Encoding is written here independently of the agent's decoder so the two check each other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final

from water_edge.sim.wmbus_encode import cbc_encrypt, pad_blocks

CI_LONG_HEADER: Final = 0x72
CI_NO_HEADER: Final = 0x78
WATER: Final = 0x07
RSP_UD: Final = 0x08

# Status byte bits (EN 13757-3 table 'status field').
STATUS_APPLICATION_BUSY: Final = 0x01
STATUS_APPLICATION_ERROR: Final = 0x02
STATUS_POWER_LOW: Final = 0x04
STATUS_PERMANENT_ERROR: Final = 0x08
STATUS_TEMPORARY_ERROR: Final = 0x10

MONTHLY_VALUES: Final = 4  # storage numbers 2.. in the second telegram


def manufacturer_field(code: str) -> int:
    return ((ord(code[0]) - 64) << 10) | ((ord(code[1]) - 64) << 5) | (ord(code[2]) - 64)


def bcd(value: int, nbytes: int) -> bytes:
    """Little-endian packed BCD of a non-negative integer (the low digits when it does not fit)."""
    digits = f"{value:0{nbytes * 2}d}"[-nbytes * 2 :]
    return bytes.fromhex(digits)[::-1]


def type_f(t: dt.datetime, *, invalid: bool = False) -> bytes:
    """Date-time type F: minute, hour, day + year bits, month + year bits (local time, IV, SU=0)."""
    year = t.year % 100
    return bytes(
        (
            (t.minute & 0x3F) | (0x80 if invalid else 0),
            t.hour & 0x1F,
            (t.day & 0x1F) | ((year & 0x07) << 5),
            (t.month & 0x0F) | ((year & 0x78) << 1),
        )
    )


def type_g(d: dt.date) -> bytes:
    year = d.year % 100
    return bytes(((d.day & 0x1F) | ((year & 0x07) << 5), (d.month & 0x0F) | ((year & 0x78) << 1)))


@dataclass
class MeterSpec:
    address: int
    ident: int  # 8 decimal digits
    manufacturer: str = "ZRI"
    version: int = 0x01
    medium: int = WATER
    share: float = 0.25  # of the station's outflow that passes this meter
    initial_m3: float = 100.0
    multi_telegram: bool = False
    key: bytes | None = None  # AES-128: the telegrams' data encrypted with OMS mode 5
    baudrate: int | None = None  # the meter's own line speed (None: the bus's); it hears no other
    # Answers with CI 78h, records without a data header, as some plain meters do: it is selected by
    # its secondary address all the same, but its answers do not name it (plain data only).
    no_header: bool = False


@dataclass
class MeterState:
    """What the meter shows besides the plant's flow; tests and faults change it."""

    status: int = 0
    error_flags: int = 0
    access_number: int = 0
    # The FCB of the last REQ_UD2 and which telegram answered it (multi-telegram sequencing).
    last_fcb: int | None = None
    telegram_index: int = 0
    last_answer: bytes | None = None
    selected: bool = False
    # A faulty meter that takes every selection as its own: it acknowledges any SND_UD to 0xFD and
    # answers REQ_UD2 there, in its neighbours' place or over them.
    ignores_select: bool = False
    faults: dict[str, int] = field(default_factory=dict)


class WaterMeter:
    def __init__(self, spec: MeterSpec, totaliser_start_m3: float) -> None:
        self.spec = spec
        self.state = MeterState()
        self._totaliser0 = totaliser_start_m3

    # --- what the meter measures -------------------------------------------------------------
    def volume_m3(self, totaliser_m3: float) -> float:
        return self.spec.initial_m3 + self.spec.share * max(0.0, totaliser_m3 - self._totaliser0)

    def volume_litres(self, totaliser_m3: float) -> int:
        return int(self.volume_m3(totaliser_m3) * 1000.0)

    def flow_lph(self, outflow_m3h: float) -> int:
        return round(self.spec.share * outflow_m3h * 1000.0)

    @staticmethod
    def due_date(now: dt.datetime) -> dt.date:
        """The last 1 January: the due date whose volume storage 1 holds."""
        return dt.date(now.year, 1, 1)

    def due_date_litres(self, totaliser_m3: float) -> int:
        return int(self.spec.initial_m3 * 1000.0 * 0.9)

    def monthly_litres(self, storage: int) -> int:
        return int(self.spec.initial_m3 * 1000.0 * (1.0 - 0.02 * storage))

    # --- secondary addressing ----------------------------------------------------------------
    def secondary(self) -> bytes:
        man = manufacturer_field(self.spec.manufacturer)
        return bcd(self.spec.ident, 4) + bytes((man & 0xFF, man >> 8, self.spec.version, self.spec.medium))

    def matches(self, mask: bytes) -> bool:
        """Selection: ID nibbles F match any digit, FF/FFFF match any manufacturer/version/medium."""
        mine = self.secondary()
        for i in range(4):
            for shift in (0, 4):
                want = (mask[i] >> shift) & 0x0F
                if want != 0x0F and want != (mine[i] >> shift) & 0x0F:
                    return False
        if mask[4:6] != b"\xff\xff" and mask[4:6] != mine[4:6]:
            return False
        return all(mask[i] == 0xFF or mask[i] == mine[i] for i in (6, 7))

    # --- telegrams ---------------------------------------------------------------------------
    def telegram_count(self) -> int:
        return 2 if self.spec.multi_telegram else 1

    def user_data(
        self, index: int, totaliser_m3: float, outflow_m3h: float, water_c: float, now: dt.datetime
    ) -> bytes:
        """CI + long header + records of telegram `index` (0-based)."""
        self.state.access_number = (self.state.access_number + 1) & 0xFF
        header = self.secondary() + bytes((self.state.access_number, self.state.status, 0, 0))
        last = index == self.telegram_count() - 1
        if index == 0:
            records = (
                b"\x0c\x13"
                + bcd(self.volume_litres(totaliser_m3), 4)  # volume, 8-digit BCD, litres
                + b"\x04\x6d"
                + type_f(now)  # date-time, type F
                + b"\x04\x3b"
                + self.flow_lph(outflow_m3h).to_bytes(4, "little", signed=True)  # l/h
                + b"\x02\x59"
                + round(water_c * 100).to_bytes(2, "little", signed=True)  # 0.01 degC
                + b"\x42\x6c"
                + type_g(self.due_date(now))  # storage 1: due date
                + b"\x4c\x13"
                + bcd(self.due_date_litres(totaliser_m3), 4)  # storage 1: volume at due date
                + b"\x01\xfd\x17"
                + bytes((self.state.error_flags & 0xFF,))  # error flags
            )
        else:
            records = b""
            for storage in range(2, 2 + MONTHLY_VALUES):
                dif = 0x8C | ((storage & 0x01) << 6)
                records += bytes((dif, (storage >> 1) & 0x0F, 0x13)) + bcd(self.monthly_litres(storage), 4)
        trailer = (b"\x0f" if last else b"\x1f") + b"SIM" + bytes((self.spec.address,))
        if self.spec.no_header:
            return bytes((CI_NO_HEADER,)) + records + trailer
        if self.spec.key is None:
            return bytes((CI_LONG_HEADER,)) + header + records + trailer
        plain = pad_blocks(b"\x2f\x2f" + records + trailer)
        config = (5 << 8) | ((len(plain) // 16) << 4)  # mode 5, the number of encrypted blocks
        sec = self.secondary()
        iv = sec[4:6] + sec[0:4] + sec[6:8] + bytes((self.state.access_number,)) * 8
        header = header[:10] + config.to_bytes(2, "little")
        return bytes((CI_LONG_HEADER,)) + header + cbc_encrypt(self.spec.key, iv, plain)
