"""Finding a running agent's status socket without its config: what `status` and `tail` do first.

A technician on site types `edge-agent status` and expects the agent on that box to answer, whether
or not they know where its config is, and even while the config on disk is being edited (broken).
So the config is only a hint, and the agent says where it listens:

- **announce**: on start the running agent puts a symlink to its status socket in a runtime
  directory, `agent-<pid>.sock`, and removes it on stop. The directory is the first usable of
  `$EDGE_AGENT_RUNTIME_DIR`, systemd's `$RUNTIME_DIRECTORY` (the unit's `RuntimeDirectory=`, i.e.
  `/run/edge-agent`), `/run/edge-agent`, `$XDG_RUNTIME_DIR/edge-agent`, `/tmp/edge-agent-<uid>`.
- **find**: `--socket` wins; with `-c` the config's socket (read leniently: a config that does not
  validate, or is not even TOML, still gives its `state_dir`); without either, the default
  config's socket when it answers, then every announced socket that answers, then the default
  state directory's. Several live agents and no hint: the caller is told to pick one.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
DEFAULT_SOCKET_NAME = "status.sock"
ANNOUNCE_PREFIX = "agent-"


def search_dirs() -> list[Path]:
    """Where running agents announce themselves, in the order `announce_dir` tries them."""
    dirs: list[Path] = []
    explicit = os.environ.get("EDGE_AGENT_RUNTIME_DIR")
    if explicit:
        return [Path(explicit)]
    systemd = os.environ.get("RUNTIME_DIRECTORY")
    if systemd:
        dirs.append(Path(systemd.split(":")[0]))
    dirs.append(Path("/run/edge-agent"))
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        dirs.append(Path(xdg) / "edge-agent")
    dirs.append(Path(f"/tmp/edge-agent-{os.getuid()}"))  # noqa: S108 - per-user, mode 0700, checked owner
    return list(dict.fromkeys(dirs))


def _usable(directory: Path) -> bool:
    try:
        directory.mkdir(mode=0o755 if not directory.name.startswith("edge-agent-") else 0o700, exist_ok=True)
        info = directory.stat()
    except OSError:
        return False
    if info.st_uid not in (os.getuid(), 0):
        return False  # someone else's directory in /tmp: never announce into it
    return os.access(directory, os.W_OK | os.X_OK)


@dataclass
class Announcement:
    """The symlink a running agent leaves in a runtime directory; `close()` removes it."""

    link: Path | None

    def close(self) -> None:
        if self.link is not None:
            with contextlib.suppress(OSError):
                self.link.unlink()
            self.link = None


def announce(status_socket: Path) -> Announcement:
    """Point `agent-<pid>.sock` in the first usable runtime directory at `status_socket`.

    Best effort: with no usable directory the agent runs as before (found by its config)."""
    target = status_socket.resolve()
    for directory in search_dirs():
        if not _usable(directory):
            continue
        _remove_stale(directory)
        link = directory / f"{ANNOUNCE_PREFIX}{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        try:
            link.symlink_to(target)
        except OSError:
            continue
        return Announcement(link)
    return Announcement(None)


def _remove_stale(directory: Path) -> None:
    """Links left by agents that were killed (their process is gone): removed when allowed."""
    for link in directory.glob(f"{ANNOUNCE_PREFIX}*.sock"):
        pid = link.name.removeprefix(ANNOUNCE_PREFIX).removesuffix(".sock")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                link.unlink()


def announced() -> list[Path]:
    """Announced sockets, newest first (a symlink left by a killed agent is listed too)."""
    found: list[tuple[float, Path]] = []
    for directory in search_dirs():
        with contextlib.suppress(OSError):
            for link in directory.glob(f"{ANNOUNCE_PREFIX}*.sock"):
                with contextlib.suppress(OSError):
                    found.append((link.lstat().st_mtime, link))
    return [path for _, path in sorted(found, reverse=True)]


_STATE_DIR = re.compile(r'^\s*state_dir\s*=\s*["\']([^"\']+)["\']', re.M)
_SOCKET = re.compile(r'^\s*socket\s*=\s*["\']([^"\']+)["\']', re.M)


def socket_from_config(path: Path) -> Path | None:
    """The status socket a config names, without validating it (None when the file is unreadable).

    A file that is not TOML (half-edited) is searched for `state_dir = "..."` and `socket = "..."`.
    """
    try:
        text = read_toml_text(path)
    except (OSError, NotUtf8TextError):
        return None
    state_dir: object = None
    sock: object = None
    try:
        raw = parse_toml(text)
    except TOMLDecodeError:
        found_dir, found_sock = _STATE_DIR.search(text), _SOCKET.search(text)
        state_dir = found_dir.group(1) if found_dir else None
        sock = found_sock.group(1) if found_sock else None
    else:
        gateway, status = raw.get("gateway"), raw.get("status")
        state_dir = gateway.get("state_dir") if isinstance(gateway, dict) else None
        sock = status.get("socket") if isinstance(status, dict) else None
    base = Path(state_dir) if isinstance(state_dir, str) and state_dir else DEFAULT_STATE_DIR
    name = Path(sock) if isinstance(sock, str) and sock else Path(DEFAULT_SOCKET_NAME)
    return base / name


def answers(path: Path, timeout_s: float = 1.0) -> bool:
    """Something accepts connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class NoAgentError(Exception):
    """No agent answers where `find_socket` looked, or several do and nothing says which."""


def _live(paths: list[Path]) -> list[Path]:
    """The paths that answer, one per socket (two links to one agent count once)."""
    live: dict[Path, Path] = {}
    for path in paths:
        target = path.resolve()
        if target not in live and answers(path):
            live[target] = path
    return list(live.values())


def find_socket(socket_arg: str | None, config_arg: str | None, default_config: Path) -> Path:
    """The status socket to talk to (see the module docstring for the order), or `NoAgentError`
    saying everything that was tried."""
    if socket_arg:
        return Path(socket_arg)
    tried: list[str] = []
    if config_arg:
        hinted = socket_from_config(Path(config_arg))
        if hinted is not None:
            return hinted  # the caller asked for this agent: its error message names the socket
        tried.append(f"{config_arg} (cannot read it)")
    else:
        hinted = socket_from_config(default_config)
        if hinted is not None:
            if answers(hinted):
                return hinted
            tried.append(f"{hinted} (from {default_config})")
    live = _live(announced())
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        agents = ", ".join(f"{p} -> {_target(p)}" for p in live)
        raise NoAgentError(f"several agents run here ({agents}); pick one with --socket PATH or -c CONFIG")
    tried.append(f"agents announced in {', '.join(str(d) for d in search_dirs())} (none running)")
    fallback = DEFAULT_STATE_DIR / DEFAULT_SOCKET_NAME
    if answers(fallback):
        return fallback
    tried.append(str(fallback))
    raise NoAgentError(
        "no agent answers; tried " + "; ".join(tried) + ". Is it running (systemctl status edge-agent)? "
        "Otherwise pass -c CONFIG or --socket PATH"
    )


def _target(link: Path) -> str:
    try:
        return str(link.readlink())
    except OSError:
        return "?"
