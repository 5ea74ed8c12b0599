"""Read Device Identification (Modbus function 43, MEI type 14) for the simulated units: who a
commissioning scan finds at each unit ID, as PLCs, drives and meters that implement it tell.

Basic objects only (0 VendorName, 1 ProductCode, 2 MajorMinorRevision), all in one answer (no
"more follows"). A unit ID the plant does not have is answered as a gateway answers it (exception
11), on TCP and RTU alike through `answer_pdu`; the TCP face hands the objects to pymodbus.
"""

from __future__ import annotations

import struct
from typing import Final

from water_edge.sim.registers import METER_UNIT, STATION_UNIT

FUNCTION: Final = 0x2B
MEI_READ_DEVICE_ID: Final = 0x0E
BASIC: Final = 1
SPECIFIC: Final = 4
CONFORMITY_BASIC_STREAM: Final = 0x01

IDENTITIES: Final[dict[int, tuple[str, str, str]]] = {
    STATION_UNIT: ("firmware-sim", "PS-3 pump station PLC", "2.4"),
    METER_UNIT: ("firmware-sim", "FM-100 flow meter", "1.1"),
}


def objects(unit_id: int, read_code: int, object_id: int) -> dict[int, bytes] | int:
    """The identification objects unit `unit_id` answers with, or the exception code."""
    identity = IDENTITIES.get(unit_id)
    if identity is None:
        return 11  # gateway target device failed to respond
    basic = {i: text.encode("ascii") for i, text in enumerate(identity)}
    if read_code == BASIC:
        return basic
    if read_code == SPECIFIC:
        return {object_id: basic[object_id]} if object_id in basic else 2
    return 3  # regular and extended objects are not served


def answer_pdu(unit_id: int, pdu: bytes) -> bytes:
    """The answer PDU to a function 43 request `pdu` (function code first)."""
    if len(pdu) != 4 or pdu[1] != MEI_READ_DEVICE_ID:
        return bytes([FUNCTION | 0x80, 1])
    read_code, object_id = pdu[2], pdu[3]
    found = objects(unit_id, read_code, object_id)
    if isinstance(found, int):
        return bytes([FUNCTION | 0x80, found])
    body = b"".join(struct.pack(">BB", i, len(data)) + data for i, data in found.items())
    more_follows, next_object = 0, 0
    head = struct.pack(
        ">BBBBBBB", FUNCTION, MEI_READ_DEVICE_ID, read_code, CONFORMITY_BASIC_STREAM,
        more_follows, next_object, len(found),
    )  # fmt: skip
    return head + body
