"""Finding 7 against the real `edge-agent run`: a local member of the agent's group with many `tail`
connections and oversized request lines costs the agent bounded file descriptors and no tracebacks;
the uplink and a technician's `edge-agent status` keep working."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import tempfile
from pathlib import Path

import pytest

from tests.support.agent_proc import running_agent, write_config
from tests.support.broker import Mosquitto
from tests.support.testing import eventually
from water_edge.agent.status import (
    MAX_CLIENTS,
    MAX_TAILS,
    StatusRefusedError,
    StatusServer,
    request_status,
    tail_lines,
)
from water_edge.core.errors import AgentError

ATTACK_CONNECTIONS = 1100


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))  # blocking: waits while the agent's listen backlog is full
    sock.settimeout(5)
    return sock


@pytest.mark.slow
def test_a_thousand_tails_and_huge_request_lines_leave_the_agent_working(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * ATTACK_CONNECTIONS)), hard))
    held: list[socket.socket] = []
    try:
        with Mosquitto() as broker:
            config = write_config(tmp_path, broker_port=broker.port, devices="")
            with running_agent(config) as agent:
                agent.wait_status(lambda s: s["uplink"]["state"] == "online")
                baseline = open_fds(agent.process.pid)
                for _ in range(ATTACK_CONNECTIONS):
                    sock = connect(agent.socket)
                    # The agent may already have answered `busy` and closed: that is the point.
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(b'{"cmd": "tail"}\n')
                    held.append(sock)
                # Each connection over the caps was answered `busy` and closed by the agent; the
                # tails it serves have nothing to say yet (no devices) and time out here.
                served = turned_away = 0
                for sock in held:
                    sock.settimeout(0.5)
                    try:
                        answer = sock.recv(200)
                    except TimeoutError:
                        served += 1
                        continue
                    except ConnectionResetError:
                        answer = b""
                    turned_away += answer in (b"",) or b"busy" in answer
                assert served == MAX_TAILS
                assert turned_away == ATTACK_CONNECTIONS - MAX_TAILS
                assert open_fds(agent.process.pid) <= baseline + MAX_TAILS + 2
                # A 200 KB request line: an error answer, not a buffered line or a traceback.
                long = connect(agent.socket)
                # The agent answers and closes once the line is past its limit, which may be
                # before the whole 200 KB is sent (make test: EPIPE once); its answer is read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    long.sendall(b'{"cmd": "' + b"s" * 200_000 + b'"}\n')
                assert b"too long" in long.recv(200)
                long.close()
                # The technician still gets a status while the tails are held, and the uplink
                # never lost its connection.
                status = agent.status()
                assert status["uplink"]["state"] == "online"
                assert status["uplink"]["reconnects"] == 0
                assert status["rejected"]["status_requests"] >= turned_away + 1
                for sock in held:
                    sock.close()
                held.clear()
                assert agent.stop() == 0
            log = agent.log()
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Traceback" not in log
    assert len(log) < 200_000, "the log did not fill with one line per refused connection"


async def test_the_client_cap_holds_and_the_cli_hears_busy() -> None:
    path = Path(tempfile.mkdtemp(prefix="st-")) / "status.sock"
    queues: list[asyncio.Queue[object]] = []

    def tap() -> asyncio.Queue[object]:
        queues.append(asyncio.Queue())
        return queues[-1]

    server = StatusServer(path, dict, tap, queues.remove, max_clients=4, max_tails=2)  # type: ignore[arg-type]
    await server.start()
    try:
        idle = [await asyncio.open_unix_connection(str(path)) for _ in range(4)]
        while server.clients < 4:  # noqa: ASYNC110 - the server counts connections as it accepts them
            await asyncio.sleep(0.01)
        reader, _writer = await asyncio.open_unix_connection(str(path))
        assert b"busy" in await reader.readline()
        for _r, w in idle:
            w.close()
        while server.clients:  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.01)
        tails = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
        for _r, w in tails:
            w.write(b'{"cmd": "tail"}\n')
        while server.tails < 2:  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.01)
        with pytest.raises(StatusRefusedError, match="busy"):
            await asyncio.to_thread(lambda: next(iter(tail_lines(path))))
    finally:
        await server.close()
    assert server.busy_refusals == 2
    assert MAX_TAILS < MAX_CLIENTS


async def test_a_socket_path_naming_another_file_never_removes_it(tmp_path: Path) -> None:
    key = tmp_path / "identity" / "key.pem"  # `[status] socket` names a file of the gateway's
    key.parent.mkdir()
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    server = StatusServer(key, dict, asyncio.Queue, lambda q: None)
    with pytest.raises(AgentError, match="not a socket"):
        await server.start()
    await server.close()
    assert key.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
    # A stale socket left by an agent that died is replaced as before.
    stale = tmp_path / "status.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(stale))
    server = StatusServer(stale, dict, asyncio.Queue, lambda q: None)
    await server.start()
    await server.close()
    assert not stale.exists()


def _read_to_eof(sock: socket.socket) -> None:
    while sock.recv(1 << 20):
        pass


async def test_a_client_that_never_reads_its_answer_gives_its_connection_back() -> None:
    """A snapshot larger than the socket's buffers to a client that asks and never reads: the
    answer used to wait for it for good, one of the 64 connections held for each such client."""
    path = Path(tempfile.mkdtemp(prefix="st-")) / "status.sock"
    snapshot = {"drivers": ["x" * 1000] * 8000}  # 8 MB of JSON, far beyond a unix socket's buffers
    server = StatusServer(
        path, lambda: snapshot, asyncio.Queue, lambda q: None, max_clients=2, write_timeout_s=0.3
    )
    await server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(str(path))
        client.sendall(b'{"cmd": "status"}\n')  # ... and never a recv()
        await eventually(lambda: server.clients == 1, 5, what="the request taken")
        await eventually(lambda: server.clients == 0, 5, what="the stalled answer given up")
        assert server.write_timeouts == 1
        assert server.bad_requests == 1  # `rejected.status_requests` in the agent's status
        # The connection was closed, not left half-written: the client reads what was sent, then EOF
        # (in a thread: the server closes the socket on this event loop).
        client.settimeout(5)
        await asyncio.to_thread(_read_to_eof, client)
        # A client that reads still gets the whole snapshot.
        reply = await asyncio.to_thread(request_status, path)
        assert reply == snapshot
    finally:
        client.close()
        await server.close()
