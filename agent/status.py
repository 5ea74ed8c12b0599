"""The local status socket: `edge-agent status` and `tail` talk to the running agent over it.

One JSON request line, then JSON reply lines: `{"cmd": "status"}` gets one snapshot;
`{"cmd": "tail"}` gets one line per reading until the client hangs up. The socket is a unix
socket (mode 0660) given the status group (`[status] group`, `edge-agent-status`) when that group
exists, so only root, the service user and members of that group can ask. The status group grants
nothing else: the agent's own group may write its managed config and read its secrets, and nobody
is to be put in it to read the status. Without the group (an agent run by hand, the demo) the
socket keeps the process's group; a group the agent may not give (the service user is not in it)
is logged once as a warning, and so is a socket in a directory the group's members cannot enter
(the state directory, 0750: the shipped config puts the socket in `/run/edge-agent`).

What a local client can cost the agent is bounded: at most `max_clients` connections are open at
once and at most `max_tails` of them tail (one more is told `busy` and closed at once, so clients
that never leave cannot exhaust the agent's file descriptors, and a technician's `status` still
gets through while tails are held); a connection that sends no request within 5 s is closed, and
so is one that does not take an answer (a snapshot, a tail line) within `WRITE_TIMEOUT_S`; a
request line longer than `MAX_REQUEST_BYTES` is answered with an error without being buffered;
every turned-away request is counted, never a traceback.

The socket's path is the agent's only while it runs: a second agent configured with the same path
refuses to start rather than take it over, and on stop an agent removes the path only if it is
still the socket it bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import structlog

from water_edge.agent.bounded_server import BoundedServer, TurnedAway
from water_edge.agent.locate import DEFAULT_STATUS_GROUP, ask_for_access
from water_edge.core.errors import AgentError
from water_edge.core.reading import Reading

log = structlog.get_logger(__name__)

Snapshot = Callable[[], Any]
MAX_REQUEST_BYTES = 4096
MAX_CLIENTS = 64
MAX_TAILS = 8
REQUEST_TIMEOUT_S = 5.0
STALE_PROBE_TIMEOUT_S = 2.0
# A reader on a loaded Pi takes a snapshot within a second; one that stops reading is let go.
WRITE_TIMEOUT_S = 10.0
_BUSY = b'{"error": "busy: too many clients of the status socket; try again"}\n'
_UNKNOWN = b'{"error": "unknown request; expected {\\"cmd\\": \\"status\\"|\\"tail\\"}"}\n'
_TOO_LONG = b'{"error": "request line too long"}\n'


def reading_json(reading: Reading) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": reading.source,
        "tag": reading.tag,
        "ts": reading.ts_ns,
        "value": reading.value,
        "quality": reading.quality,
        "unit": reading.unit,
    }
    if reading.reason is not None:
        out["reason"] = reading.reason
    return out


class StatusServer(BoundedServer):
    def __init__(
        self,
        path: Path,
        snapshot: Callable[[], Any],
        tap: Callable[[], asyncio.Queue[Reading]],
        untap: Callable[[asyncio.Queue[Reading]], None],
        *,
        max_clients: int = MAX_CLIENTS,
        max_tails: int = MAX_TAILS,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        group: str | None = DEFAULT_STATUS_GROUP,
    ) -> None:
        super().__init__(max_clients=max_clients, write_timeout_s=write_timeout_s, busy=_BUSY)
        self.path = path
        self.group = group
        self._snapshot = snapshot
        self._tap = tap
        self._untap = untap
        self._server: asyncio.AbstractServer | None = None
        self.max_tails = max_tails
        self.tails = 0
        self.bad_requests = 0
        self.busy_refusals = 0
        self.write_timeouts = 0
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket this server made

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await _remove_stale_socket(self.path)
        self._server = await asyncio.start_unix_server(
            self._handle, path=str(self.path), limit=MAX_REQUEST_BYTES
        )
        info = os.stat(self.path)
        self._bound = (info.st_dev, info.st_ino)
        os.chmod(self.path, 0o660)
        if self.group is not None:
            _give_group(self.path, self.group)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
            # Tails wait for readings that no longer come: end them, as their clients would.
            await self._end_connections()
            await self._server.wait_closed()
        if self._bound is not None:
            # OSError: on a read-only file system (a failing SD card) the socket stays; the next
            # start finds nobody answering on it and replaces it.
            with contextlib.suppress(OSError):
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._bound:
                    os.unlink(self.path)
            self._bound = None

    def _turned_away(self, why: TurnedAway) -> None:
        self.bad_requests += 1  # turned away, like a malformed request
        if why == "busy":
            self.busy_refusals += 1
        else:
            self.write_timeouts += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            # Over the stream's limit: refused without buffering the rest of the line.
            self.bad_requests += 1
            await self._send(writer, _TOO_LONG)
            return
        if not line:
            return  # connected and left without asking: `status` looking for agents, a starting agent
        try:
            request = orjson.loads(line)
            cmd = request.get("cmd") if isinstance(request, dict) else None
        except orjson.JSONDecodeError:
            cmd = None
        if cmd == "status":
            await self._send(writer, orjson.dumps(self._snapshot()) + b"\n")
        elif cmd == "tail" and self.tails >= self.max_tails:
            self.busy_refusals += 1
            self.bad_requests += 1
            await self._send(writer, _BUSY)
        elif cmd == "tail":
            self.tails += 1
            try:
                await self._tail(writer)
            finally:
                self.tails -= 1
        else:
            self.bad_requests += 1
            await self._send(writer, _UNKNOWN)

    async def _tail(self, writer: asyncio.StreamWriter) -> None:
        queue = self._tap()
        try:
            while True:
                reading = await queue.get()
                await self._send(writer, orjson.dumps(reading_json(reading)) + b"\n")
        finally:
            self._untap(queue)


def _give_group(path: Path, group: str) -> None:
    """Give the socket at `path` the status group `group`, when it exists (else it keeps the
    process's group: a hand-run agent, the demo). Never fails the start: a group the agent may not
    give is one warning, and so is a socket that the group's members cannot reach."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.debug("status.group_missing", group=group, socket=str(path))
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        user = _user_name()
        log.warning(
            "status.group_not_given",
            group=group,
            socket=str(path),
            fix=f"add {user} to {group} (deploy/install.sh does; or `usermod -aG {group} {user}`, or "
            f"SupplementaryGroups={group} in the unit) and restart; until then only root and the "
            "agent's user can open the socket",
        )
        return
    closed = closed_to_group(path.parent, gid)
    if closed is not None:
        log.warning(
            "status.group_cannot_reach",
            group=group,
            socket=str(path),
            directory=str(closed),
            fix=f"{closed} does not let members of {group} through: put the socket in a directory "
            'they may enter, e.g. [status] socket = "/run/edge-agent/status.sock" (the unit\'s '
            "RuntimeDirectory, 0755); never open the state directory to them",
        )


def closed_to_group(directory: Path, gid: int) -> Path | None:
    """The first directory on the way to `directory` (itself included) that a user whose only
    relevant group is `gid` may not pass through (search, x), or None when they reach it. POSIX
    permission arithmetic without ACLs: in the directory's group the group bits decide, even where
    the others' bits would allow more; otherwise the others' bits do."""
    real = directory.resolve()
    for step in (*reversed(real.parents), real):
        try:
            info = step.stat()
        except OSError:
            continue
        allowed = info.st_mode & (stat.S_IXGRP if info.st_gid == gid else stat.S_IXOTH)
        if not allowed:
            return step
    return None


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


async def _remove_stale_socket(path: Path) -> None:
    """Remove a stale socket at `path` (left by an agent that was killed). Anything else there is
    kept, with an AgentError saying what is in the way: the path comes from the config, and a socket
    path naming the outbox, the nonce store or the device key must not delete it; one where another
    agent answers must not cut that agent off from `status` and `tail`."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AgentError(f"status socket {path}: a file that is not a socket is there; not replacing it")
    try:
        async with asyncio.timeout(STALE_PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except TimeoutError:
        pass  # it is there but takes no connection now: an agent with a full backlog
    except OSError as exc:
        raise AgentError(
            f"status socket {path}: cannot tell whether an agent answers there ({exc.strerror or exc}); "
            "not replacing it"
        ) from None
    else:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    raise AgentError(f"another agent answers on {path}: give this one its own [status] socket")


class AgentNotRunningError(Exception):
    """Nothing answers on the status socket."""


class StatusRefusedError(AgentNotRunningError):
    """The agent answered with an error (busy, request refused) instead of what was asked."""


def _checked(reply: Any, path: Path) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise StatusRefusedError(f"the agent on {path} sent something that is not a JSON object")
    if set(reply) == {"error"}:
        raise StatusRefusedError(f"the agent on {path} refused: {reply['error']}")
    return reply


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise AgentNotRunningError(f"no agent answers on {path} ({exc.strerror})") from exc
    except PermissionError as exc:
        sock.close()
        raise AgentNotRunningError(f"not allowed to open {path}: {ask_for_access(path)}") from exc
    return sock


# Far above any agent's status (a few hundred KiB with hundreds of meters); what the root updater
# reads from a socket a config names must not be able to take its memory.
MAX_STATUS_BYTES = 16 * 2**20


def request_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The running agent's status document; `AgentNotRunningError` when nothing answers on `path`
    within `timeout` seconds in all (an agent that is busy or hung), closes, or answers with more
    than `MAX_STATUS_BYTES` or something that is not a status."""
    deadline = time.monotonic() + timeout
    with _connect(path, timeout) as sock:
        try:
            sock.sendall(b'{"cmd": "status"}\n')
            line = _reply_line(sock, deadline, path)
        except TimeoutError:
            raise AgentNotRunningError(_no_answer(path, timeout)) from None
        except OSError as exc:
            raise AgentNotRunningError(f"the agent on {path}: {exc.strerror or exc}") from None
    try:
        reply = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise StatusRefusedError(f"the agent on {path} sent something that is not JSON") from None
    return _checked(reply, path)


def _reply_line(sock: socket.socket, deadline: float, path: Path) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AgentNotRunningError(f"the agent on {path} closed the connection")
        end = chunk.find(b"\n")
        parts.append(chunk if end < 0 else chunk[: end + 1])
        size += len(parts[-1])
        if size > MAX_STATUS_BYTES:
            raise StatusRefusedError(f"the answer on {path} passed {MAX_STATUS_BYTES} bytes: not a status")
        if end >= 0:
            return b"".join(parts)


# `tail`: how long the agent may keep a subscription without a line before it is asked whether it
# still answers (as long as `status` waits for it).
TAIL_QUIET_S = 5.0


def tail_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The readings the agent on `path` takes, as it takes them, until it closes the connection.

    The agent says nothing on a subscription until a reading comes, so a hung agent (stopped,
    stuck) would leave `tail` waiting in silence: it is asked for its status first, and again
    whenever `TAIL_QUIET_S` passes without a line (a quiet agent answers that, between polls);
    one that does not answer within that time is `AgentNotRunningError`, in `status`'s words."""
    quiet_s = TAIL_QUIET_S
    request_status(path, quiet_s)
    with _connect(path, quiet_s) as sock:
        try:
            sock.sendall(b'{"cmd": "tail"}\n')
        except TimeoutError:
            raise AgentNotRunningError(_no_answer(path, quiet_s)) from None
        except OSError as exc:
            raise AgentNotRunningError(f"the agent on {path}: {exc.strerror or exc}") from None
        pending = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                request_status(path, quiet_s)  # raises when it no longer answers
                continue
            except OSError as exc:
                raise AgentNotRunningError(f"the agent on {path}: {exc.strerror or exc}") from None
            if not chunk:
                return
            pending += chunk
            if b"\n" not in chunk:
                if len(pending) > MAX_STATUS_BYTES:
                    raise StatusRefusedError(f"a line on {path} passed {MAX_STATUS_BYTES} bytes")
                continue
            *lines, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                if line.strip():
                    yield _checked(_json_line(line, path), path)


def _json_line(line: bytes, path: Path) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        raise StatusRefusedError(f"the agent on {path} sent something that is not JSON") from None


def _no_answer(path: Path, timeout: float) -> str:
    return f"the agent on {path} did not answer within {timeout:g} s (busy or hung?)"
