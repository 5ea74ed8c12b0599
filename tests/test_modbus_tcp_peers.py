"""The Modbus TCP driver against small raw-socket peers that misbehave the way field devices and
gateways do: silent, slow, wrong ids, malformed or extra answers, hanging up mid-frame. Whatever the
peer sends, a read ends within its timeout in bad readings or `DriverIOError`, and the device
reads good again once the peer behaves."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers.modbus.tcp import ModbusTcpDriver

TIMEOUT_S = 0.2
VALUES = {"a": 10, "b": 500}  # a register holds its own address (`Request.answer`)


@dataclass
class Request:
    tid: int
    unit: int
    fc: int
    start: int
    count: int

    def answer(self, *, tid: int | None = None, unit: int | None = None, fc: int | None = None) -> bytes:
        """A well-formed answer whose register at address a holds a (so values name their address)."""
        data = b"".join(struct.pack(">H", self.start + i) for i in range(self.count))
        pdu = bytes([self.fc if fc is None else fc, len(data)]) + data
        return mbap(self.tid if tid is None else tid, self.unit if unit is None else unit, pdu)


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


# What the peer does with one request: write bytes (or not) through the writer it is given.
Behaviour = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Peer:
    """A Modbus TCP server that answers as `behaviour` says, until `behave()` makes it proper."""

    behaviour: Behaviour
    port: int = 0
    requests: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def behave(self) -> None:
        async def proper(request: Request, writer: asyncio.StreamWriter) -> None:
            writer.write(request.answer())

        self.behaviour = proper

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                start, count = struct.unpack(">HH", pdu[1:5])
                self.requests += 1
                await self.behaviour(Request(tid, unit, pdu[0], start, count), writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async def proper(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(request.answer())

    p = Peer(proper)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        p.writers.add(writer)
        try:
            await p.handle(reader, writer)
        finally:
            p.writers.discard(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    p.port = server.sockets[0].getsockname()[1]
    async with server:
        yield p
        for writer in list(p.writers):
            writer.close()  # its handler ends on the closed stream


def driver_for(peer: Peer) -> ModbusTcpDriver:
    return ModbusTcpDriver.from_config({
        "name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": peer.port,
        "timeout_ms": int(TIMEOUT_S * 1000), "retries": 0,
        "tags": [{"name": "a", "address": 10}, {"name": "b", "address": 500}],
    })  # fmt: skip


async def poll(driver: ModbusTcpDriver) -> dict[str, Reading] | DriverIOError:
    """One read as the supervisor does it (reopened after a `DriverIOError`), bounded in time."""
    started = time.monotonic()
    try:
        if not driver.health().connected:
            await driver.open()
        result: dict[str, Reading] | DriverIOError = {r.tag: r for r in await driver.read()}
    except DriverIOError as exc:
        result = exc
    # two requests a poll, each at most its timeout (and a reconnect)
    assert time.monotonic() - started < 2 * TIMEOUT_S + 0.5
    return result


async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
    pass


async def wrong_tid(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(request.answer(tid=request.tid + 1))


async def wrong_unit(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(request.answer(unit=request.unit + 1))


async def wrong_function(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(request.answer(fc=4))


async def byte_count_too_big(request: Request, writer: asyncio.StreamWriter) -> None:
    frame = bytearray(request.answer())
    frame[8] += 2
    writer.write(bytes(frame))


async def byte_count_too_small(request: Request, writer: asyncio.StreamWriter) -> None:
    frame = bytearray(request.answer())
    frame[8] -= 2
    writer.write(bytes(frame))


async def huge_length(request: Request, writer: asyncio.StreamWriter) -> None:
    frame = request.answer()
    writer.write(frame[:4] + b"\xff\xff" + frame[6:])


async def slow_loris(request: Request, writer: asyncio.StreamWriter) -> None:
    for byte in request.answer():
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(TIMEOUT_S / 4)


async def two_answers(request: Request, writer: asyncio.StreamWriter) -> None:
    frame = request.answer()
    writer.write(frame + frame[:9] + b"\x12\x34" * request.count)


async def trailing_junk(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(request.answer() + b"\x00\x00\x00\x00\x00\x06\x01")


async def hang_up_mid_frame(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(request.answer()[:5])
    await writer.drain()
    writer.close()


async def exception_4(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(mbap(request.tid, request.unit, bytes([request.fc | 0x80, 4])))


@pytest.mark.parametrize(
    "behaviour",
    [
        silent, wrong_tid, wrong_unit, wrong_function, byte_count_too_big, byte_count_too_small,
        huge_length, slow_loris, two_answers, trailing_junk, hang_up_mid_frame, exception_4,
    ],
)  # fmt: skip
async def test_a_misbehaving_peer_gives_bad_readings_in_time_then_recovers(
    peer: Peer, behaviour: Behaviour
) -> None:
    driver = driver_for(peer)
    await driver.open()
    try:
        peer.behaviour = behaviour
        during = [await poll(driver) for _ in range(3)]
        peer.behave()
        after = [await poll(driver) for _ in range(2)]
    finally:
        await driver.aclose()
    for result in during:
        if isinstance(result, dict):  # never a wrong value: bad readings, or the registers' own
            assert all(r.quality == "bad" or r.value == VALUES[r.tag] for r in result.values()), result
    good = after[-1]
    assert isinstance(good, dict), good
    assert (good["a"].value, good["b"].value) == (10, 500)
    assert driver.health().errors >= (0 if behaviour in (two_answers, trailing_junk) else 1)


async def test_a_late_answer_without_a_transaction_id_is_never_taken_for_the_next(peer: Peer) -> None:
    # Some devices and gateways answer with transaction id 0, which pymodbus accepts for any
    # request. One answer sent after its timeout then arrived while the next request waited and
    # was taken for its answer, and every answer after for the request before it: a and b swapped
    # for as long as the connection lasted, all good readings.
    held: dict[asyncio.StreamWriter, bytes] = {}

    async def late_once(request: Request, writer: asyncio.StreamWriter) -> None:
        if peer.requests == 1:
            held[writer] = request.answer(tid=0)  # goes out after the timeout, with the next answer
            return
        writer.write(held.pop(writer, b"") + request.answer(tid=0))

    peer.behaviour = late_once
    driver = driver_for(peer)
    await driver.open()
    try:
        polls = [await driver.read() for _ in range(3)]
    finally:
        await driver.aclose()
    first = {r.tag: r for r in polls[0]}
    assert first["a"].reason == "timeout"
    for readings in polls:
        for r in readings:
            assert r.quality == "bad" or r.value == VALUES[r.tag], readings
    assert [r.value for r in polls[-1]] == [10, 500]


async def test_a_write_answered_without_a_transaction_id_after_a_timeout_is_unconfirmed(peer: Peer) -> None:
    # The late answer to the read that timed out came first and was taken for the write's answer:
    # the write "worked" whatever the device did with it.
    held: dict[asyncio.StreamWriter, bytes] = {}

    async def late_read(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.fc == 3:
            held[writer] = request.answer(tid=0)
            return
        echo = mbap(0, request.unit, bytes([request.fc]) + struct.pack(">HH", request.start, request.count))
        writer.write(held.pop(writer, b"") + echo)

    peer.behaviour = late_read
    driver = ModbusTcpDriver.from_config({
        "name": "plc", "kind": "modbus_tcp", "host": "127.0.0.1", "port": peer.port,
        "timeout_ms": int(TIMEOUT_S * 1000), "retries": 0, "tags": [{"name": "a", "address": 10}],
    })  # fmt: skip
    await driver.open()
    try:
        assert (await driver.read())[0].reason == "timeout"
        with pytest.raises(DriverIOError, match="no transaction id after a timeout: unconfirmed"):
            await driver.write(1, "holding", 500, [7])
        await driver.write(1, "holding", 500, [7])  # on a new connection: confirmed
    finally:
        await driver.aclose()
