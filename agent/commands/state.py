"""`edge-agent state`: carry a gateway's learnt state to a replacement card (agent.state_transfer).

    edge-agent state export -c /etc/edge-agent/config.toml --out gw-03-state.tar.gz
    ssh gw-03 sudo -u edge-agent edge-agent state export --out - > gw-03-state.tar.gz
    edge-agent state export --no-histories --out gw-03-state.tar.gz   # without the rolling histories
    edge-agent state import gw-03-state.tar.gz -c /etc/edge-agent/config.toml [--force]
    sudo -u edge-agent edge-agent state import - < gw-03-state.tar.gz   # as the agent's user

`export` may run beside the agent. `import` needs the agent stopped (it would overwrite what the
agent holds open): run it on the new card before the agent's first start, as the agent's user or
root. Exit 0 done, 1 refused or failed (the reason on stderr), 2 a config that does not load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, BinaryIO

from water_edge.agent import locate
from water_edge.agent.commands._exits import DEFAULT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from water_edge.core import units
from water_edge.core.errors import ConfigError
from water_edge.core.files import atomic_write_with


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "state", help="export a gateway's learnt state (baselines, calibrations), or import it on a new card"
    )
    commands = parser.add_subparsers(dest="state_command", required=True)
    export = commands.add_parser("export", help="write the learnt state to an archive (the agent may run)")
    export.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"the agent's config (default {DEFAULT_CONFIG})"
    )
    export.add_argument(
        "--out",
        required=True,
        help="the archive to write (.tar.gz, mode 0600), or - for stdout (ssh gw ... > FILE)",
    )
    export.add_argument(
        "--no-histories",
        dest="histories",
        action="store_false",
        help="leave out the pumps' and machines' rolling feature histories (tens of MB; only a "
        "recalibration reads them): what the agent's own backup to the centre carries",
    )
    export.set_defaults(func=run_export)
    restore = commands.add_parser("import", help="put an exported state under this config's state directory")
    restore.add_argument(
        "archive", type=Path, help="an archive made by `edge-agent state export`, or - for stdin"
    )
    restore.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"the agent's config (default {DEFAULT_CONFIG})"
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="import an archive of another gateway or site (a renamed replacement)",
    )
    restore.set_defaults(func=run_import)


def _config(path: str, command: str) -> Any | None:
    """The loaded config, or None once its problems are printed (one per line)."""
    from water_edge.agent.config import load_config

    try:
        return load_config(path, closed_state="warning")
    except ConfigError as exc:
        print(f"edge-agent state {command}: invalid configuration:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return None


def run_export(args: argparse.Namespace) -> int:
    from water_edge.agent.state_transfer import StateTransferError, Written, write_export

    if (config := _config(args.config, "export")) is None:
        return EXIT_USAGE
    gw = config.gateway

    def export(out: BinaryIO, scratch: Path | None) -> Written:
        # Streamed: a history of tens of MB is never held in memory (copies go beside the output).
        return write_export(gw.state_dir, gw.site, gw.id, out, histories=args.histories, scratch=scratch)

    try:
        if args.out == "-":
            done = export(sys.stdout.buffer, None)
            sys.stdout.buffer.flush()
        else:
            out = Path(args.out)
            # mode 0600: calibrations name the site's assets
            done = atomic_write_with(out, lambda file: export(file, out.parent), mode=0o600)
    except (StateTransferError, OSError) as exc:
        print(f"edge-agent state export: {_why(exc)}", file=sys.stderr)
        return EXIT_FAILED
    where = "stdout" if args.out == "-" else args.out
    print(
        f"{where}: {done.files} files, {units.size(done.bytes)} of learnt state of gateway "
        f"{config.gateway.id} (site {config.gateway.site})",
        file=sys.stderr if args.out == "-" else sys.stdout,
    )
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    from water_edge.agent.state_transfer import StateTransferError, import_state

    if (config := _config(args.config, "import")) is None:
        return EXIT_USAGE
    # An agent answers, or a socket this user may not open may hide one: either way, not now.
    if (answer := locate.probe(config.status_socket, 2.0)) is not locate.Answer.NO:
        running = "an agent is running on" if answer is locate.Answer.YES else "this user may not open"
        print(
            f"edge-agent state import: {running} {config.status_socket}: stop the agent first "
            "(systemctl stop edge-agent), import as its user or root, then start it",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        stdin = args.archive == Path("-")
        done = import_state(
            Path("stdin") if stdin else args.archive,
            config.gateway.state_dir,
            config.gateway.site,
            config.gateway.id,
            force=args.force,
            content=sys.stdin.buffer.read() if stdin else None,
        )
    except (StateTransferError, OSError) as exc:
        print(f"edge-agent state import: {_why(exc)}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{config.gateway.state_dir}: {done.files} files, {units.size(done.bytes)} of what gateway "
        f"{done.gateway} (site {done.site}) had learnt by {units.timestamp(done.created_ns)} "
        f"(edge-agent {done.agent_version}); the agent goes on from it at its next start"
    )
    return EXIT_OK


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
