"""The files the agent and the updater share in the state directory (`<state_dir>/update/`):

    request.json    written by the agent (a signed command) or `edge-agent update apply`: what to do;
                    its appearance starts edge-agent-update.service (a systemd path unit), which
                    takes it (removes it) before doing anything else
    spool/<sha>.tar bundles waiting for the updater (the updater copies and checks them again)
    chunks/<sha>/   parts of a bundle sent over MQTT, until the whole arrived
    state.json      written by the updater only: where the last update stands and how it ended
    reported.json   written by the agent only: the last outcome it turned into an `update` event

Every file is replaced atomically (temp + fsync + rename), so a reader never sees half of one.

The updater works on these files as root, and the agent owns the directory: it can put a link
anywhere in it, or swap `update` itself for a link to another directory. So every operation here
opens `update` (and `spool`) without following a link at it and works relative to that descriptor
(`dir_fd`), and opens a file without following a link at its name: a link swapped in between a
check and the use cannot take root elsewhere. A link, or anything but the regular single-link file
or directory expected, is refused (`UnsafeUpdateFileError`, naming the path). The state directory
itself is taken as given: its parent (`/var/lib`) is root's, so the agent cannot replace it. The
agent uses the same code; for it a refusal is a file it cannot read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

Phase = Literal["idle", "verifying", "installing", "trial", "committed", "rolled_back", "failed"]
TERMINAL: frozenset[str] = frozenset({"idle", "committed", "rolled_back", "failed"})


# A request or a state is a few KiB: a larger file is not one of ours (a sparse terabyte, say).
MAX_JSON_BYTES = 2**20

_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW
# Non-blocking: a FIFO the agent put at the name must not hang root in open().
_REGULAR = os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW


class UnsafeUpdateFileError(OSError):
    """A path in `<state_dir>/update` that is a link, or not the regular file or directory expected:
    never followed, never read or written through."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(errno.EPERM, what, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def write_json(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    """Replace `path`, a file in the update directory, atomically (the directory is made if missing)."""
    _make_dir(path.parent)
    with _opened_dir(path.parent) as dir_fd:
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        _replace_at(dir_fd, path.name, lambda out: out.write(data), mode)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, a file in the update directory; None if there is none, it is not
    one, or it cannot be read (a refused link included)."""
    try:
        return load_json(path)
    except OSError:
        return None


def load_json(path: Path) -> dict[str, Any] | None:
    """As `read_json`, but a refused path raises UnsafeUpdateFileError (and other I/O errors OSError)."""
    try:
        with _opened_dir(path.parent) as dir_fd:
            raw = _read_at(dir_fd, path)
    except FileNotFoundError:
        return None
    return None if raw is None else _json_object(raw)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _make_dir(path: Path) -> None:
    """`path`, the update directory, made if missing. Its parent, the state directory, is taken as
    given (a link there is the installer's, e.g. to a data partition): opened following links."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _make_dir_at(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def _make_dir_at(parent_fd: int, name: str) -> None:
    """The directory `name` in `parent_fd`, made if missing. Made by root (`edge-agent update
    apply`, the updater), it is given to the owner of the directory it is in, as if the agent had
    made it: a root-owned `update/` or `spool/` left the agent unable to stage the next signed
    update. mkdir never follows a link at its name (it fails, and the open after it refuses), and
    the chown does not either."""
    try:
        os.mkdir(name, dir_fd=parent_fd)
    except FileExistsError:
        return
    if os.geteuid() == 0:
        owner = os.fstat(parent_fd)
        os.chown(name, owner.st_uid, owner.st_gid, dir_fd=parent_fd, follow_symlinks=False)


@contextlib.contextmanager
def _opened_dir(path: Path, parent_fd: int | None = None) -> Iterator[int]:
    """A descriptor of the directory `path` (the name `path.name` in `parent_fd` when given), opened
    without following a link at it; UnsafeUpdateFileError when it is a link or not a directory."""
    name = str(path) if parent_fd is None else path.name
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeUpdateFileError(path, _not_a_directory(name, parent_fd)) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _not_a_directory(name: str, dir_fd: int | None) -> str:
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return "a link where a directory belongs: not followed"
    return "not a directory: not used"


def _open_regular(dir_fd: int, path: Path) -> int:
    """A read descriptor of the regular, single-link file `path.name` in `dir_fd` (FileNotFoundError if
    there is none): never through a link at the name, never a FIFO or device, never a hard link to a
    file elsewhere."""
    try:
        fd = os.open(path.name, _REGULAR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeUpdateFileError(path, "a link where a regular file belongs: not followed") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UnsafeUpdateFileError(path, "not a regular file with a single link: not read")
    return fd


def _read_at(dir_fd: int, path: Path) -> bytes | None:
    """The bytes of the file `path.name` in `dir_fd`, None if there is none."""
    try:
        fd = _open_regular(dir_fd, path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise UnsafeUpdateFileError(path, f"larger than {MAX_JSON_BYTES} bytes: not read")
    return raw


def _replace_at(dir_fd: int, name: str, fill: Callable[[BinaryIO], object], mode: int) -> None:
    """Replace the file `name` in `dir_fd` with what `fill` writes: into a new temp file of our own
    (O_EXCL, never through a link), fsynced, renamed over the name (rename replaces a link there,
    never follows it)."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # whatever the umask
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)  # the rename is durable only once the directory entry is on disk


