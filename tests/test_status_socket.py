"""The local status socket: a snapshot on request, live readings on tail, clear errors otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.testing import eventually
from tests.test_pipeline import RecordingAppender
from water_edge.agent.pipeline import Pipeline
from water_edge.agent.status import AgentNotRunningError, StatusServer, request_status, tail_lines
from water_edge.core.reading import Reading


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    # unix socket paths are limited to ~107 bytes; pytest's tmp paths can be long
    import tempfile

    return Path(tempfile.mkdtemp(prefix="st-")) / "status.sock"


async def test_status_request_returns_the_snapshot(sock_path: Path) -> None:
    pipe = Pipeline(RecordingAppender(), lambda: None)
    server = StatusServer(sock_path, lambda: {"drivers": [{"name": "x"}]}, pipe.tap, pipe.untap)
    await server.start()
    try:
        assert oct(sock_path.stat().st_mode & 0o777) == "0o660"
        reply = await asyncio.to_thread(request_status, sock_path)
        assert reply == {"drivers": [{"name": "x"}]}
    finally:
        await server.close()
    assert not sock_path.exists()
    with pytest.raises(AgentNotRunningError, match="no agent answers"):
        request_status(sock_path)


async def test_tail_streams_readings_as_they_are_submitted(sock_path: Path) -> None:
    pipe = Pipeline(RecordingAppender(), lambda: None)
    taps: list[asyncio.Queue[Reading]] = []

    def tap() -> asyncio.Queue[Reading]:
        taps.append(pipe.tap())
        return taps[-1]

    server = StatusServer(sock_path, dict, tap, pipe.untap)
    await server.start()
    got: list[dict[str, object]] = []

    def read_three() -> None:
        for line in tail_lines(sock_path):
            got.append(line)
            if len(got) == 3:
                return

    reader = asyncio.create_task(asyncio.to_thread(read_three))
    try:
        await eventually(lambda: taps, 5, what="the tail client subscribed")
        for i in range(3):
            await pipe.submit("s", [Reading("dev", "flow", i, float(i), "good", "m3/h")])
        await asyncio.wait_for(reader, 5)
    finally:
        await server.close()
    assert all(line["tag"] == "flow" and line["unit"] == "m3/h" for line in got)
    assert [line["value"] for line in got] == [0.0, 1.0, 2.0]


async def test_garbage_request_gets_an_error_and_is_counted(sock_path: Path) -> None:
    server = StatusServer(sock_path, dict, asyncio.Queue, lambda q: None)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(b"\x00\xffnot json\n")
        await writer.drain()
        line = await reader.readline()
        writer.close()
    finally:
        await server.close()
    assert b"unknown request" in line
    assert server.bad_requests == 1
