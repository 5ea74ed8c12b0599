"""The opt-in Modbus write capability shared by the TCP and RTU drivers: validation, and the only
function codes a write may use, 5/6 (single coil/register) and 15/16 (multiple).

Nothing else is ever sent on a write path: no diagnostics (8), no file or programming functions,
no read/write-multiple (23). Allow-lists and audit live above this module (security layer); here a
write is checked for shape (table, address range, 0..65535 registers, at most 123 registers or
1968 coils per request). The drivers translate the answer (`adapter.py`): an exception reply
raises `DeviceError` with the code, no answer raises `DriverIOError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Final, Literal

from water_edge.drivers.modbus.adapter import ModbusClient, ModbusPDU
from water_edge.drivers.modbus.config import ADDRESS_SPACE

WriteTable = Literal["holding", "coil"]
WRITE_FUNCTION_CODES: Final = frozenset({5, 6, 15, 16})
MAX_WRITE_REGISTERS: Final = 123
MAX_WRITE_COILS: Final = 1968


def check_write(
    table: str, address: int, values: Sequence[int] | Sequence[bool]
) -> tuple[int, list[int] | list[bool]]:
    """The function code for this write, and its values normalised; ValueError if malformed."""
    n = len(values)
    if table not in ("holding", "coil"):
        raise ValueError(f"writes go to 'holding' registers or 'coil's, not {table!r}")
    if n == 0:
        raise ValueError("nothing to write")
    if not address >= 0 or address + n > ADDRESS_SPACE:
        raise ValueError(f"address {address} + {n} value(s) is outside 0..65535")
    if table == "coil":
        if n > MAX_WRITE_COILS:
            raise ValueError(f"at most {MAX_WRITE_COILS} coils per write")
        bits = [bool(v) for v in values]
        return (5 if n == 1 else 15), bits
    if n > MAX_WRITE_REGISTERS:
        raise ValueError(f"at most {MAX_WRITE_REGISTERS} registers per write")
    regs = [int(v) for v in values]
    if any(isinstance(v, bool) for v in values) or not all(0 <= r <= 0xFFFF for r in regs):
        raise ValueError("register values must be integers 0..65535")
    return (6 if n == 1 else 16), regs


def write_call(
    client: ModbusClient, fc: int, address: int, values: list[int] | list[bool], unit_id: int
) -> Awaitable[ModbusPDU]:
    """The pymodbus coroutine for function code `fc` (one of WRITE_FUNCTION_CODES)."""
    if fc == 5:
        return client.write_coil(address, bool(values[0]), device_id=unit_id)
    if fc == 6:
        return client.write_register(address, int(values[0]), device_id=unit_id)
    if fc == 15:
        return client.write_coils(address, [bool(v) for v in values], device_id=unit_id)
    if fc == 16:
        return client.write_registers(address, [int(v) for v in values], device_id=unit_id)
    raise ValueError(f"function code {fc} is not a write this driver sends")