@dataclass
class UpdateState:
    """state.json: one update from request to outcome."""

    id: str = ""  # the bundle's sha256 (or "rollback-<ns>" for a manual rollback)
    phase: Phase = "idle"
    action: str = "apply"
    requested_by: str = ""
    from_release: str | None = None
    to_release: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    started_ns: int = 0
    trial_deadline_ns: int | None = None
    finished_ns: int | None = None
    reason: str | None = None  # why it failed or was rolled back, or what the health check saw
    health_window_s: float = 300.0
    # What worked just before the switch (`judge.Baseline`), kept so a resumed trial judges alike.
    baseline: dict[str, Any] | None = None
    # The release `previous` named before the switch ("": none), put back if the release on trial
    # fails: a failed release is never left as the rollback target. None: a state written before
    # it was recorded (an updater of an older release began the trial); `previous` is then cleared.
    previous_before: str | None = None
    log: list[str] = field(default_factory=list)  # one line per step, newest last

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> UpdateState:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class UpdateFiles:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "update"
        self.request = self.dir / "request.json"
        self.spool = self.dir / "spool"
        self.chunks = self.dir / "chunks"
        self.state = self.dir / "state.json"
        self.reported = self.dir / "reported.json"

    def read_state(self) -> UpdateState:
        """The state, or a fresh one when there is none or it cannot be read."""
        doc = read_json(self.state)
        return UpdateState() if doc is None else UpdateState.from_json(doc)

    def load_state(self) -> UpdateState:
        """As `read_state`, but a refused path raises UnsafeUpdateFileError (the updater's)."""
        doc = load_json(self.state)
        return UpdateState() if doc is None else UpdateState.from_json(doc)

    def write_state(self, state: UpdateState) -> None:
        write_json(self.state, state.to_json())

    def write_request(self, doc: dict[str, Any]) -> None:
        write_json(self.request, doc, mode=0o640)

    def take_request(self) -> dict[str, Any] | None:
        """Read and remove the request (the path unit would start the updater again while it exists).
        A request that is a link is removed unread (UnsafeUpdateFileError)."""
        try:
            with _opened_dir(self.dir) as dir_fd:
                try:
                    raw = _read_at(dir_fd, self.request)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.request.name, dir_fd=dir_fd)  # unlink never follows a link
        except FileNotFoundError:
            return None
        return None if raw is None else _json_object(raw)

    @contextlib.contextmanager
    def _spool_dir(self) -> Iterator[int]:
        with _opened_dir(self.dir) as update_fd, _opened_dir(self.spool, update_fd) as spool_fd:
            yield spool_fd

    def open_spooled(self, name: str) -> BinaryIO:
        """The spooled regular file `name`, open for reading (see `_open_regular`)."""
        with self._spool_dir() as spool_fd:
            return os.fdopen(_open_regular(spool_fd, self.spool / name), "rb")

    def spool_copy(self, source: BinaryIO, name: str) -> Path:
        """Copy `source` into the spool as `name`, through a new file of our own renamed into place:
        `edge-agent update apply` runs as root, and the agent can know the name beforehand."""
        _make_dir(self.dir)
        with _opened_dir(self.dir) as update_fd:
            _make_dir_at(update_fd, self.spool.name)
        with self._spool_dir() as spool_fd:
            _replace_at(spool_fd, name, lambda out: shutil.copyfileobj(source, out, 1 << 20), 0o600)
        return self.spool / name

    def remove_spooled(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError), self._spool_dir() as spool_fd:
            os.unlink(name, dir_fd=spool_fd)
