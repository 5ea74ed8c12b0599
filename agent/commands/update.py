"""`edge-agent update status|apply|rollback|run`: the gateway's releases and its self-update, on site.

    edge-agent update status                   releases, the last update and how it ended
    edge-agent update apply /media/usb/x.tar   check a bundle's signature, hand it to the updater
    edge-agent update rollback                 back to the previous release, now (health-checked)
    edge-agent update min-version [1.3.0]      the lowest release this gateway installs; raise it
    edge-agent update run                      the updater itself (edge-agent-update.service runs it)

`apply` and `rollback` write a request that edge-agent-update.service (started by its path unit)
carries out; `--now` carries it out in this process instead (no systemd, or to watch it happen).
Run them as root: the install root and the restart are root's. See docs/updates.md.

As root, the state directory (update files, audit log, status socket) comes from `--state-dir`, or
is the service's `/var/lib/edge-agent`, never the config's `gateway.state_dir`: the agent may
rewrite its config (`config_update`), and root must not work in a directory the agent picked.

None of them needs a config that validates (a technician rolls back an agent that a bad config or
a bad release keeps restarting): from a config that does not, or none, they take what they need
leniently and say on stderr what they took at its default (`update/settings.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from water_edge.agent.commands._exits import DEFAULT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from water_edge.core.cli_numbers import number

# edge-agent.service's StateDirectory=, the directory edge-agent-update.path watches.
SERVICE_STATE_DIR = Path("/var/lib/edge-agent")


def register(subparsers: Any) -> None:
    update = subparsers.add_parser("update", help="self-update: releases, apply a bundle, roll back")
    sub = update.add_subparsers(dest="update_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
        )
        p.add_argument(
            "--state-dir",
            type=Path,
            help=f"the agent's state directory (default as root: {SERVICE_STATE_DIR}; "
            "otherwise gateway.state_dir)",
        )

    def updater_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", type=Path, help="install root (default: [update] root)")
        p.add_argument("--keys", type=Path, help="trusted release keys (default: [update] release_keys)")
        p.add_argument(
            "--restart-command",
            help="how to restart the agent (default: systemctl restart --no-block edge-agent.service)",
        )
        p.add_argument(
            "--restarts-command",
            help="prints how often the supervisor has restarted the agent (default with systemd's restart: "
            "systemctl show --property=NRestarts --value edge-agent.service; none with another)",
        )
        p.add_argument("--python", help="interpreter new releases are built with (default: this one's base)")
        p.add_argument(
            "--health-window", type=number(above=0), help="seconds (default: [update] health_window_s)"
        )

    p = sub.add_parser("status", help="releases on this gateway and the last update")
    common(p)
    p.add_argument("--root", type=Path, help="install root (default: [update] root)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = sub.add_parser("apply", help="apply a release bundle from a file (a USB stick)")
    common(p)
    p.add_argument("bundle", type=Path)
    p.add_argument("--now", action="store_true", help="run the updater here instead of through its service")
    p.add_argument("--wait", action="store_true", help="follow the update until it ends")
    updater_options(p)
    p.set_defaults(func=_apply)

    p = sub.add_parser(
        "rollback",
        help="switch back to the previous release and restart; back again if it fails its health check",
    )
    common(p)
    p.add_argument("--now", action="store_true", help="run the updater here instead of through its service")
    updater_options(p)
    p.set_defaults(func=_rollback)

    p = sub.add_parser("min-version", help="the lowest release this gateway installs, or raise it (root)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--root", type=Path, help="install root (default: [update] root)")
    p.add_argument(
        "version", nargs="?", help="raise the minimum to this release version (at most the current one)"
    )
    p.add_argument("--lower", action="store_true", help="allow a version below the present minimum")
    p.set_defaults(func=_min_version)

    p = sub.add_parser("run", help="carry out a pending request or resume a trial (the updater service)")
    common(p)
    updater_options(p)
    p.set_defaults(func=_run)


def _config(args: argparse.Namespace, *, uses: tuple[str, ...]) -> Any:
    """The settings these commands take from the config (`UpdateSettings`), also from one that does
    not validate or cannot be read: then one line on stderr says so and names the keys of `uses`
    (what this command reads from the config) that are at their defaults. The state directory and
    the options given on the command line are not read from the config and not named."""
    from water_edge.agent.update.settings import STATE_DIR_KEY, update_settings

    settings = update_settings(args.config)
    state_dir = getattr(args, "state_dir", None)
    given = {
        "update.root": getattr(args, "root", None),
        "update.release_keys": getattr(args, "keys", None),
        "update.health_window_s": getattr(args, "health_window", None),
        # Root never takes it from the config (`_state_dir`).
        STATE_DIR_KEY: state_dir if state_dir is not None or os.geteuid() != 0 else SERVICE_STATE_DIR,
    }
    if (note := settings.note(key for key in uses if given.get(key) is None)) is not None:
        sys.stderr.write(f"edge-agent update: {note}\n")
    return settings


# What each command reads from the config (unless given as an option), for `_config`'s note.
_STATUS_USES = ("update.root", "gateway.state_dir")
_UPDATER_USES = (
    "update.root",
    "update.release_keys",
    "update.health_window_s",
    "update.rollback_after_restarts",
    "update.max_bundle_bytes",
    "gateway.state_dir",
    "status.socket",
    "security.audit_log",
)


def _state_dir(args: argparse.Namespace, config: Any) -> Path:
    """The state directory to work in: root takes it from its own command line or its own default,
    never from the config the agent may rewrite (it chose where root reads the request, writes its
    state and audit line, and which socket judges a release). Anyone else may follow the config."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    configured = Path(config.state_dir)
    if os.geteuid() != 0:
        return configured
    if configured != SERVICE_STATE_DIR and "gateway.state_dir" not in config.defaulted:
        sys.stderr.write(
            f"edge-agent update: as root the state directory is {SERVICE_STATE_DIR}, not the config's "
            f"{configured}; give --state-dir for another\n"
        )
    return SERVICE_STATE_DIR


