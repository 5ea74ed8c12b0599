"""Files sent to the gateway in parts, one signed command a part: a release bundle (`update_chunk`)
and a learnt-state archive (`state_restore`). A part names its transfer by the whole file's
SHA-256 and its place in it:

    {"transfer": "<sha256 of the file>", "index": i, "count": n, "data": "<base64>"}

Parts may come in any order and repeat; they are held on disk, one file a part, until the file is
put together (`ChunkStore.assemble`) and checked against its SHA-256. What a sender may make the
gateway hold is bounded: the parts of all transfers together are counted as the disk holds them
(each in whole 4 KiB blocks) against the store's limit, every part but a transfer's last carries at
least `MIN_CHUNK_BYTES`, and at most `max_transfers` transfers are held, a new one dropping the one
least recently added to (an abandoned one). What is held is read from disk once (off the event
loop, at the first part after a start) and then kept in memory, so a part costs no directory scan.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError
from water_edge.core.envelope import Envelope

log = structlog.get_logger(__name__)

_SHA: Final = re.compile(r"^[0-9a-f]{64}$")
MAX_CHUNKS: Final = 100_000
# Every part but a transfer's last carries at least this much: 1-byte parts cost a file (an inode
# and a block) each. Small enough for the smallest `[security] max_command_bytes` (16 KiB, some
# 11 KiB of base64 data once the envelope is signed).
MIN_CHUNK_BYTES: Final = 8 * 1024
DISK_BLOCK: Final = 4096  # what the smallest file costs the disk (and what each part is rounded up to)


@dataclass(frozen=True, slots=True)
class Chunk:
    transfer: str  # sha256 of the whole file, lower-case hex
    index: int
    count: int
    data: bytes


@dataclass
class _Transfer:
    """The parts of one chunked transfer on disk, as the store counts them."""

    count: int
    added: int  # order of the last part added (larger: more recent)
    parts: dict[int, int] = field(default_factory=dict)  # index -> bytes it costs the disk
    held: int = 0  # sum of `parts`


def sha256_arg(value: object, name: str) -> str:
    if not isinstance(value, str) or not _SHA.match(value):
        raise CommandFailedError(f"argument {name!r} must be a sha256 in lower-case hex")
    return value


class ChunkStore:
    """The parts of at most `max_transfers` files under `folder`, within `limit` bytes of disk
    (`limit_name` names the setting in refusals; `what` is the file: "bundle", "archive")."""

    def __init__(
        self, folder: Path, *, limit: int, limit_name: str, max_transfers: int, what: str, log_prefix: str
    ) -> None:
        self.folder = folder
        self.limit = limit
        self.limit_name = limit_name
        self.max_transfers = max_transfers
        self.what = what
        self.log_prefix = log_prefix
        self._transfers: dict[str, _Transfer] | None = None  # read from disk at the first part
        self._added = 0

    def parse(self, env: Envelope) -> Chunk:
        """The part a command carries; CommandFailedError / CommandRefusedError for one that is
        malformed or could never be held."""
        sha = sha256_arg(env.args.get("transfer"), "transfer")
        index, count, data = env.args.get("index"), env.args.get("count"), env.args.get("data")
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count <= MAX_CHUNKS):
            raise CommandFailedError("index and count must be integers with 0 <= index < count")
        if not isinstance(data, str):
            raise CommandFailedError("argument 'data' missing or not base64 text")
        if count * MIN_CHUNK_BYTES > self.limit:
            raise CommandRefusedError(
                "too_large",
                f"{count} chunks of at least {MIN_CHUNK_BYTES} bytes are over {self.limit_name} "
                f"({self.limit}); send the {self.what} in fewer, larger chunks",
            )
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise CommandFailedError("argument 'data' is not base64") from None
        if index < count - 1 and len(raw) < MIN_CHUNK_BYTES:
            raise CommandRefusedError(
                "chunk_too_small",
                f"chunk {index} of {count} has {len(raw)} bytes: every chunk but the last must carry at "
                f"least {MIN_CHUNK_BYTES} bytes",
            )
        return Chunk(sha, index, count, raw)

    async def add(self, chunk: Chunk) -> int:
        """Hold `chunk` on disk; the number of its transfer's parts now held."""
        sha, index, count = chunk.transfer, chunk.index, chunk.count
        transfers = await self._held()
        dropped: list[str] = []
        transfer = transfers.get(sha)
        if transfer is not None and transfer.count != count:  # sent again in another number of chunks
            del transfers[sha]
            dropped.append(sha)
            log.info(
                f"{self.log_prefix}.transfer_restarted", transfer=sha[:16], count=count, was=transfer.count
            )
            transfer = None
        cost = _disk_cost(len(chunk.data))
        before = 0 if transfer is None else transfer.parts.get(index, 0)
        own = (0 if transfer is None else transfer.held) - before + cost
        if own > self.limit:
            raise CommandRefusedError(
                "too_large",
                f"transfer over {self.limit_name} ({self.limit}; parts counted as the disk holds "
                f"them, each rounded up to {DISK_BLOCK} bytes)",
            )
        # Room for it, taken from the transfers least recently added to (abandoned ones).
        others = sorted((t.added, name) for name, t in transfers.items() if name != sha)
        total = own + sum(transfers[name].held for _, name in others)
        for _, name in others:
            if total <= self.limit and len(transfers) - (sha in transfers) < self.max_transfers:
                break
            total -= transfers.pop(name).held
            dropped.append(name)
            log.info(f"{self.log_prefix}.transfer_dropped", transfer=name[:16], for_transfer=sha[:16])
        if transfer is None:
            transfer = transfers[sha] = _Transfer(count, self._added)
        self._added += 1
        transfer.added = self._added
        transfer.parts[index] = cost
        transfer.held += cost - before
        try:
            await asyncio.to_thread(self._store, dropped, chunk)
        except BaseException:
            self.forget(sha)  # what is on disk is no longer known: counted again at the next part
            raise
        return len(transfer.parts)

    def assemble(self, sha: str, target: Path) -> Path:
        """The file of transfer `sha` written to `target` (its parts removed), checked against its
        SHA-256; CommandFailedError while parts are missing or when they do not hash to it. Blocking:
        run it in a thread."""
        folder = self.folder / sha
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
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for i in range(count):
                data = (folder / f"{i:06d}.part").read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != sha:
            partial.unlink()
            shutil.rmtree(folder, ignore_errors=True)
            raise CommandFailedError(f"the chunks of transfer {sha[:16]} do not hash to it; send them again")
        partial.replace(target)
        shutil.rmtree(folder, ignore_errors=True)
        return target

    def forget(self, sha: str, *, unless_held: bool = False) -> None:
        """Stop counting a transfer (its folder was removed, or is read again at the next part)."""
        if self._transfers is None:
            return
        if unless_held and (self.folder / sha).is_dir():
            return
        if unless_held:
            self._transfers.pop(sha, None)
        else:
            self._transfers = None

    async def _held(self) -> dict[str, _Transfer]:
        """The transfers held, read from disk (off the event loop) once, then kept up to date here."""
        if self._transfers is None:
            found = await asyncio.to_thread(_scan, self.folder)
            if self._transfers is None:
                self._transfers = found
                self._added = max((t.added for t in found.values()), default=0)
        return self._transfers

    def _store(self, dropped: list[str], chunk: Chunk) -> None:
        for name in dropped:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        folder = self.folder / chunk.transfer
        _write(folder / f"{chunk.index:06d}.part", chunk.data)
        count_file = folder / "count"
        if not count_file.exists() or count_file.read_text() != str(chunk.count):
            count_file.write_text(str(chunk.count))


