"""What a field technician sends when a gateway misbehaves (`edge-agent support-bundle`).

One gzip'd tar, safe to email: everything the central team or the maintainers ask for first, with
every secret masked, no key and no reading's value. Each part is gathered on its own, bounded in
time; a part that cannot be gathered is left out with the reason in `MANIFEST.json`, and never
fails the bundle:

- `versions.json`: release, Python, key packages, OS, kernel, host name, time (UTC), clock sync;
- `config.toml.redacted`: the config file's text with every secret masked (`MASK`);
- `check-config.txt`: what `edge-agent check-config` prints for it, and its exit status;
- `status.json`: the running agent's status document (`edge-agent status --json`);
- `outbox.json`: `buffer stats` figures and the newest events still in the outbox (never readings);
- `journal.txt`: the unit's journal of the last 24 h, the newest `JOURNAL_MAX_BYTES`;
- `host.json`: mounts, free space, memory, uptime, load, the board's health (`host_health.sample`);
- `serial.json`: serial ports, their udev names, the adapters the agent recorded;
- `learnt_state.json`: names and sizes of what `edge-agent state export` would carry.

Secrets (agent.config_redaction): the values of the config's secret references (resolved now,
as far as this user may read them), every string under a key named like a secret or a meter's
`key`, WebSocket header values and passwords in URLs are masked in the config's text; then every
such value is cut out of every part (as written, JSON- and TOML-escaped), the MANIFEST included.

Nothing is written inside the state directory: the outbox is opened read-only (not at all when
reading it would have SQLite create a `-shm` there), the rest only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import orjson

from water_edge.agent import __version__
from water_edge.agent.config_redaction import (
    Redactor,
    config_text_secrets,
    redact_config_text,
    unreadable_references,
)

FORMAT: Final = "edge-agent-support/1"
MANIFEST: Final = "MANIFEST.json"
UNIT: Final = "edge-agent.service"  # deploy/edge-agent.service
T = TypeVar("T")

MAX_BUNDLE_BYTES: Final = 20 * 2**20  # of parts, uncompressed: the archive is never larger
JOURNAL_MAX_BYTES: Final = 5 * 2**20
JOURNAL_TIMEOUT_S: Final = 60.0
PART_TIMEOUT_S: Final = 30.0  # any other part
CHECK_CONFIG_TIMEOUT_S: Final = 60.0  # `check-config`, a process of its own
CONFIG_TIMEOUT_S: Final = 30.0  # loading the config and reading its secrets (`_context`)
STATUS_TIMEOUT_S: Final = 5.0  # as `edge-agent status` waits
CONFIG_MAX_BYTES: Final = 8 * 2**20
EVENTS: Final = 200
PACKAGES: Final = (
    "water-edge-agent",
    "pymodbus",
    "paho-mqtt",
    "pydantic",
    "asyncua",
    "orjson",
    "structlog",
    "numpy",
    "scipy",
    "cryptography",
    "ai-edge-litert",
    "tflite-runtime",
    "protobuf",
    "pyserial",
    "sounddevice",
)
SERIAL_NODES: Final = ("ttyUSB*", "ttyACM*", "ttyAMA*")
# --- the parts ------------------------------------------------------------------------------------


class PartMissingError(Exception):
    """A part that cannot be gathered; the message is the reason the MANIFEST gives."""


@dataclass
class Part:
    name: str
    data: bytes | None = None
    reason: str | None = None  # why `data` is None
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What every part may use: the config as far as it loads, where the agent keeps its state."""

    config_path: Path
    config_text: str | None
    config: Any | None  # the loaded Config; None when it does not load
    state_dir: Path
    outbox: Path
    redactor: Redactor
    journalctl: str
    unit: str
    notes: tuple[str, ...] = ()  # what gathering the context itself met (the MANIFEST's `notes.bundle`)


def _json(obj: Any) -> bytes:
    from water_edge.core.files import printable_texts

    return (
        orjson.dumps(
            printable_texts(obj), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS
        )
        + b"\n"
    )