def _files(state_dir: Path) -> Any:
    from water_edge.agent.update.state import UpdateFiles

    return UpdateFiles(state_dir)


def _updater(args: argparse.Namespace, config: Any, state_dir: Path) -> Any:
    from water_edge.agent.update.layout import Layout
    from water_edge.agent.update.service import CommandService
    from water_edge.agent.update.updater import Updater

    return Updater(
        layout=Layout(args.root or config.update.root),
        files=_files(state_dir),
        keys_file=args.keys or config.update.release_keys,
        config_path=Path(args.config),
        # The config names the socket and the log inside the state directory (an absolute socket,
        # e.g. /run/edge-agent/status.sock, is documented; root only asks it for a status).
        status_socket=state_dir / config.status_socket,
        service=CommandService.parse(args.restart_command, args.restarts_command),
        audit_path=state_dir / config.audit_log,
        python=args.python,
        health_window_s=args.health_window or config.update.health_window_s,
        rollback_after_restarts=config.update.rollback_after_restarts,
        max_bundle_bytes=config.update.max_bundle_bytes,
    )


def _run_locked(args: argparse.Namespace, config: Any, state_dir: Path) -> int:
    from water_edge.agent.update.layout import Layout, locked

    try:
        with locked(Layout(args.root or config.update.root).lock_path()):
            updater = _updater(args, config, state_dir)
            state = updater.run()
    except RuntimeError as exc:
        sys.stderr.write(f"edge-agent update: {exc}\n")
        return EXIT_FAILED
    print(_describe(state))
    if updater.state_unwritten is not None:
        sys.stderr.write(f"edge-agent update: state not written: {updater.state_unwritten}\n")
        return EXIT_FAILED
    # A rollback asked for by hand ends in `rolled_back` when it worked.
    done = ("idle", "committed", "rolled_back") if state.action == "rollback" else ("idle", "committed")
    return EXIT_OK if state.phase in done else EXIT_FAILED


def _describe(state: Any) -> str:
    if state.phase == "idle":
        return "no update pending"
    target = f" {state.to_version}" if state.to_version else ""
    reason = f": {state.reason}" if state.reason else ""
    return f"update{target}: {state.phase.replace('_', ' ')}{reason}"