def _disk_cost(size: int, blocks: int = 0) -> int:
    """What a part of `size` bytes costs the disk: whole blocks, at least one (a file of 0 or 1
    byte still takes an inode and a block); `blocks` (st_blocks, 512 bytes each) when known."""
    return max(DISK_BLOCK, -(-size // DISK_BLOCK) * DISK_BLOCK, blocks * 512)


def _scan(chunks: Path) -> dict[str, _Transfer]:
    """The transfers on disk (left by an earlier run), oldest-added first."""
    found: list[tuple[float, str, _Transfer]] = []
    if not chunks.is_dir():
        return {}
    for folder in chunks.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            count = int((folder / "count").read_text())
        except (OSError, ValueError):
            count = 0  # a transfer whose next part starts it again
        transfer = _Transfer(count, 0)
        latest = folder.stat().st_mtime
        for part in folder.glob("*.part"):
            try:
                index, st = int(part.stem), part.stat()
            except (OSError, ValueError):
                continue
            transfer.parts[index] = _disk_cost(st.st_size, st.st_blocks)
            latest = max(latest, st.st_mtime)
        transfer.held = sum(transfer.parts.values())
        found.append((latest, folder.name, transfer))
    found.sort(key=lambda f: f[0])
    for added, (_, _, transfer) in enumerate(found, 1):
        transfer.added = added
    return {name: transfer for _, name, transfer in found}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
