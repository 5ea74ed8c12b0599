"""The alarm flags a water meter's telegram carries, by name: from the transport header's status
byte (EN 13757-3), from tables manufacturers publish, and from bits the operator maps from a data
sheet (`alarm_bits`). Only flags the telegram actually carries are reported: a meter without a
leak flag never reads "no leak".

Published tables: Kamstrup MULTICAL 21 / flowIQ (KAM, KAW) "info codes" record (manufacturer VIF
FF 20 or FF 23): bit 0 dry, bit 1 reverse flow, bit 2 leak, bit 3 burst (current state; the other
bits hold how long each lasted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from water_edge.drivers.mbus.records import Record
from water_edge.drivers.wmbus.config import AlarmBit

STATUS_POWER_LOW: Final = 0x04
STATUS_PERMANENT_ERROR: Final = 0x08
STATUS_TEMPORARY_ERROR: Final = 0x10
KAMSTRUP: Final = frozenset({"KAM", "KAW"})
KAMSTRUP_INFO_VIFS: Final = frozenset({b"\xff\x20", b"\xff\x23"})
KAMSTRUP_INFO_BITS: Final = (("dry", 0), ("backflow", 1), ("leak", 2), ("burst", 3))


def _as_int(record: Record) -> int | None:
    if isinstance(record.value, bool):
        return int(record.value)
    if isinstance(record.value, int):
        return record.value
    if record.quantity in ("manufacturer_specific", "unknown") and record.data:
        return int.from_bytes(record.data, "little")
    return None


def alarm_flags(
    manufacturer: str, status: int | None, records: Sequence[Record], mapped: Sequence[AlarmBit]
) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    if status is not None:
        flags["battery"] = bool(status & STATUS_POWER_LOW)
        app = status & 0x03
        flags["error"] = bool(status & (STATUS_PERMANENT_ERROR | STATUS_TEMPORARY_ERROR)) or app == 2
        flags["alarm"] = app == 3
    if manufacturer in KAMSTRUP:
        info = next((r for r in records if r.vif in KAMSTRUP_INFO_VIFS and r.storage == 0), None)
        code = None if info is None else _as_int(info)
        if code is not None:
            for name, position in KAMSTRUP_INFO_BITS:
                flags[name] = bool(code >> position & 1)
    for entry in mapped:
        source = status if entry.record == "status" else _mapped_record_value(records, entry.record)
        if source is not None:
            flags[entry.alarm] = flags.get(entry.alarm, False) or bool(source >> entry.bit & 1)
    return flags


def _mapped_record_value(records: Sequence[Record], quantity: str) -> int | None:
    record = next((r for r in records if r.quantity == quantity and r.storage == 0), None)
    return None if record is None else _as_int(record)