def _versions(ctx: Context) -> bytes:
    from water_edge.agent.release_name import RELEASE

    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    os_release: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text(encoding="utf-8", errors="replace").splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() and not name.startswith("#"):
                os_release[name.strip()] = value.strip().strip("\"'")
    uname = os.uname()
    clock: dict[str, Any]
    try:
        from water_edge.core.timesync import best_source

        clock = dataclasses.asdict(best_source().read())
    except (OSError, AttributeError) as exc:  # no libc adjtimex to call
        clock = {"synchronised": None, "error": str(exc)}
    return _json(
        {
            "agent_version": __version__,
            "release": RELEASE,
            "python": {
                "version": platform.python_version(),
                "executable": sys.executable,
                "prefix": sys.prefix,
            },
            "packages": packages,
            "os_release": os_release,
            "kernel": {
                "sysname": uname.sysname,
                "release": uname.release,
                "version": uname.version,
                "machine": uname.machine,
            },
            "hostname": socket.gethostname(),
            "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "clock_sync": clock,
            "user": {"uid": os.getuid(), "euid": os.geteuid()},
        }
    )


def _config_text(ctx: Context) -> tuple[bytes, list[str]]:
    if ctx.config_text is None:
        raise PartMissingError(f"{ctx.config_path}: cannot be read (see check-config.txt)")
    text = ctx.config_text
    note = ""
    if len(text.encode()) > CONFIG_MAX_BYTES:
        text = text.encode()[:CONFIG_MAX_BYTES].decode("utf-8", "ignore")
        note = f"\n# support-bundle: cut at {CONFIG_MAX_BYTES // 2**20} MiB\n"
    notes = [
        f"the secret {where}: its value could not be looked for and masked in the other parts "
        "(the journal); run as root or as the agent's user"
        for where in unreadable_references(text)
    ]
    return (redact_config_text(text, ctx.redactor) + note).encode(), notes


