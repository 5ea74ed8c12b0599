"""A serial port one program holds is refused to a second, in words: `probe --listen` on the stick
the running agent reads heard nothing and said nothing (each got some of the frames), while an RTU
port (pymodbus takes the same lock) said it was in use."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from water_edge.core.errors import DriverIOError
from water_edge.drivers.mbus.link import MbusMaster
from water_edge.drivers.wmbus.transport import open_path

IN_USE = "in use by another program (the agent reading it? stop it first: systemctl stop edge-agent)"


@pytest.fixture
def tty() -> Iterator[str]:
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


async def test_a_wmbus_stick_is_one_programs(tty: str) -> None:
    first = await open_path(tty, 57600)
    try:
        with pytest.raises(DriverIOError) as second:
            await open_path(tty, 57600)
        assert str(second.value) == f"{tty}: cannot open: {IN_USE}"
    finally:
        await first.aclose()
    again = await open_path(tty, 57600)  # released with its holder
    await again.aclose()


def test_an_mbus_line_is_one_programs(tty: str) -> None:
    first = MbusMaster(tty, 2400)
    first.open()
    try:
        with pytest.raises(DriverIOError) as second:
            MbusMaster(tty, 2400).open()
    finally:
        first.close()
    assert str(second.value).endswith(f"cannot open: {IN_USE}")
