"""`load_config`'s checks across sections and devices, found by writing configs as an OT engineer
does: serial ports named by a link and by its target."""

from __future__ import annotations

from pathlib import Path

from tests.test_config import GOOD, RS485_DEVICES, problems_for, write
from water_edge.agent.config import load_config


def test_a_port_named_by_a_link_and_by_its_target_is_one_port(tmp_path: Path) -> None:
    """/dev/serial/by-id/... in one device and the /dev/ttyUSB0 it leads to in another share one
    port: their line settings must agree (the devices then share the port at run time)."""
    tty = tmp_path / "ttyUSB0"
    tty.touch()
    (tmp_path / "usb-FTDI-if00-port0").symlink_to(tty)
    fake_device = GOOD[GOOD.index('name = "sim"') :]
    rs485 = GOOD.replace(fake_device, RS485_DEVICES)
    linked = rs485.replace('port = "/dev/ttyUSB0"', f'port = "{tty}"', 1).replace(
        'port = "/dev/ttyUSB0"', f'port = "{tmp_path / "usb-FTDI-if00-port0"}"'
    )
    assert [d.name for d in load_config(write(tmp_path, linked)).devices] == ["plc-rtu", "meter-rtu"]
    slower = linked.replace("baudrate = 19200\nunit_id = 2", "baudrate = 9600\nunit_id = 2")
    assert problems_for(tmp_path, slower) == [
        f"{tmp_path / 'agent.toml'}: devices[1] (meter-rtu).port: {tmp_path / 'usb-FTDI-if00-port0'} is also "
        "plc-rtu's, at Modbus RTU 19200 8E1; devices on one port share its protocol and line settings "
        "(got Modbus RTU 9600 8E1)"
    ]
