"""The fixed data structure (CI 73h, or 77h most significant byte first) of old EN 1434-3 meters:
identification, access number, status, two counters with their medium and units.

    ID (4, BCD) | access no | status | medium/unit 1 | medium/unit 2 | counter 1 (4) | counter 2 (4)

Status bit 7 says the counters are binary (else BCD), bit 6 that they are stored (due-date)
values. The medium is spread over the top two bits of both unit bytes; units as in the M-Bus
documentation's fixed-structure table, normalised like the variable structure's.
"""

from __future__ import annotations

from typing import Final

from water_edge.drivers.mbus import values
from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.mbus.records import Record

FIXED_LENGTH: Final = 16

MEDIUM: Final = (
    "other", "oil", "electricity", "gas", "heat", "steam", "hot water", "water",
    "heat cost allocator", "reserved", "gas (mode 2)", "heat (mode 2)", "hot water (mode 2)",
    "water (mode 2)", "heat cost allocator (mode 2)", "reserved",
)  # fmt: skip

# unit code -> (quantity, normalised unit, scale)
_DECADES: Final = (1.0, 10.0, 100.0)
UNITS: Final[dict[int, tuple[str, str, float]]] = {
    **{0x02 + i: ("energy", "Wh", 1.0 * d) for i, d in enumerate(_DECADES)},
    **{0x05 + i: ("energy", "Wh", 1e3 * d) for i, d in enumerate(_DECADES)},
    **{0x08 + i: ("energy", "Wh", 1e6 * d) for i, d in enumerate(_DECADES)},
    **{0x0B + i: ("energy", "J", 1e3 * d) for i, d in enumerate(_DECADES)},
    **{0x0E + i: ("energy", "J", 1e6 * d) for i, d in enumerate(_DECADES)},
    **{0x11 + i: ("energy", "J", 1e9 * d) for i, d in enumerate(_DECADES)},
    **{0x14 + i: ("power", "W", 1.0 * d) for i, d in enumerate(_DECADES)},
    **{0x17 + i: ("power", "W", 1e3 * d) for i, d in enumerate(_DECADES)},
    **{0x1A + i: ("power", "W", 1e6 * d) for i, d in enumerate(_DECADES)},
    **{0x1D + i: ("power", "J/h", 1e3 * d) for i, d in enumerate(_DECADES)},
    **{0x20 + i: ("power", "J/h", 1e6 * d) for i, d in enumerate(_DECADES)},
    **{0x23 + i: ("power", "J/h", 1e9 * d) for i, d in enumerate(_DECADES)},
    **{0x26 + i: ("volume", "m3", 1e-6 * d) for i, d in enumerate(_DECADES)},
    **{0x29 + i: ("volume", "m3", 1e-3 * d) for i, d in enumerate(_DECADES)},
    **{0x2C + i: ("volume", "m3", 1.0 * d) for i, d in enumerate(_DECADES)},
    **{0x2F + i: ("volume_flow", "m3/h", 1e-6 * d) for i, d in enumerate(_DECADES)},
    **{0x32 + i: ("volume_flow", "m3/h", 1e-3 * d) for i, d in enumerate(_DECADES)},
    **{0x35 + i: ("volume_flow", "m3/h", 1.0 * d) for i, d in enumerate(_DECADES)},
    0x38: ("flow_temperature", "degC", 1e-3),
    0x39: ("hca_units", "", 1.0),
    0x3F: ("dimensionless", "", 1.0),
}
SAME_BUT_HISTORIC: Final = 0x3E
STATUS_BINARY: Final = 0x80
STATUS_STORED: Final = 0x40


def _round(value: float) -> int | float:
    """Decimal scales applied without binary noise (0.1 * 3 is 0.3, not 0.30000000000000004);
    whole numbers stay integers while they fit 64 bits."""
    if float(value).is_integer() and abs(value) < values.INT64_MAX:
        return int(value)
    return round(value, 9)


def _counter(raw: bytes, status: int) -> tuple[int | None, str | None]:
    if status & STATUS_BINARY:
        return int.from_bytes(raw, "little", signed=True), None
    return values.bcd(raw)


def fixed_records(data: bytes, *, msb_first: bool) -> tuple[str, int, int, str, list[Record]]:
    """(ID, access number, status, medium name, [counter 1, counter 2]) of a fixed structure."""
    if len(data) != FIXED_LENGTH:
        raise MbusDecodeError(f"fixed data structure is {FIXED_LENGTH} bytes, got {len(data)}")
    ident_raw = data[0:4][::-1] if msb_first else data[0:4]
    access, status = data[4], data[5]
    type1, type2 = data[6], data[7]
    medium = MEDIUM[((type1 & 0xC0) >> 6) | ((type2 & 0xC0) >> 4)]
    storage = 1 if status & STATUS_STORED else 0
    out: list[Record] = []
    for index, (unit_byte, sent) in enumerate(((type1, data[8:12]), (type2, data[12:16]))):
        raw = sent[::-1] if msb_first else sent
        code = unit_byte & 0x3F
        this_storage = storage
        if code == SAME_BUT_HISTORIC and index == 1:
            code, this_storage = type1 & 0x3F, 1
        number, error = _counter(raw, status)
        quantity, unit, scale = UNITS.get(code, ("unknown", "", 1.0))
        value = None if number is None else (number if scale == 1.0 else _round(number * scale))
        out.append(
            Record(
                dif=bytes((unit_byte,)),
                vif=b"",
                data=sent,
                value=value,
                unit=unit,
                quantity=quantity,
                function="instantaneous",
                storage=this_storage,
                tariff=0,
                subunit=0,
                modifiers=("fixed data structure", f"counter {index + 1}"),
                error=error,
            )
        )
    return values.bcd_digits(ident_raw), access, status, medium, out
