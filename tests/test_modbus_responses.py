"""Register-read answers decoded by `drivers.modbus.responses`, registered with every real client:
the same registers pymodbus's own classes give, for any frame, and a log line without them."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from water_edge.drivers.modbus.adapter import pymodbus_serial_client, pymodbus_tcp_client
from water_edge.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from water_edge.drivers.modbus.responses import HoldingRegistersAnswer, InputRegistersAnswer


@given(st.binary(min_size=0, max_size=252), st.integers(0, 255))
def test_the_same_registers_as_pymodbus_for_any_frame(payload: bytes, byte_count: int) -> None:
    data = bytes([byte_count]) + payload
    theirs, ours = ReadHoldingRegistersResponse(), HoldingRegistersAnswer()
    try:
        theirs.decode(data)
    except ModbusIOException:
        with pytest.raises(ModbusIOException, match=f"byte_count {byte_count} > length of packet"):
            ours.decode(data)
        return
    ours.decode(data)
    assert ours.registers == theirs.registers
    assert ours.wire == struct.pack(f">{len(theirs.registers)}H", *theirs.registers)


def test_a_log_line_names_the_count_not_every_register() -> None:
    answer = InputRegistersAnswer()
    answer.decode(bytes([250]) + bytes(range(250)))
    assert len(answer.registers) == 125
    assert str(answer) == "InputRegistersAnswer(dev_id=0, transaction_id=0, registers=125)"


async def test_every_real_client_decodes_register_reads_with_them() -> None:
    tags = [{"name": "v", "address": 0}]
    tcp = pymodbus_tcp_client(
        ModbusTcpConfig.model_validate(
            {"name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "tags": tags}
        ),
        lambda _connected: None,
    )
    rtu = pymodbus_serial_client(
        ModbusRtuConfig.model_validate(
            {"name": "m", "kind": "modbus_rtu", "port": "/dev/ttyUSB0", "tags": tags}
        )
    )
    for client in (tcp, rtu):
        decoder = client.ctx.framer.decoder  # type: ignore[attr-defined]
        holding = decoder.decode(bytes([3, 4, 0x12, 0x34, 0xAB, 0xCD]))
        inputs = decoder.decode(bytes([4, 2, 0x00, 0x07]))
        assert type(holding) is HoldingRegistersAnswer
        assert holding.registers == [0x1234, 0xABCD]
        assert holding.wire == b"\x12\x34\xab\xcd"
        assert type(inputs) is InputRegistersAnswer
        assert inputs.registers == [7]
