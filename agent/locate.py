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
- **trust**: an announcement is believed only when the directory, the link and the socket it names
  belong to the invoking user, root, or the directory's owner where only root can have made that
  directory (systemd's `/run/edge-agent`, owned by the service user): anyone may create
  `/tmp/edge-agent-0`, and root's `status` must not print what a stranger's socket says.
- **denied**: a socket that is there but may not be opened (root, the service user and the status
  group only) is reported as such, not as "no agent", with the group to join: the status group
  (`[status] group`, `edge-agent-status`), never the agent's own group, which may write the managed
  config and read the secrets. An announcement whose process is gone (a killed agent leaves its
  link and socket) is no agent, whoever asks: a dead pid is not an agent this user may not open.
"""

from __future__ import annotations

import contextlib
import enum
import grp
import os
import pwd
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
DEFAULT_SOCKET_NAME = "status.sock"
# Who may read the status (`[status] group`'s default), and the service's own group, never to join.
DEFAULT_STATUS_GROUP = "edge-agent-status"
DEFAULT_AGENT_GROUP = "edge-agent"
ANNOUNCE_PREFIX = "agent-"


# The last words of "no agent answers": `edge-agent status` puts systemd's answer under its first line
# instead (`OTHER_CONFIG_HINT`), when it has one.
ASK_SYSTEMD = "Is it running (systemctl status edge-agent)? Otherwise pass -c CONFIG or --socket PATH"
OTHER_CONFIG_HINT = "If it runs with another config, pass -c CONFIG or --socket PATH"


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
    private = directory.name.startswith("edge-agent-")  # /tmp/edge-agent-<uid>: this user's alone
    try:
        try:
            directory.mkdir(mode=0o700 if private else 0o755)
            if not private:  # whatever the umask: other users' `status` looks for agents here
                directory.chmod(0o755)
        except FileExistsError:
            pass
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
    """Announced sockets that can be trusted (module docstring), newest first (a symlink left by a
    killed agent is listed too)."""
    found: list[tuple[float, Path]] = []
    for directory in search_dirs():
        with contextlib.suppress(OSError):
            owners = _announcers(directory)
            for link in directory.glob(f"{ANNOUNCE_PREFIX}*.sock"):
                with contextlib.suppress(OSError):
                    info = link.lstat()
                    if info.st_uid in owners and _socket_owned(link, owners):
                        found.append((info.st_mtime, link))
    return [path for _, path in sorted(found, reverse=True)]


def _announcers(directory: Path) -> set[int]:
    """The users whose announcements in `directory` are believed (none: the directory is not).

    The invoking user and root always; the directory's owner too when only root or this user can
    have made the directory theirs, i.e. its parent is writable by nobody else (`/run/edge-agent`,
    systemd's RuntimeDirectory for the service user, but not `/tmp/edge-agent-0` made by a user)."""
    real = directory.resolve()
    owner = real.stat().st_uid
    ours = {os.getuid(), 0}
    if owner in ours:
        return ours
    parent = real.parent.stat()
    if parent.st_uid in ours and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return ours | {owner}
    return set()


def _socket_owned(link: Path, owners: set[int]) -> bool:
    """The socket `link` names belongs to one of `owners`; a socket that cannot be looked at (gone,
    or in a directory closed to this user) is kept: it cannot be talked to either, only reported."""
    try:
        return link.stat().st_uid in owners
    except (FileNotFoundError, PermissionError):
        return True


def _section_value(text: str, section: str, key: str, *, unique: bool) -> str | None:
    """`key = "..."` inside `[section]` of a file that is no longer TOML (half-edited): the first
    one between that header and the next; anywhere in the file when the header itself is broken
    and the key is `unique` to its section (`state_dir`, not `path`)."""
    header = re.search(rf"^\s*\[{re.escape(section)}\]\s*(#.*)?$", text, re.M)
    if header is None and not unique:
        return None
    body = text if header is None else text[header.end() :]
    end = re.search(r"^\s*\[", body, re.M) if header is not None else None
    body = body[: end.start() if end else None]
    found = re.search(rf'^\s*{re.escape(key)}\s*=\s*["\']([^"\']+)["\']', body, re.M)
    return found.group(1) if found else None


def state_file_from_config(path: Path, section: str, key: str, default_name: str) -> Path | None:
    """The file under `gateway.state_dir` that `[section] key` names (or `default_name`), from a
    config read without validating it: None when the file is unreadable. A file that is not TOML
    (half-edited) is searched for the two keys in their sections."""
    read = _read_leniently(path, section, key)
    if read is None:
        return None
    base, name = read
    return base / (name if isinstance(name, str) and name else default_name)


def state_dir_from_config(path: Path) -> Path | None:
    """`gateway.state_dir` (or the default) from a config read as `state_file_from_config` reads it."""
    read = _read_leniently(path, "gateway", "state_dir")
    return None if read is None else read[0]


def _read_leniently(path: Path, section: str, key: str) -> tuple[Path, object] | None:
    """The state directory a config names and the value of `[section] key`, without validating."""
    try:
        text = read_toml_text(path)
    except (OSError, NotUtf8TextError):
        return None
    state_dir: object = None
    name: object = None
    try:
        raw = parse_toml(text)
    except TOMLDecodeError:
        state_dir = _section_value(text, "gateway", "state_dir", unique=True)
        name = _section_value(text, section, key, unique=key != "path")
    else:
        gateway, table = raw.get("gateway"), raw.get(section)
        state_dir = gateway.get("state_dir") if isinstance(gateway, dict) else None
        name = table.get(key) if isinstance(table, dict) else None
    return Path(state_dir) if isinstance(state_dir, str) and state_dir else DEFAULT_STATE_DIR, name


def socket_from_config(path: Path) -> Path | None:
    """The status socket a config names, without validating it (None when the file is unreadable)."""
    return state_file_from_config(path, "status", "socket", DEFAULT_SOCKET_NAME)


class Answer(enum.Enum):
    YES = "yes"
    NO = "no"
    DENIED = "denied"  # the socket, or a directory on the way, may not be opened by this user


def probe(path: Path, timeout_s: float = 1.0) -> Answer:
    """Whether something accepts connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except PermissionError:
            return Answer.DENIED
        except OSError:
            return Answer.NO
    return Answer.YES


def answers(path: Path, timeout_s: float = 1.0) -> bool:
    """Something accepts connections on the unix socket at `path`."""
    return probe(path, timeout_s) is Answer.YES


class NoAgentError(Exception):
    """No agent answers where `find_socket` looked, or several do and nothing says which."""


def _live(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The paths that answer and those this user may not open, one per socket (two links to one
    agent count once)."""
    seen: dict[Path, Answer] = {}
    live: list[Path] = []
    denied: list[Path] = []
    for path in paths:
        target = path.resolve()
        if target in seen:
            continue
        seen[target] = probe(path)
        if seen[target] is Answer.YES:
            live.append(path)
        elif seen[target] is Answer.DENIED:
            denied.append(path)
    return live, denied


def find_socket(socket_arg: str | None, config_arg: str | None, default_config: Path) -> Path:
    """The status socket to talk to (see the module docstring for the order), or `NoAgentError`
    saying everything that was tried, or which socket this user may not open."""
    if socket_arg:
        return Path(socket_arg)
    tried: list[str] = []
    denied: list[str] = []
    if config_arg:
        hinted = socket_from_config(Path(config_arg))
        if hinted is not None:
            return hinted  # the caller asked for this agent: its error message names the socket
        tried.append(f"{config_arg} (cannot read it)")
    else:
        hinted = socket_from_config(default_config)
        if hinted is not None:
            if _answering(hinted, denied):
                return hinted
            tried.append(f"{hinted} (from {default_config})")
    live, refused = _live(announced())
    refused = [link for link in refused if not announcer_gone(link)]  # killed: it says nothing of who runs
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        agents = ", ".join(f"{p} -> {_target(p)}" for p in live)
        raise NoAgentError(f"several agents run here ({agents}); pick one with --socket PATH or -c CONFIG")
    tried.append(f"agents announced in {', '.join(str(d) for d in search_dirs())} (none running)")
    denied += [
        f"an agent is announced at {link} but you may not open its socket {link.resolve()}: "
        + ask_for_access(link.resolve())
        for link in refused
    ]
    fallback = DEFAULT_STATE_DIR / DEFAULT_SOCKET_NAME
    if _answering(fallback, denied):
        return fallback
    if denied:
        raise NoAgentError(denied[0])
    tried.append(str(fallback))
    raise NoAgentError("no agent answers; tried " + "; ".join(tried) + ". " + ASK_SYSTEMD)


def announcer_gone(link: Path) -> bool:
    """The agent that made the announcement `link` (`agent-<pid>.sock`) is known not to run: no
    process has its pid (one of another user's still runs: the kernel refuses the signal). A
    killed agent leaves its link and socket, which this user may be refused all the same."""
    pid = link.name.removeprefix(ANNOUNCE_PREFIX).removesuffix(".sock")
    if not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: it runs, as someone else
        return False
    return False


def _answering(path: Path, denied: list[str]) -> bool:
    """`path` answers; if this user may not open it, that is added to `denied` as it is told."""
    answer = probe(path)
    if answer is Answer.DENIED:
        denied.append(f"you may not open the status socket {path}: " + ask_for_access(path))
    return answer is Answer.YES


def ask_for_access(path: Path) -> str:
    """What a user refused at the status socket `path` is to do: be root, or join the status group
    (the socket's, when the agent gave it one; else the default). Never the agent's own group."""
    group = _status_group_of(path)
    return (
        f"run as root or as a member of {group} (sudo usermod -aG {group} <user>, then log in again); "
        f"never add people to the agent's group ({_agent_group_of(path)}): it can change the agent's "
        "config and read its secrets"
    )


def state_access_hint(path: Path) -> str:
    """What a user who may not look at `path`, a file in the agent's state directory (0750), is to
    do: run as root or as the agent's user, named when it can be told: the owner of the nearest
    directory on the way this user can look at, the one that shut them out."""
    for step in (path, *path.parents):
        try:
            uid = step.stat().st_uid
        except OSError:
            continue
        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:
            owner = f"uid {uid}"
        if uid != 0:
            return f"run as root or as the agent's user ({owner}, the owner of {step})"
        break
    return "run as root or as the agent's user"


def _status_group_of(path: Path) -> str:
    """The socket's group when the agent gave it one (a group other than its owner's own, i.e. the
    status group), else `DEFAULT_STATUS_GROUP`: a socket still in the agent's own group, or one
    that cannot be looked at, is never answered with the agent's group."""
    try:
        info = path.stat()
        if info.st_gid == pwd.getpwuid(info.st_uid).pw_gid:
            return DEFAULT_STATUS_GROUP
        return grp.getgrgid(info.st_gid).gr_name
    except (OSError, KeyError):
        return DEFAULT_STATUS_GROUP


def _agent_group_of(path: Path) -> str:
    """The agent's own group, to warn against: the socket owner's, when it can be told."""
    try:
        return grp.getgrgid(pwd.getpwuid(path.stat().st_uid).pw_gid).gr_name
    except (OSError, KeyError):
        return DEFAULT_AGENT_GROUP


def _target(link: Path) -> str:
    try:
        return str(link.readlink())
    except OSError:
        return "?"
