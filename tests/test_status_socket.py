"""The local status socket: a snapshot on request, live readings on tail, clear errors otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.testing import eventually
from tests.test_pipeline import RecordingAppender
from water_edge.agent.pipeline import Pipeline
from water_edge.agent.status import (
    MAX_STATUS_BYTES,
    AgentNotRunningError,
    StatusServer,
    request_status,
    tail_lines,
)
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


class _Listener:
    """Something that listens on the status socket's path but is not a well agent: it takes the
    request, then answers as `behave(connection)` does."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, args=(behave,), daemon=True)
        self.thread.start()

    def _serve(self, behave: Callable[[socket.socket], None]) -> None:
        conn, _ = self.server.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(100)
            behave(conn)

    def close(self) -> None:
        self.server.close()


def _silent(conn: socket.socket) -> None:
    time.sleep(3)  # a hung agent: it took the request and says nothing


def _trickle(conn: socket.socket) -> None:
    for _ in range(60):  # a byte every 50 ms, never a whole line
        conn.sendall(b" ")
        time.sleep(0.05)


def _endless(conn: socket.socket) -> None:
    chunk = b"x" * 65536
    while True:
        conn.sendall(chunk)


@pytest.mark.parametrize(
    ("behave", "said"),
    [
        (_silent, "did not answer within 0.5 s (busy or hung?)"),
        (_trickle, "did not answer within 0.5 s (busy or hung?)"),
        (_endless, f"passed {MAX_STATUS_BYTES} bytes: not a status"),
    ],
)
def test_an_answer_that_never_ends_is_an_error_within_the_timeout(
    sock_path: Path, behave: Callable[[socket.socket], None], said: str
) -> None:
    # Before: a hung agent gave `edge-agent status` a traceback (a TimeoutError) after 5 s, a
    # trickle held it (and the root updater judging a release) for as long as it went on, and an
    # endless answer took their memory.
    listener = _Listener(sock_path, behave)
    started = time.monotonic()
    with pytest.raises(AgentNotRunningError) as info:
        request_status(sock_path, timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert str(info.value).endswith(said)
    listener.close()
