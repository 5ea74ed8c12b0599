"""Register-read answers (function codes 3 and 4) as the drivers read them, registered with each
pymodbus client (`client.register`, pymodbus's API for custom responses).

pymodbus 3.16 decodes such an answer one register at a time in Python and then, for a debug log
line that is built whether or not debug is on, renders every register into a string: at 10,000
tags a second that was a tenth of the agent's CPU. These classes decode the block in one `struct`
call, keep its bytes as they came off the wire (`wire`, what the codec reads values from, so the
registers are not packed back into bytes), and leave the registers out of `str()`. What they
accept and refuse is pymodbus's own: a byte count the frame cannot hold is a `ModbusIOException`;
an odd byte count drops the last byte.
"""

from __future__ import annotations

import struct

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse


class HoldingRegistersAnswer(ReadHoldingRegistersResponse):
    """A function 3 answer: `registers` as pymodbus gives them, and `wire`, their bytes."""

    wire: bytes = b""

    def decode(self, data: bytes) -> None:
        byte_count = int(data[0])
        if byte_count >= len(data):
            raise ModbusIOException(
                f"byte_count {byte_count} > length of packet {len(data)}", function_code=self.function_code
            )
        n = byte_count // 2
        self.wire = bytes(data[1 : 1 + 2 * n])
        self.registers = list(struct.unpack(f">{n}H", self.wire))

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id}, "
            f"registers={len(self.registers)})"
        )


class InputRegistersAnswer(HoldingRegistersAnswer):
    """A function 4 answer."""

    function_code = 4
