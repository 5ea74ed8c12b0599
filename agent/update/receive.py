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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import shutil
import ssl
import time
import urllib.request
from collections.abc import Callable
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import structlog

from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError, CommandResult
from water_edge.agent.update.bundle import BundleError, Manifest, load_release_keys, read_manifest
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.update.state import UpdateFiles, load_json
from water_edge.core.envelope import Envelope
from water_edge.core.instants import iso
from water_edge.core.reading import now_ns

log = structlog.get_logger(__name__)

_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_CHUNKS = 100_000


class UpdateReceiver:
    def __init__(self, config: UpdateSection, files: UpdateFiles) -> None:
        self.config = config
        self.files = files

    # ------------------------------------------------------------------ commands

    async def chunk(self, env: Envelope) -> CommandResult:
        sha = _sha(env.args.get("transfer"), "transfer")
        index, count, data = env.args.get("index"), env.args.get("count"), env.args.get("data")
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count <= MAX_CHUNKS):
            raise CommandFailedError("index and count must be integers with 0 <= index < count")
        if not isinstance(data, str):
            raise CommandFailedError("argument 'data' missing or not base64 text")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise CommandFailedError("argument 'data' is not base64") from None
        folder = self.files.chunks / sha
        if _held(folder) + len(raw) > self.config.max_bundle_bytes:
            raise CommandRefusedError(
                "too_large", f"transfer over [update] max_bundle_bytes ({self.config.max_bundle_bytes})"
            )
        await asyncio.to_thread(self._make_room, sha, len(raw))
        await asyncio.to_thread(_write, folder / f"{index:06d}.part", raw)
        (folder / "count").write_text(str(count))
        received = len(list(folder.glob("*.part")))
        return CommandResult("ok", detail={"transfer": sha, "received": received, "of": count})

    async def update(self, env: Envelope) -> CommandResult:
        window = env.args.get("health_window_s")
        if window is not None and not (isinstance(window, int | float) and 5 <= window <= 3600):
            raise CommandFailedError("health_window_s must be a number of seconds, 5-3600")
        if "transfer" in env.args:
            sha = _sha(env.args.get("transfer"), "transfer")
            self.no_other_request(sha)
            bundle = await asyncio.to_thread(self._assemble, sha)
        elif "url" in env.args:
            sha = _sha(env.args.get("sha256"), "sha256")
            self.no_other_request(sha)  # before a download of up to max_bundle_bytes
            bundle = await asyncio.to_thread(self._download, str(env.args["url"]), sha)
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

    def _make_room(self, sha: str, size: int) -> None:
        """Keep every transfer's chunks together within max_bundle_bytes: a transfer that needs the
        room takes it from those least recently added to (abandoned ones), which are removed."""
        if not self.files.chunks.is_dir():
            return
        others = [
            (_last_added(f), _held(f), f) for f in self.files.chunks.iterdir() if f.is_dir() and f.name != sha
        ]
        total = _held(self.files.chunks / sha) + size + sum(held for _, held, _ in others)
        for _, held, folder in sorted(others):
            if total <= self.config.max_bundle_bytes:
                break
            total -= held
            shutil.rmtree(folder, ignore_errors=True)
            log.info("update.transfer_dropped", transfer=folder.name[:16], for_transfer=sha[:16])

    def _assemble(self, sha: str) -> Path:
        folder = self.files.chunks / sha
        try:
            count = int((folder / "count").read_text())
        except (OSError, ValueError):
            raise CommandFailedError(f"no chunks of transfer {sha[:16]} received") from None
        missing = [i for i in range(count) if not (folder / f"{i:06d}.part").exists()]
        if missing:
            raise CommandFailedError(
                f"transfer {sha[:16]}: {len(missing)} of {count} chunks missing (first: {missing[0]})",
                {"missing": missing[:100]},
            )
        self.files.spool.mkdir(parents=True, exist_ok=True)
        target = self.files.spool / f"{sha}.tar"
        digest = hashlib.sha256()
        with (target.with_suffix(".part")).open("wb") as out:
            for i in range(count):
                data = (folder / f"{i:06d}.part").read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != sha:
            target.with_suffix(".part").unlink()
            shutil.rmtree(folder, ignore_errors=True)
            raise CommandFailedError(f"the chunks of transfer {sha[:16]} do not hash to it; send them again")
        target.with_suffix(".part").replace(target)
        shutil.rmtree(folder, ignore_errors=True)
        return target

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

    def _download(self, url: str, sha: str) -> Path:
        self.check_url(url)
        ca = self.config.ca_file
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _CheckedRedirects(self.check_url)
        )
        self.files.spool.mkdir(parents=True, exist_ok=True)
        target = self.files.spool / f"{sha}.tar"
        part = target.with_suffix(".part")
        digest, size, limit = hashlib.sha256(), 0, self.config.max_bundle_bytes
        # The whole download, not only each read: the command that asked for it is answered
        # `timed out` soon after, and this thread must not go on writing behind that answer.
        seconds = self.config.download_timeout_s
        deadline = time.monotonic() + seconds
        try:
            with (
                opener.open(url, timeout=seconds) as resp,
                part.open("wb") as out,
            ):
                while block := resp.read(1 << 20):
                    size += len(block)
                    if size > limit:
                        raise CommandRefusedError(
                            "too_large", f"bundle over [update] max_bundle_bytes ({limit})"
                        )
                    if time.monotonic() > deadline:
                        raise CommandFailedError(
                            f"download failed: not done within [update] download_timeout_s ({seconds:g} s, "
                            f"{size:,} bytes received)"
                        )
                    digest.update(block)
                    out.write(block)
        except OSError as exc:  # URLError, HTTPError, timeouts, TLS
            part.unlink(missing_ok=True)
            raise CommandFailedError(f"download failed: {getattr(exc, 'reason', exc)}") from None
        except (CommandRefusedError, CommandFailedError):
            part.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha:
            part.unlink()
            raise CommandFailedError("the downloaded bundle does not have the sha256 the command names")
        part.replace(target)
        return target


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


def _sha(value: object, name: str) -> str:
    if not isinstance(value, str) or not _SHA.match(value):
        raise CommandFailedError(f"argument {name!r} must be a sha256 in lower-case hex")
    return value


def _held(folder: Path) -> int:
    """Bytes of chunks a transfer holds (0 if it has none)."""
    return sum(p.stat().st_size for p in folder.glob("*.part")) if folder.is_dir() else 0


def _last_added(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