def _status(args: argparse.Namespace) -> int:
    import orjson

    from water_edge.agent import __version__
    from water_edge.agent.update.layout import Layout
    from water_edge.agent.update.report import update_health
    from water_edge.core.health import health_json

    config = _config(args, uses=_STATUS_USES)
    files = _files(_state_dir(args, config))
    root = args.root or config.update.root
    health = update_health(__version__, files, Layout(root) if (root / "current").is_symlink() else None)
    if args.json:
        sys.stdout.write(orjson.dumps(health_json(health), option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    state = files.read_state()
    print(f"current  {health.current_release or '(not installed in ' + str(root) + ')'}")
    print(f"previous {health.previous_release or '-'}")
    print(f"minimum  {_floor_line(Layout(root))}")
    for name, record in sorted(Layout(root).failed_releases().items()):
        print(f"failed   {name}: {record.get('reason') or 'failed its health check'} (no rollback target)")
    print(_describe(state))
    for line in state.log[-8:]:
        print(f"  {line}")
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError
    from water_edge.agent.update.receive import UpdateReceiver
    from water_edge.core.digests import sha256_file

    config = _config(
        args, uses=_UPDATER_USES if args.now else ("update.max_bundle_bytes", "gateway.state_dir")
    )
    state_dir = _state_dir(args, config)
    receiver = UpdateReceiver(config.update, _files(state_dir))
    if not args.bundle.is_file():
        sys.stderr.write(f"edge-agent update: no bundle at {args.bundle}\n")
        return EXIT_USAGE
    sha = sha256_file(args.bundle)
    try:
        receiver.no_other_request(sha)
    except CommandFailedError as exc:
        sys.stderr.write(f"edge-agent update: not requested: {exc.reason}\n")
        return EXIT_FAILED
    try:
        staged = receiver.spool(args.bundle, sha)
    except OSError as exc:  # a link at update/ or spool/ (refused), a full disk
        sys.stderr.write(f"edge-agent update: not spooled: {exc}\n")
        return EXIT_FAILED
    try:
        manifest = receiver.check(staged)
    except CommandRefusedError as exc:
        sys.stderr.write(f"edge-agent update: refused: {exc.reason}\n")
        return EXIT_FAILED
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
    receiver.request(
        staged, sha, f"edge-agent update apply by {user} ({args.bundle.name})", args.health_window
    )
    print(f"{args.bundle.name}: version {manifest.version}, signed by {manifest.key_id}; requested")
    if args.now:
        return _run_locked(args, config, state_dir)
    return _follow(_files(state_dir), sha) if args.wait else EXIT_OK


def _follow(files: Any, update_id: str) -> int:
    seen = 0
    while True:
        state = files.read_state()
        if state.id == update_id:
            for line in state.log[seen:]:
                print(f"  {line}")
            seen = len(state.log)
            if state.phase in ("committed", "rolled_back", "failed"):
                print(_describe(state))
                return EXIT_OK if state.phase == "committed" else EXIT_FAILED
        time.sleep(1.0)


def _rollback(args: argparse.Namespace) -> int:
    from water_edge.core.reading import now_ns

    config = _config(args, uses=_UPDATER_USES if args.now else ("gateway.state_dir",))
    state_dir = _state_dir(args, config)
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
    request: dict[str, Any] = {
        "action": "rollback",
        "requested_by": f"edge-agent update rollback by {user}",
        "requested_ns": now_ns(),
    }
    if args.health_window:
        request["health_window_s"] = args.health_window
    try:
        _files(state_dir).write_request(request)
    except OSError as exc:  # a link at update/ (refused), a full disk
        sys.stderr.write(f"edge-agent update: rollback not requested: {exc}\n")
        return EXIT_FAILED
    if args.now:
        return _run_locked(args, config, state_dir)
    print("rollback requested (health-checked as an update is); follow it with: edge-agent update status")
    return EXIT_OK


def _floor_line(layout: Any) -> str:
    from water_edge.agent.update.floor import FloorError, read_floor

    try:
        floor = read_floor(layout.min_version)
    except FloorError as exc:
        return f"unreadable, no release is installed until it is fixed: {exc}"
    if floor is None:
        return "none (any signed release installs)"
    return f"{floor.version}" + (f" (raised by {floor.raised_by})" if floor.raised_by else "")


def _min_version(args: argparse.Namespace) -> int:
    """Show root's minimum release version, or raise it: never above the release that is current
    (a failed update returns to it), never lower without --lower."""
    from water_edge.agent.update.floor import FloorError, read_floor, write_floor
    from water_edge.agent.update.layout import Layout, locked
    from water_edge.agent.update.versions import ReleaseVersion, VersionError
    from water_edge.core.reading import now_ns

    layout = Layout(args.root or _config(args, uses=("update.root",)).update.root)
    if args.version is None:
        print(f"minimum  {_floor_line(layout)}")
        return EXIT_OK
    try:
        wanted = ReleaseVersion(args.version)
    except VersionError as exc:
        sys.stderr.write(f"edge-agent update: {exc}\n")
        return EXIT_USAGE
    try:
        floor, was = read_floor(layout.min_version), None
    except FloorError as exc:
        floor, was = None, f"unreadable: {exc}"  # replacing it is how an unreadable floor is fixed
    if problem := _floor_problem(layout, wanted, None if floor is None else floor.version, args.lower):
        sys.stderr.write(f"edge-agent update: {problem}\n")
        return EXIT_FAILED
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
    try:
        with locked(layout.lock_path()):
            write_floor(layout.min_version, wanted, f"edge-agent update min-version by {user}", now_ns())
    except (RuntimeError, OSError) as exc:
        sys.stderr.write(f"edge-agent update: minimum not set: {exc}\n")
        return EXIT_FAILED
    print(f"minimum  {wanted} (was {was or (floor.version if floor else 'none')})")
    return EXIT_OK


def _floor_problem(layout: Any, wanted: Any, floor: Any, lower: bool) -> str | None:
    """Why the minimum may not be set to `wanted` (a ReleaseVersion) over `floor`, or None."""
    from water_edge.agent.update.versions import ReleaseVersion, VersionError

    current = layout.release(layout.current)
    try:
        running = None if current is None else ReleaseVersion(current.version or "")
    except VersionError:
        running = None
    if running is None:
        return (
            f"the current release in {layout.root} has no version to compare {wanted} with; "
            "the minimum is set only at or below the release that runs"
        )
    if wanted > running:
        return (
            f"the current release is {running}; a minimum above it would leave a failed update only a "
            f"release below it to return to: update to {wanted} or later first (a release signed with "
            "`release bundle --min-version` raises it when it is committed)"
        )
    if floor is not None and wanted < floor and not lower:
        return f"the minimum is {floor} already; give --lower to set a lower one"
    return None


def _run(args: argparse.Namespace) -> int:
    config = _config(args, uses=_UPDATER_USES)
    return _run_locked(args, config, _state_dir(args, config))
