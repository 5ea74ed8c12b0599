"""firmware-sim M-Bus meters: frames checked by independent code here, values against the meter model."""

from __future__ import annotations

import datetime as dt
import os
import select
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from water_edge.drivers.mbus.telegram import decode_frame
from water_edge.sim.component import SimContext
from water_edge.sim.mbus_bus import MbusBus, MbusComponent
from water_edge.sim.pumpstation import PumpStation


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[MbusBus]:
    station = PumpStation(3)
    station.step(50)
    ctx = SimContext(
        station=station, points=[], seed=3, host="127.0.0.1", workdir=tmp_path, options={"baudrate": 9600}
    )
    component = MbusComponent()
    await component.start(ctx)
    assert component.bus is not None
    yield component.bus
    await component.stop()


class Line:
    """The agent side of the pty, raw, with no project code in between."""

    def __init__(self, path: str) -> None:
        import tty

        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def receive(self, quiet_s: float = 0.15, first_s: float = 1.0) -> bytes:
        import asyncio

        out = b""
        deadline = time.monotonic() + first_s
        while True:
            wait = quiet_s if out else max(0.0, deadline - time.monotonic())
            ready: tuple[list[int], list[int], list[int]]
            ready = await asyncio.to_thread(select.select, [self.fd], [], [], wait)
            if not ready[0]:
                return out
            out += os.read(self.fd, 4096)

    def close(self) -> None:
        os.close(self.fd)


def short(c: int, a: int) -> bytes:
    return bytes((0x10, c, a, (c + a) % 256, 0x16))


def long(c: int, a: int, ci: int, data: bytes) -> bytes:
    body = bytes((c, a, ci)) + data
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) % 256, 0x16))


def check_long_frame(raw: bytes) -> None:
    """EN 13757-2 long frame, checked without the project's frame code."""
    assert raw[0] == 0x68
    assert raw[3] == 0x68
    assert raw[-1] == 0x16
    assert raw[1] == raw[2] == len(raw) - 6
    assert sum(raw[4:-2]) % 256 == raw[-2]


async def test_snd_nke_ack_and_rsp_ud_frames_match_the_meter_model(bus: MbusBus) -> None:
    line = Line(bus.path)
    try:
        line.send(short(0x40, 1))
        assert await line.receive() == b"\xe5"
        line.send(short(0x7B, 1))
        raw = await line.receive()
    finally:
        line.close()
    check_long_frame(raw)
    t = decode_frame(raw)
    meter = bus.meter(1)
    assert t.header is not None
    assert t.header.id == f"{meter.spec.ident:08d}"
    assert t.header.manufacturer == meter.spec.manufacturer
    assert t.header.medium_name == "water"
    by = {(r.quantity, r.storage): r for r in t.records}
    totaliser = bus._ctx.state().totaliser_m3
    assert by[("volume", 0)].value == pytest.approx(meter.volume_litres(totaliser) / 1000, abs=0.01)
    assert by[("volume", 1)].value == pytest.approx(meter.due_date_litres(totaliser) / 1000)
    assert by[("date", 1)].value == f"{dt.date.today().year}-01-01"
    assert by[("date_time", 0)].value is not None
    assert by[("error_flags", 0)].value == 0
    assert t.manufacturer_data[:3] == b"SIM"


async def test_multi_telegram_meter_honours_fcb(bus: MbusBus) -> None:
    line = Line(bus.path)
    try:
        line.send(short(0x40, 3))
        await line.receive()
        line.send(short(0x7B, 3))  # FCB 1: first telegram
        first = decode_frame(await line.receive())
        line.send(short(0x7B, 3))  # same FCB again: the master missed it, the same telegram comes
        again = decode_frame(await line.receive())
        line.send(short(0x5B, 3))  # toggled: the next telegram
        second = decode_frame(await line.receive())
    finally:
        line.close()
    assert first.more_follows
    assert again.more_follows
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in first.records]
    assert not second.more_follows
    assert sorted(r.storage for r in second.records) == [2, 3, 4, 5]


async def test_secondary_selection_with_wildcards_and_collision(bus: MbusBus) -> None:
    target = bus.meters[1]
    ident = f"{target.spec.ident:08d}"
    line = Line(bus.path)
    try:
        line.send(long(0x53, 0xFD, 0x52, bytes.fromhex(ident)[::-1] + b"\xff\xff\xff\xff"))
        assert await line.receive() == b"\xe5"
        line.send(short(0x7B, 0xFD))
        picked = decode_frame(await line.receive())
        # Every meter matches the all-wildcard mask: their answers collide into garbage.
        line.send(long(0x53, 0xFD, 0x52, b"\xff" * 8))
        assert await line.receive() == b"\xe5"  # identical E5s survive the wired AND
        line.send(short(0x7B, 0xFD))
        garbage = await line.receive()
    finally:
        line.close()
    assert picked.header is not None
    assert picked.header.id == ident
    assert garbage
    assert sum(garbage[4:-2]) % 256 != garbage[-2] or garbage[1] != garbage[2]


async def test_injected_faults_break_the_frame_as_announced(bus: MbusBus) -> None:
    line = Line(bus.path)
    try:
        bus.inject(2, "checksum")
        line.send(short(0x7B, 2))
        bad_sum = await line.receive()
        bus.inject(2, "truncate")
        line.send(short(0x5B, 2))
        cut = await line.receive()
        bus.inject(2, "silent")
        line.send(short(0x7B, 2))
        nothing = await line.receive(first_s=0.3)
        line.send(short(0x5B, 2))
        healthy = await line.receive()
    finally:
        line.close()
    assert bad_sum[0] == 0x68
    assert sum(bad_sum[4:-2]) % 256 != bad_sum[-2]
    assert len(cut) < cut[1] + 6
    assert nothing == b""
    check_long_frame(healthy)


async def test_answers_are_paced_at_the_baud_rate(bus: MbusBus) -> None:
    line = Line(bus.path)
    try:
        line.send(short(0x40, 4))
        await line.receive()
        start = time.monotonic()
        line.send(short(0x7B, 4))
        raw = await line.receive(quiet_s=0.05)
        elapsed = time.monotonic() - start
    finally:
        line.close()
    # Behaviour, not a speed figure: a pty would pass the bytes at once; the bus must not be
    # faster than its wire (request + gap + answer at 11 bits a byte).
    assert elapsed >= (5 + 1 + len(raw)) * 11 / bus.baudrate


def test_announcement_lists_the_meters(tmp_path: Path) -> None:
    from tests.support.plant import running_plant

    with running_plant(seed=5, components="mbus", workdir=tmp_path) as plant:
        mbus = plant.endpoints["mbus"]
    assert isinstance(mbus, dict)
    assert str(mbus["path"]).startswith("/dev/pts/")
    assert mbus["baudrate"] == 2400
    meters = mbus["meters"]
    assert isinstance(meters, list)
    assert len(meters) == 4
    assert all(m["medium"] == 7 and len(m["id"]) == 8 for m in meters)