def check_config_output(config_path: Path, timeout_s: float | None = None) -> tuple[int | None, str]:
    """What `edge-agent check-config -c FILE` prints (stdout and stderr, as a terminal shows them)
    and its exit status, run as a process of its own: a check stuck on a hung card or mount is
    stopped after `timeout_s` (status None) and never holds the bundle up."""
    timeout_s = CHECK_CONFIG_TIMEOUT_S if timeout_s is None else timeout_s
    command = [sys.executable, "-m", "water_edge.agent.cli", "check-config", "-c", str(config_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        printed, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        # Not waited for: a process in an uninterruptible read of a hung card outlives its kill.
        process.kill()
        partial = (exc.output or b"").decode("utf-8", "replace")
        return None, partial + (
            f"edge-agent check-config did not finish within {timeout_s:g} s and was stopped "
            "(a hung card, mount or device it reads?)\n"
        )
    return process.returncode, printed.decode("utf-8", "replace")


def _status(ctx: Context) -> bytes:
    from water_edge.agent.commands._exits import DEFAULT_CONFIG
    from water_edge.agent.locate import Answer, NoAgentError, ask_for_access, find_socket, probe
    from water_edge.agent.status import AgentNotRunningError, StatusRefusedError, request_status

    try:
        path = (
            ctx.config.status_socket
            if ctx.config is not None
            else find_socket(None, str(ctx.config_path), Path(DEFAULT_CONFIG))
        )
        if probe(path) is Answer.DENIED:
            raise PartMissingError(f"this user may not open the status socket {path}: {ask_for_access(path)}")
        snap = request_status(path, STATUS_TIMEOUT_S)
    except StatusRefusedError as exc:
        raise PartMissingError(f"the agent did not give its status: {exc}") from None
    except (AgentNotRunningError, NoAgentError) as exc:
        raise PartMissingError(f"no agent running: {exc}") from None
    return _json(ctx.redactor.document(snap))


def _outbox(ctx: Context) -> tuple[bytes, list[str]]:
    from water_edge.buffer.stats import read_stats, stats_to_json
    from water_edge.core.errors import BufferError
    from water_edge.core.reading import now_ns

    path = ctx.outbox
    _never_write_beside(path)
    try:
        stats = stats_to_json(read_stats(path), now_ns())
    except BufferError as exc:
        raise PartMissingError(str(exc)) from None
    events, note = _outbox_events(path)
    document = {
        "path": str(path),
        "stats": stats,
        "events": events,
        "events_note": (
            f"the newest {EVENTS} events still in the outbox (sent events are deleted once the "
            "broker acknowledges them); readings are never included"
        ),
    }
    return _json(ctx.redactor.document(document)), [note] if note else []


def _never_write_beside(path: Path) -> None:
    """A `-wal` without its `-shm` (a copied outbox) is read only through a `-shm` SQLite would
    create beside it, inside the state directory: not done."""
    try:
        wal_alone = Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    except OSError:  # a directory closed to this user: `read_stats` says so, with whom to run as
        return
    if wal_alone:
        raise PartMissingError(
            f"outbox {path}: it has a -wal but no -shm; reading it would create one in the state "
            "directory, which the bundle never writes to"
        )


def _outbox_events(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The newest `EVENTS` events in the outbox, newest first: kind, source, time, severity, detail."""
    from water_edge.buffer.codec import decode_events
    from water_edge.buffer.stats import BUSY_TIMEOUT_MS, read_only_uri
    from water_edge.core.errors import BufferError

    uri = read_only_uri(path)
    events: list[dict[str, Any]] = []
    skipped = 0
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = conn.execute(
                "SELECT body FROM outbox WHERE row_class = 'event' ORDER BY id DESC LIMIT ?", (EVENTS,)
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [], f"events: cannot be read ({exc})"
    for (body,) in rows:
        try:
            decoded = decode_events(body)
        except BufferError:
            skipped += 1
            continue
        for event in reversed(decoded):
            if len(events) < EVENTS:
                events.append(
                    {
                        "kind": event.kind,
                        "source": event.source,
                        "time": _iso(event.ts_ns),
                        "ts_ns": event.ts_ns,
                        "severity": event.severity,
                        "detail": event.detail,
                    }
                )
    return events, f"events: {skipped} outbox rows could not be decoded" if skipped else None


def _iso(ts_ns: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(ts_ns)


def _journal(ctx: Context) -> tuple[bytes, list[str]]:
    """`journalctl -u UNIT --since -24h`, the newest `JOURNAL_MAX_BYTES`, each line redacted."""
    command = [ctx.journalctl, "-u", ctx.unit, "--since", "-24h", "-o", "short-iso", "--no-pager"]
    try:
        process = subprocess.Popen(  # a fixed command, no shell
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise PartMissingError(f"journalctl cannot be run: {exc.strerror or exc}") from None
    timer = threading.Timer(JOURNAL_TIMEOUT_S, process.kill)
    timer.start()
    errors: list[bytes] = []
    reader = threading.Thread(target=_first_bytes, args=(process.stderr, errors), daemon=True)
    reader.start()
    kept: deque[bytes] = deque()
    size = total = 0
    try:
        assert process.stdout is not None  # PIPE given
        for raw in process.stdout:
            line = ctx.redactor.data(raw)
            kept.append(line)
            size += len(line)
            total += len(line)
            while size > JOURNAL_MAX_BYTES:
                size -= len(kept.popleft())
        code = process.wait()
    finally:
        timer.cancel()
        process.kill()
        process.wait()
        reader.join(5)
    stderr = ctx.redactor.text(b"".join(errors).decode("utf-8", "replace")).strip()
    if code < 0:
        raise PartMissingError(f"journalctl did not finish within {JOURNAL_TIMEOUT_S:g} s")
    if code != 0:
        raise PartMissingError(f"journalctl refused (exit {code}): {stderr or 'no message'}")
    text = b"".join(kept)
    # "No journal files were found.", or a user in no group that may read them
    if text.strip() in (b"", b"-- No entries --") and stderr:
        raise PartMissingError(f"journalctl: {stderr}")
    notes = [f"journalctl: {stderr}"] if stderr else []
    if total > size:
        notes.append(f"the newest {size:,} of {total:,} bytes of the last 24 h")
    return text, notes


def _first_bytes(stream: IO[bytes] | None, into: list[bytes], limit: int = 65536) -> None:
    """Read `stream` to its end (a writer is never left blocked), keeping its first `limit` bytes."""
    if stream is None:
        return
    kept = 0
    while chunk := stream.read(65536):
        if kept < limit:
            into.append(chunk[: limit - kept])
            kept += len(into[-1])


def _host(ctx: Context) -> bytes:
    from water_edge.agent import host_health
    from water_edge.core import mounts

    document: dict[str, Any] = {"state_dir": str(ctx.state_dir)}
    try:
        table = (host_health.SYSFS_ROOT / mounts.MOUNTINFO).read_text(encoding="utf-8", errors="replace")
        found = mounts.parse_mountinfo(table)
        document["mounts"] = {
            where: None if (mount := mounts.mount_of(path, found)) is None else dataclasses.asdict(mount)
            for where, path in (("/", Path("/")), ("state_dir", ctx.state_dir))
        }
    except OSError as exc:
        document["mounts"] = {"error": str(exc)}
    try:
        fs = os.statvfs(ctx.state_dir)
        document["state_dir_disk"] = {
            "free_bytes": fs.f_bavail * fs.f_frsize,
            "size_bytes": fs.f_blocks * fs.f_frsize,
            "free_inodes": fs.f_favail,
        }
    except OSError as exc:
        document["state_dir_disk"] = {"error": exc.strerror or str(exc)}
    memory: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree"):
                with contextlib.suppress(ValueError, IndexError):
                    memory[f"{name}_kib"] = int(value.split()[0])
    document["memory"] = memory
    with contextlib.suppress(OSError, ValueError, IndexError):
        document["uptime_s"] = float(Path("/proc/uptime").read_text().split()[0])
    with contextlib.suppress(OSError):
        document["load"] = list(os.getloadavg())
    document["cpus"] = os.cpu_count()
    try:
        accepted = ctx.config is not None and ctx.config.gateway.accept_state_in_ram
        health = host_health.sample(host_health.SYSFS_ROOT, ctx.state_dir, accept_state_in_ram=accepted)
        document["health"] = dataclasses.asdict(health)
    except OSError as exc:
        document["health"] = {"error": str(exc)}
    return _json(document)


def _serial(ctx: Context) -> bytes:
    from water_edge.agent.serial_adapters import PORTS_FILE
    from water_edge.drivers.serial_names import LINK_DIRS, numbered_port, stable_names

    links: dict[str, dict[str, str]] = {}
    for directory in LINK_DIRS:
        found: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                with contextlib.suppress(OSError):
                    found[entry.path] = os.path.realpath(entry.path)
        links[str(directory)] = found
    nodes = sorted(str(p) for pattern in SERIAL_NODES for p in Path("/dev").glob(pattern))
    configured: list[dict[str, Any]] = []
    if ctx.config is not None:
        ports: dict[str, list[str]] = {}
        for device in ctx.config.devices:
            for port, _ in device.serial_lines():
                ports.setdefault(port, []).append(device.name)
        for port, devices in ports.items():
            names = stable_names(port)
            configured.append(
                {
                    "port": port,
                    "devices": devices,
                    "exists": os.path.exists(port),
                    "kernel_numbered": numbered_port(port) is not None,
                    "stable_names": dataclasses.asdict(names),
                    "preferred": names.preferred(),
                }
            )
    recorded: Any = None
    record = ctx.state_dir / PORTS_FILE
    try:
        with record.open("rb") as file:
            raw = file.read(2**20 + 1)
        recorded = json.loads(raw) if len(raw) <= 2**20 else {"error": "more than 1 MiB"}
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError) as exc:
        recorded = {"error": str(exc)}
    return _json({"nodes": nodes, "links": links, "configured_ports": configured, PORTS_FILE: recorded})


def _learnt_state(ctx: Context) -> bytes:
    from water_edge.agent.locate import state_access_hint
    from water_edge.agent.state_transfer import learnt_files

    if not ctx.state_dir.is_dir():
        raise PartMissingError(f"{ctx.state_dir}: no state directory")
    if not os.access(ctx.state_dir, os.R_OK | os.X_OK):
        raise PartMissingError(
            f"{ctx.state_dir}: this user may not look into it: {state_access_hint(ctx.state_dir)}"
        )
    files: list[dict[str, Any]] = []
    for relative in learnt_files(ctx.state_dir):
        with contextlib.suppress(OSError):
            files.append({"name": relative.as_posix(), "bytes": (ctx.state_dir / relative).stat().st_size})
    return _json(
        {
            "state_dir": str(ctx.state_dir),
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files),
            "note": "what `edge-agent state export` would carry: names and sizes only",
        }
    )


# --- making the bundle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    archive: bytes  # the .tar.gz
    manifest: dict[str, Any]
    config_loads: bool


Gatherer = Callable[[Context], bytes | tuple[bytes, list[str]]]

# In the order they are kept when the whole would pass MAX_BUNDLE_BYTES (the last ones go first).
GATHERERS: Final[tuple[tuple[str, Gatherer, float], ...]] = (
    ("versions.json", _versions, PART_TIMEOUT_S),
    ("config.toml.redacted", _config_text, PART_TIMEOUT_S),
    ("status.json", _status, STATUS_TIMEOUT_S * 2),
    ("outbox.json", _outbox, PART_TIMEOUT_S),
    ("host.json", _host, PART_TIMEOUT_S),
    ("serial.json", _serial, PART_TIMEOUT_S),
    ("learnt_state.json", _learnt_state, PART_TIMEOUT_S),
    ("journal.txt", _journal, JOURNAL_TIMEOUT_S + 10),
)


def _in_time(name: str, work: Callable[[], T], timeout_s: float) -> T | None:
    """`work()` in a thread of its own: what it returned (or raised), or None when it has not
    within `timeout_s` (a read of a hung card or mount: left behind, never waited for)."""
    outcome: list[tuple[T | None, BaseException | None]] = []

    def run() -> None:
        try:
            outcome.append((work(), None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append((None, exc))

    worker = threading.Thread(target=run, name=f"support-bundle {name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        return None
    value, error = outcome[0]
    if error is not None:
        raise error
    return value


def _bounded(name: str, gather: Gatherer, ctx: Context, timeout_s: float) -> Part:
    """One part, gathered in a thread of its own: one that hangs (a dead mount under the state
    directory) is left behind after `timeout_s`, with the reason."""

    def run() -> Part:
        try:
            got = gather(ctx)
            data, notes = got if isinstance(got, tuple) else (got, [])
            return Part(name, data, notes=notes)
        except PartMissingError as exc:
            return Part(name, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a part that fails never fails the bundle
            return Part(name, reason=f"failed: {type(exc).__name__}: {exc}")

    return _in_time(name, run, timeout_s) or Part(name, reason=f"not gathered within {timeout_s:g} s")


def _context(config_path: Path, journalctl: str, unit: str) -> Context:
    from water_edge.agent.config import load_config
    from water_edge.agent.locate import DEFAULT_STATE_DIR, state_dir_from_config, state_file_from_config
    from water_edge.agent.secrets import config_secrets
    from water_edge.core.errors import ConfigError
    from water_edge.core.toml_text import NotUtf8TextError, read_toml_text

    text: str | None
    try:
        text = read_toml_text(config_path)
    except NotUtf8TextError:
        try:
            with config_path.open("rb") as file:
                text = file.read(CONFIG_MAX_BYTES).decode("utf-8", "replace").replace("\x00", "\\0")
        except OSError:
            text = None
    except OSError:
        text = None

    def load() -> tuple[list[str], Any, list[str]]:
        # Secret files are read here, and the loader looks at the state directory: on a hung card
        # or mount either can block for good, so this runs aside and is given up after a while.
        secrets = config_text_secrets(text) if text is not None else []
        config: Any = None
        # A config that does not load: check-config.txt says why. Whatever the loader raises (a
        # crash too, which check-config.txt shows) never fails the bundle.
        with contextlib.suppress(ConfigError, Exception):
            config = load_config(config_path, closed_state="warning")
        return secrets, config, [] if config is None else list(config_secrets(config))

    loaded = _in_time("config", load, CONFIG_TIMEOUT_S)
    stuck: str | None = None
    if loaded is not None:
        secrets, config, more = loaded
        redactor = Redactor(secrets)
        redactor.add(more)
    else:
        stuck = (
            f"the config and its secret files were not read within {CONFIG_TIMEOUT_S:g} s (a hung "
            "card or mount?): the state directory is taken from the config's text, and the values "
            "of its secret references are not looked for in the other parts"
        )
        redactor = Redactor(config_text_secrets(text, resolve=False) if text is not None else ())
        config = None
    if config is not None:
        state_dir, outbox = config.gateway.state_dir, config.buffer_path
    else:
        outbox = state_file_from_config(config_path, "buffer", "path", "outbox.sqlite") or (
            DEFAULT_STATE_DIR / "outbox.sqlite"
        )
        state_dir = state_dir_from_config(config_path) or DEFAULT_STATE_DIR
    notes = () if stuck is None else (stuck,)
    return Context(config_path, text, config, state_dir, outbox, redactor, journalctl, unit, notes)


def make_bundle(config_path: Path, *, journalctl: str = "journalctl", unit: str = UNIT) -> Bundle:
    """The support bundle for the agent `config_path` configures (whether or not it loads, and
    whether or not the agent runs)."""
    started = time.monotonic()
    ctx = _context(config_path, journalctl, unit)
    code, printed = check_config_output(config_path)
    parts = [_bounded(name, gather, ctx, timeout) for name, gather, timeout in GATHERERS]
    check = Part(
        "check-config.txt",
        f"$ edge-agent check-config -c {config_path}\n{printed}exit status "
        f"{'none (stopped)' if code is None else code}\n".encode(),
    )
    parts.insert(2, check)
    files: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    notes: dict[str, list[str]] = {"bundle": list(ctx.notes)} if ctx.notes else {}
    room = MAX_BUNDLE_BYTES - 64 * 1024  # the MANIFEST's
    for part in parts:
        if part.data is None:
            missing[part.name] = part.reason or "not gathered"
            continue
        data = ctx.redactor.data(part.data)  # the last look: whatever a part let through
        if len(data) > room:
            missing[part.name] = (
                f"left out: {len(data):,} bytes would pass the bundle's {MAX_BUNDLE_BYTES // 2**20} MiB"
            )
            continue
        room -= len(data)
        files[part.name] = data
        if part.notes:
            notes[part.name] = part.notes
    manifest = {
        "format": FORMAT,
        "agent_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(config_path.absolute()),
        "config_loads": ctx.config is not None,
        "state_dir": str(ctx.state_dir),
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        },
        "missing": missing,
        "notes": notes,
        "gathered_in_s": round(time.monotonic() - started, 2),
        "never_included": (
            "secrets (masked as ***: the config's passwords, tokens, keys, secret references' values), "
            "key files, readings' values"
        ),
    }
    manifest_bytes = ctx.redactor.data(_json(manifest))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        _add(archive, MANIFEST, manifest_bytes)
        for name, data in files.items():
            _add(archive, name, data)
    return Bundle(buffer.getvalue(), json.loads(manifest_bytes), ctx.config is not None)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    archive.addfile(info, io.BytesIO(data))


def inside(path: Path, directory: Path) -> bool:
    """`path` is `directory` or under it (both resolved as far as they exist)."""
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError):
        return False


def members(archive: bytes) -> Iterator[tuple[str, bytes]]:
    """The files of a bundle (for tests and for whoever unpacks one in Python)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            if extracted is not None:
                yield member.name, extracted.read()
