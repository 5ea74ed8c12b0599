"""The agent's side of an update: get the bundle (a URL, chunks over MQTT, a file on the gateway),
check its signature, spool it and ask the updater (which runs as its own service) to apply it.

The agent never installs anything itself: it runs unprivileged and may not write the install root.
Its signature check here only answers the command early and clearly; the updater checks again on
its own copy. Commands:

    update_chunk {"transfer": "<sha256 of the bundle>", "index": i, "count": n, "data": "<base64>"}
    update       {"transfer": "<sha256>"}                        (the chunks sent before)
    update       {"url": "https://...", "sha256": "<hex>"}      (downloaded by the agent)
                 optional "health_window_s"

A URL is fetched only over https (`[update] allow_http` to allow http) and, when `[update]
download_hosts` lists any, only from those hosts; every redirect is held to the same rules, so a
key allowed `update` cannot make the gateway request other addresses of the plant network.

What a command may cost is bounded: a download ends at `download_timeout_s` however the server
trickles or the DNS resolver hangs (the deadline holds for the name lookup and inside each read, and
a watchdog shuts the connection at it), runs in a thread of its own (never the event loop's shared
executor, which the uplink's reconnect needs), one at a time. The parts of chunked transfers are
held by `agent.remote.chunks.ChunkStore` against `max_bundle_bytes` (counted as the disk holds
them), at most `MAX_TRANSFERS` transfers at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import http.client
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import structlog

from water_edge.agent.remote.chunks import ChunkStore, sha256_arg
from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError, CommandResult
from water_edge.agent.update.bundle import BundleError, Manifest, load_release_keys, read_manifest
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.update.state import UpdateFiles, load_json
from water_edge.core.envelope import Envelope
from water_edge.core.instants import iso
from water_edge.core.reading import now_ns
from water_edge.core.sockets import connect_first

log = structlog.get_logger(__name__)

MAX_TRANSFERS = 2  # chunked transfers held at once; a new one drops the least recently added to
STALL_S = 30.0  # a download whose server sends nothing for this long has stalled
READ_BYTES = 1 << 16  # one read of a download: what the socket has, up to this


class UpdateReceiver:
    def __init__(self, config: UpdateSection, files: UpdateFiles) -> None:
        self.config = config
        self.files = files
        # Downloads have a thread of their own, one at a time: each used to take one of asyncio's
        # shared default executor's few threads, and a server that trickled its answer kept it.
        self._downloads = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="update-download")
        self._downloading: tuple[concurrent.futures.Future[Path], str, float] | None = None
        self._chunks = ChunkStore(
            files.chunks,
            limit=config.max_bundle_bytes,
            limit_name="[update] max_bundle_bytes",
            max_transfers=MAX_TRANSFERS,
            what="bundle",
            log_prefix="update",
        )

    # ------------------------------------------------------------------ commands

    async def chunk(self, env: Envelope) -> CommandResult:
        part = self._chunks.parse(env)
        received = await self._chunks.add(part)
        return CommandResult("ok", detail={"transfer": part.transfer, "received": received, "of": part.count})

    async def update(self, env: Envelope) -> CommandResult:
        window = env.args.get("health_window_s")
        if window is not None and not (isinstance(window, int | float) and 5 <= window <= 3600):
            raise CommandFailedError("health_window_s must be a number of seconds, 5-3600")
        if "transfer" in env.args:
            sha = sha256_arg(env.args.get("transfer"), "transfer")
            self.no_other_request(sha)
            try:
                bundle = await asyncio.to_thread(self._chunks.assemble, sha, self.files.spool / f"{sha}.tar")
            finally:
                self._chunks.forget(sha, unless_held=True)
        elif "url" in env.args:
            sha = sha256_arg(env.args.get("sha256"), "sha256")
            self.no_other_request(sha)  # before a download of up to max_bundle_bytes
            bundle = await self._download_once(str(env.args["url"]), sha)
        else:
            raise CommandFailedError("give 'transfer' (chunks sent before) or 'url' and 'sha256'")
        manifest = await asyncio.to_thread(self.check, bundle)
        self.request(bundle, sha, f"command {env.id} from {env.key_id}", window)
        return CommandResult(
            "ok", detail={"staged": sha, "version": manifest.version, "key_id": manifest.key_id}
        )

    # ------------------------------------------------------------------ shared with `edge-agent update apply`

    def check(self, bundle: Path) -> Manifest:
        """The bundle's manifest if a trusted release key signed it; CommandRefusedError otherwise."""
        try:
            return read_manifest(bundle, load_release_keys(self.config.release_keys))
        except BundleError as exc:
            self.files.remove_spooled(bundle.name)  # `bundle` is in the spool (as root: never through a link)
            raise CommandRefusedError("bad_release", str(exc)) from None

    def spool(self, source: Path, sha: str) -> Path:
        """Copy a bundle (from a USB stick, say) into the spool under its sha256. Run by root
        (`edge-agent update apply`) in the agent's directory: the copy goes to a new file of its
        own (O_EXCL), never through a link the agent placed at a name it could predict, nor into a
        directory a link at `update` or `spool` names (UnsafeUpdateFileError)."""
        with source.open("rb") as src:
            return self.files.spool_copy(src, f"{sha}.tar")

    def no_other_request(self, sha: str) -> None:
        """CommandFailedError if a request for another bundle still waits for the updater:
        overwriting it would drop an update whose command was already answered `staged`."""
        try:
            pending = load_json(self.files.request)
        except OSError as exc:  # `update apply` run as root leaves a request the agent cannot read
            raise CommandFailedError(
                f"an update request the agent cannot read ({exc.strerror}) is waiting for the updater "
                "(edge-agent-update.path); send this one when that update has ended"
            ) from None
        if pending is None or pending.get("sha256") == sha:
            return
        since = pending.get("requested_ns")
        when = iso(since) if isinstance(since, int) else "an unknown time"
        raise CommandFailedError(
            f"another update request ({str(pending.get('sha256', '?'))[:16]}, "
            f"{str(pending.get('requested_by', ''))[:80]}, since {when}) is waiting for the "
            "updater (edge-agent-update.path); send this one when that update has ended"
        )

    def request(self, bundle: Path, sha: str, requested_by: str, window: float | None = None) -> None:
        self.no_other_request(sha)
        doc: dict[str, Any] = {
            "action": "apply",
            "bundle": str(bundle),
            "sha256": sha,
            "requested_by": requested_by,
            "requested_ns": now_ns(),
        }
        if window is not None:
            doc["health_window_s"] = float(window)
        self.files.write_request(doc)
        log.info("update.requested", sha256=sha[:16], by=requested_by)

    # ------------------------------------------------------------------ getting the bytes (threads)

    async def _download_once(self, url: str, sha: str) -> Path:
        """`_download` in the downloads' own thread; CommandFailedError while another is under way
        (its thread may outlive a cancelled command by a moment, never its deadline)."""
        if self._downloading is not None:
            running, what, since = self._downloading
            if not running.done():
                raise CommandFailedError(
                    f"an update is already downloading ({what[:16]}, for {time.monotonic() - since:.0f} s "
                    f"of at most [update] download_timeout_s = {self.config.download_timeout_s:g} s); "
                    "send this one when it has ended"
                )
        future = self._downloads.submit(self._download, url, sha)
        self._downloading = (future, sha, time.monotonic())
        return await asyncio.wrap_future(future)

    def check_url(self, url: str) -> None:
        """CommandRefusedError (`bad_url`) unless `[update]` lets the gateway fetch `url`."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            raise CommandRefusedError("bad_url", f"not a URL: {url[:200]!r}") from None
        schemes = ("https", "http") if self.config.allow_http else ("https",)
        if parts.scheme not in schemes:
            allowed = " and ".join(f"{s}://" for s in schemes)
            hint = "" if self.config.allow_http else " ([update] allow_http = true for http)"
            raise CommandRefusedError("bad_url", f"only {allowed} URLs are fetched{hint}: {url[:200]}")
        if not host:
            raise CommandRefusedError("bad_url", f"no host in {url[:200]}")
        hosts = self.config.download_hosts
        if hosts and host not in hosts:
            raise CommandRefusedError(
                "bad_url", f"{host[:100]} is not in [update] download_hosts ({', '.join(hosts)[:200]})"
            )

    def _opener(self, conns: _Connections) -> urllib.request.OpenerDirector:
        ca = self.config.ca_file
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        return urllib.request.build_opener(
            _HTTPHandler(conns), _HTTPSHandler(conns, context), _CheckedRedirects(self.check_url)
        )

    def _download(self, url: str, sha: str) -> Path:
        self.check_url(url)
        # The whole download, not only each read: the command that asked for it is answered
        # `timed out` soon after, and this thread must not go on behind that answer. A read returns
        # what the socket has (`read1`) and waits at most until the deadline; a watchdog shuts the
        # connection at the deadline, which also ends a handshake or headers sent a byte at a time.
        seconds = self.config.download_timeout_s
        deadline = time.monotonic() + seconds
        conns = _Connections(deadline)
        watchdog = threading.Timer(seconds, conns.abort)
        watchdog.daemon = True
        opener = self._opener(conns)
        self.files.spool.mkdir(parents=True, exist_ok=True)
        target = self.files.spool / f"{sha}.tar"
        part = target.with_suffix(".part")
        digest, size, limit = hashlib.sha256(), 0, self.config.max_bundle_bytes

        def timed_out() -> CommandFailedError:
            return CommandFailedError(
                f"download failed: not done within [update] download_timeout_s ({seconds:g} s, "
                f"{size:,} bytes received)"
            )

        watchdog.start()
        try:
            with (
                opener.open(url, timeout=min(seconds, STALL_S)) as resp,
                part.open("wb") as out,
            ):
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or conns.aborted:
                        raise timed_out()
                    conns.settimeout(min(left, STALL_S))
                    block = resp.read1(READ_BYTES)
                    if not block:
                        break
                    size += len(block)
                    if size > limit:
                        raise CommandRefusedError(
                            "too_large", f"bundle over [update] max_bundle_bytes ({limit})"
                        )
                    digest.update(block)
                    out.write(block)
            if conns.aborted:  # the watchdog's shutdown reads as the end of the body
                raise timed_out()
        except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts, TLS
            part.unlink(missing_ok=True)
            late = conns.aborted or time.monotonic() >= deadline
            raise _failed(exc, timed_out() if late else None, size) from None
        except (CommandRefusedError, CommandFailedError):
            part.unlink(missing_ok=True)
            raise
        finally:
            watchdog.cancel()
            conns.close()
        if digest.hexdigest() != sha:
            part.unlink()
            raise CommandFailedError("the downloaded bundle does not have the sha256 the command names")
        part.replace(target)
        return target


def _failed(
    exc: OSError | http.client.HTTPException, late: CommandFailedError | None, size: int
) -> CommandFailedError:
    """What a download that raised `exc` tells the command; `late`: its answer if past the deadline."""
    reason = getattr(exc, "reason", exc)  # urllib's URLError wraps what the socket raised
    if isinstance(reason, NameLookupTimeoutError):
        return CommandFailedError(f"download failed: {reason} (the gateway's DNS resolver did not answer)")
    if late is not None:
        return late
    if isinstance(reason, TimeoutError):
        return CommandFailedError(
            f"download failed: the server sent nothing for {STALL_S:g} s ({size:,} bytes received)"
        )
    return CommandFailedError(f"download failed: {reason}")


class NameLookupTimeoutError(TimeoutError):
    """A server's name was not resolved before the download's deadline."""


# A name is looked up here, not in the download's thread: a hung lookup (a dead DNS server on an LTE
# link) ignores every socket timeout and would hold that thread, and with it every later update
# command, for as long as libc retries. Two threads: one may hang while the next download's lookup
# still gets one.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="update-dns")


class _Connections:
    """The sockets of one download (redirects included), for its deadline: each name lookup and
    read waits at most until it, and at it `abort` (the watchdog's) shuts them, which ends any
    read under way."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._current: socket.socket | None = None
        self.aborted = False
        self._closed = False

    def add(self, sock: socket.socket, *, current: bool) -> None:
        with self._lock:
            self._sockets.append(sock)
            if current:
                self._current = sock
            if self.aborted or self._closed:
                _shut(sock)

    def connect(
        self, address: tuple[str, int], timeout: object = None, source_address: tuple[str, int] | None = None
    ) -> socket.socket:
        """`socket.create_connection`, with the name looked up within the deadline."""
        host, port = address
        lookup = _RESOLVER.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            found = lookup.result(timeout=max(self.deadline - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError:
            lookup.cancel()
            raise NameLookupTimeoutError(f"name resolution of {host} timed out") from None
        seconds = float(timeout) if isinstance(timeout, int | float) else socket.getdefaulttimeout()
        return connect_first([(info[0], info[4]) for info in found], seconds, source_address)

    def settimeout(self, seconds: float) -> None:
        if self._current is not None:
            self._current.settimeout(seconds)

    def abort(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.aborted = True
            for sock in self._sockets:
                _shut(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                _shut(sock)
                sock.close()


def _shut(sock: socket.socket) -> None:
    # The plain socket's call, also for TLS: it wakes a read blocked in another thread. OSError:
    # not connected (yet, or any more), or already closed.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackedHTTP(http.client.HTTPConnection):
    """An HTTP connection whose sockets `conns` watches (from the TCP connect on)."""

    def __init__(self, host: str, *, conns: _Connections, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        _track(self, conns)

    def connect(self) -> None:
        super().connect()
        _tracked_connect(self)


class _TrackedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, *, conns: _Connections, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        _track(self, conns)

    def connect(self) -> None:
        super().connect()  # the TLS handshake included: watched on the plain socket
        _tracked_connect(self)


def _track(conn: http.client.HTTPConnection, conns: _Connections) -> None:
    def connected(*args: Any, **kwargs: Any) -> socket.socket:
        sock = conns.connect(*args, **kwargs)
        conns.add(sock, current=False)
        return sock

    vars(conn)["_create_connection"] = connected
    vars(conn)["_conns"] = conns


def _tracked_connect(conn: http.client.HTTPConnection) -> None:
    if conn.sock is not None:
        conns: _Connections = vars(conn)["_conns"]
        conns.add(conn.sock, current=True)  # the socket the response is read from


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, conns: _Connections) -> None:
        super().__init__()
        self._conn = functools.partial(_TrackedHTTP, conns=conns)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._conn, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, conns: _Connections, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._conn = functools.partial(_TrackedHTTPS, conns=conns)
        self._context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._conn, req, context=self._context)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the download rules allow (urllib's own takes any http(s))."""

    def __init__(self, check: Callable[[str], None]) -> None:
        self._check = check

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        self._check(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
