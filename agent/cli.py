"""`edge-agent`: run the agent, check a config, and look inside a running one.

Exit codes: 0 ok; 1 the agent or a command failed at run time, or the output could not be written
(a full disk: one line on stderr); 2 bad usage or an invalid config, or files of the agent's state
directory this user may not look at (run as root or as the agent's user); 78 (`check-config`,
`run`, `probe`) the config is still the unedited example install.sh wrote (agent/config/example.py:
the unit does not restart the agent for it). `status` speaks to monitoring systems (docs/status.md):
0 the agent is ok, 1 it is degraded (a device down, the uplink not online, the outbox nearly full),
2 no agent answers; `tail` exits 2 when no agent answers, or it does not answer within 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from water_edge.agent import __version__
from water_edge.agent.commands._exits import (
    DEFAULT_CONFIG,
    EXIT_DEGRADED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    output_failed,
)
from water_edge.core.files import printable_texts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Water-utility edge agent: devices -> SQLite outbox -> MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG) -> None:
        p.add_argument(
            "-c",
            "--config",
            default=default,
            help=f"config file (default {DEFAULT_CONFIG}, or $EDGE_AGENT_CONFIG)",
        )

    run = sub.add_parser("run", help="run the agent in the foreground (what systemd starts)")
    with_config(run)

    check = sub.add_parser(
        "check-config", help="validate a config file; exit 0 if valid, 2 if not, 78 if the unedited example"
    )
    with_config(check, default=None)  # None: not given (a FILE argument too would be a second file)
    # `edge-agent check-config /etc/edge-agent/config.toml` is what people type first.
    check.add_argument("file", nargs="?", default=None, help="the config file (the same as -c FILE)")

    def finding_agent(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            help="a hint: the config of the agent to ask (default: find the running agent; "
            "a broken config still gives its socket)",
        )
        p.add_argument("--socket", help="status socket of the agent to ask (overrides -c)")

    status = sub.add_parser(
        "status",
        help="ask the running agent how it is doing (exit 0 ok, 1 degraded, 2 no agent answers)",
    )
    finding_agent(status)
    output = status.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument(
        "--prometheus",
        action="store_true",
        help="the Prometheus text format, e.g. for node_exporter's textfile collector (exit 0 whatever "
        "the verdict, which is a metric; 2 no agent answers)",
    )
    status.add_argument("-v", "--verbose", action="store_true", help="also each driver's own counters")

    tail = sub.add_parser("tail", help="print readings live as the running agent takes them")
    finding_agent(tail)
    tail.add_argument("--tag", default="*", help="only tags matching this glob, e.g. 'pump1.*'")
    tail.add_argument("--device", default="*", help="only devices matching this glob")
    tail.add_argument("--json", action="store_true", help="one JSON object per line (exact values)")
    tail.add_argument("--raw", action="store_true", help="exact values and nanosecond timestamps")

    buffer = sub.add_parser("buffer", help="inspect the outbox database")
    buffer_sub = buffer.add_subparsers(dest="buffer_command", required=True)
    stats = buffer_sub.add_parser("stats", help="depth, bytes, oldest age, evictions")
    with_config(stats)
    stats.add_argument("--db", help="outbox file (default: from the config)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")

    for module in _command_modules():
        module.register(sub)
    return parser


def _command_modules() -> list[Any]:
    import importlib
    import pkgutil

    import water_edge.agent.commands

    return [
        importlib.import_module(f"water_edge.agent.commands.{info.name}")
        for info in sorted(pkgutil.iter_modules(water_edge.agent.commands.__path__), key=lambda i: i.name)
        if not info.name.startswith("_")  # shared helpers, not commands
    ]


def _load(path: str, *, closed_state: Literal["error", "warning"] = "error") -> Any:
    from water_edge.agent.config import load_config

    return load_config(path, closed_state=closed_state)


def _config_errors(exc: Exception) -> int:
    from water_edge.agent.config.example import EXIT_UNEDITED_EXAMPLE, UntouchedExampleError
    from water_edge.agent.config.load import StateFilesClosedError

    if isinstance(exc, UntouchedExampleError):  # valid, and nobody has configured it: what to edit
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_UNEDITED_EXAMPLE
    if isinstance(exc, StateFilesClosedError):  # a valid config: one line, who may look
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("invalid configuration:", file=sys.stderr)
    for line in str(exc).splitlines():
        print(f"  {line}", file=sys.stderr)
    return EXIT_USAGE


def _config_error_text(exc: Exception) -> str:
    """A config error as `--json`'s one `error` string."""
    from water_edge.agent.config.example import UntouchedExampleError
    from water_edge.agent.config.load import StateFilesClosedError

    if isinstance(exc, StateFilesClosedError | UntouchedExampleError):
        return str(exc)
    return "invalid configuration: " + "; ".join(str(exc).splitlines())


def cmd_check_config(args: argparse.Namespace) -> int:
    from water_edge.core.errors import ConfigError

    if args.file is not None and args.config is not None and args.file != args.config:
        print(
            f"edge-agent check-config: two files given ({args.config} and {args.file}); check one at a time",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        # State files this user may not look at: one warning, the rest checked.
        config = _load(args.file or args.config or DEFAULT_CONFIG, closed_state="warning")
    except ConfigError as exc:
        return _config_errors(exc)
    from water_edge.agent.config.files import file_problems
    from water_edge.agent.config.memory import count_tags, estimate, warnings

    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{config.source}: OK ({len(config.devices)} devices, {count_tags(config):,} tags, "
        f"broker {config.uplink.brokers_text()}, about {estimate(config).total_mib:.0f} MiB to run)"
    )
    for line in warnings(config) + file_problems(config):
        print(f"{config.source}: warning: {line}", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from water_edge.agent.runtime import run_agent
    from water_edge.core import logs
    from water_edge.core.errors import AgentError, ConfigError

    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _config_errors(exc)
    from water_edge.agent.secrets import config_secrets

    logs.configure(
        config.log.level,
        config.log.json_lines,
        secrets=config_secrets(config),
        flood_burst=config.log.flood_burst,
        flood_window_s=config.log.flood_window_s,
    )
    import structlog

    from water_edge.agent.config.files import file_problems

    for warning in config.warnings:
        structlog.get_logger(__name__).warning("config.warning", detail=warning)
    for problem in file_problems(config):
        # Started all the same: the devices are read and buffered while the file is put right.
        structlog.get_logger(__name__).error("config.file_problem", file=str(config.source), detail=problem)
    try:
        return asyncio.run(run_agent(config))
    except AgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a path the system refuses (state_dir, audit log ...)
        what = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        structlog.get_logger(__name__).error("agent.os_error", error=what)
        print(f"edge-agent: {what}", file=sys.stderr)
        return EXIT_FAILED


def _socket_path(args: argparse.Namespace) -> Path:
    """The running agent's status socket; `locate.NoAgentError` when none can be found."""
    from water_edge.agent.locate import find_socket

    return find_socket(args.socket, args.config, Path(DEFAULT_CONFIG))


# `edge-agent status` lays out the status document (agent.status_document, docs/status.md): a label
# per section, then the lines that section rendered itself. It knows the document's sections and
# that list entries carry a `name`, never a component's fields.
SECTION_LABELS = (("uplink", "uplink   "), ("pipeline", "pipeline "), ("buffer", "buffer   "))


def format_status(snap: dict[str, Any], *, verbose: bool = False) -> str:
    lines = _labelled("edge-agent ", snap["agent"])
    verdict = snap.get("verdict")
    if verdict:
        problems = verdict.get("problems") or []
        lines.append(f"state    {verdict['state']}" + (": " + "; ".join(problems) if problems else ""))
    for section, label in SECTION_LABELS:
        lines += _labelled(label, snap[section])
    for proc in snap.get("processors") or []:
        lines += [f"model    {proc['name']}: {line}" for line in proc.get("lines") or []]
    lines += [f"ALARM    {alarm}" for alarm in snap.get("alarms") or []]
    lines.append("drivers")
    width = max((len(d["name"]) for d in snap["drivers"]), default=0)
    for device in snap["drivers"]:
        label = f"  {device['name']:<{width}}  "
        lines += _labelled(label, device)
        if verbose:
            lines += [" " * len(label) + "  " + line for line in device.get("driver_lines") or []]
    from water_edge.core.units import printable

    return "\n".join(printable(line) for line in lines)  # device text (errors, names) drives no terminal


def _labelled(label: str, section: dict[str, Any]) -> list[str]:
    """A section's lines: the first after its label, further ones indented to line up with it."""
    lines: list[str] = section.get("lines") or []
    return [(label if i == 0 else " " * len(label)) + line for i, line in enumerate(lines)]


def cmd_status(args: argparse.Namespace) -> int:
    from water_edge.agent.locate import ASK_SYSTEMD, OTHER_CONFIG_HINT, NoAgentError
    from water_edge.agent.status import AgentNotRunningError, StatusRefusedError, request_status

    socket: Path | None = None
    try:
        socket = _socket_path(args)
        snap = request_status(socket)
    except (AgentNotRunningError, NoAgentError) as exc:
        service = None
        if not isinstance(exc, StatusRefusedError) and not isinstance(exc.__cause__, PermissionError):
            # Why it is not running, as systemd tells it (none of it when the agent answered with a
            # refusal, or runs and this user may not open its socket: the line above says which).
            from water_edge.agent.service_state import service_state

            service = service_state(socket=socket, config=Path(args.config or DEFAULT_CONFIG))
        lines = service.lines if service is not None else []
        # systemd's lines answer "is it running?": the first line need not ask it as well
        message = str(exc).replace(ASK_SYSTEMD, OTHER_CONFIG_HINT) if lines else str(exc)
        print(f"edge-agent: {printable_texts(message)}", file=sys.stderr)
        for line in lines:
            print(printable_texts(line), file=sys.stderr)
        if args.json:  # a script reading .verdict.state gets a word, not empty input
            more = {"service": {"unit": service.unit, **service.properties}} if service is not None else {}
            _json_error(message, verdict={"state": "down", "problems": [message, *lines]}, **more)
        if args.prometheus:  # a textfile collector's file says `down` rather than keeping old figures
            from water_edge.agent.metrics_export import no_agent_text

            sys.stdout.write(no_agent_text(printable_texts(message)))
        return EXIT_NOT_RUNNING
    if args.prometheus:
        from water_edge.agent.metrics_export import exposition_text

        sys.stdout.write(exposition_text(snap))
        return EXIT_OK  # the verdict is in the metrics; 1 would stop a `cmd > f && mv f` textfile update
    if args.json:
        sys.stdout.write(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_status(snap, verbose=args.verbose))
    state = (snap.get("verdict") or {}).get("state", "ok")
    return EXIT_OK if state == "ok" else EXIT_DEGRADED


def _outbox_of(config: str) -> Path:
    """The outbox `config` names. A config that does not validate (half-edited, which is when the
    agent is down and its outbox figures wanted) still names it: read leniently, with a note."""
    from water_edge.agent.config.load import StateFilesClosedError
    from water_edge.agent.locate import state_file_from_config
    from water_edge.core.errors import ConfigError

    try:
        path: Path = _load(config).buffer_path
    except StateFilesClosedError:
        raise  # valid, and the outbox is what this user may not read
    except ConfigError as exc:
        lenient = state_file_from_config(Path(config), "buffer", "path", "outbox.sqlite")
        if lenient is None:
            raise
        print(
            f"edge-agent: {config} does not validate ({len(exc.problems)} problem(s): edge-agent "
            f"check-config -c {config}); reading the outbox it names, {lenient}",
            file=sys.stderr,
        )
        return lenient
    return path


def _json_error(message: str, **more: Any) -> None:
    """`--json`'s answer when the command has none to give: `{"error": ...}` on stdout (the exit
    code and the line on stderr as without `--json`)."""
    sys.stdout.write(orjson.dumps(printable_texts({"error": message, **more})).decode() + "\n")


def format_reading(reading: dict[str, Any], *, raw: bool = False) -> str:
    """One line of `tail`: local time, device/tag, the value at its precision, unit, quality."""
    from water_edge.core import units

    when = str(reading["ts"]) if raw else units.timestamp(reading["ts"])
    value = (
        repr(reading["value"])
        if raw and isinstance(reading["value"], float)
        else units.value(reading["value"])
    )
    unit = f" {reading['unit']}" if reading.get("unit") else ""
    quality = "" if reading["quality"] == "good" else f"  [{reading['quality']}]"
    reason = f" {reading['reason']}" if reading.get("reason") else ""
    return units.printable(f"{when}  {reading['source']}/{reading['tag']} = {value}{unit}{quality}{reason}")


# `tail`: after this long of readings none of which passed --tag/--device, say what did come
TAIL_NO_MATCH_HINT_S: Final = 5.0


def cmd_tail(args: argparse.Namespace) -> int:
    from water_edge.agent.locate import NoAgentError
    from water_edge.agent.status import AgentNotRunningError, tail_lines

    unmatched = _Unmatched(args.tag, args.device)
    try:
        path = _socket_path(args)
        for reading in tail_lines(path):
            if not (fnmatch.fnmatchcase(reading["tag"], args.tag)
                    and fnmatch.fnmatchcase(reading["source"], args.device)):  # fmt: skip
                unmatched.see(reading)
                continue
            unmatched.matched = True
            if args.json:
                sys.stdout.write(orjson.dumps(reading).decode() + "\n")
            else:
                print(format_reading(reading, raw=args.raw))
            sys.stdout.flush()
    except (AgentNotRunningError, NoAgentError) as exc:
        print(f"edge-agent: {printable_texts(str(exc))}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except KeyboardInterrupt:
        return EXIT_OK
    # The stream ended without Ctrl-C: the agent stopped, or dropped this reader as too slow.
    print(
        f"edge-agent: the agent on {path} closed the connection: it stopped, or dropped this reader "
        "for not keeping up (a paused pager?)",
        file=sys.stderr,
    )
    return EXIT_FAILED


class _Unmatched:
    """Once, when readings come and none passes the filters: which devices and tags did come (a
    `--tag pump1` without `*`, or `Pump1.*`: matching is exact and case-sensitive)."""

    def __init__(self, tag: str, device: str) -> None:
        self.tag, self.device = tag, device
        self.matched = False
        self.since: float | None = None
        self.devices: set[str] = set()
        self.tags: list[str] = []

    def see(self, reading: dict[str, Any]) -> None:
        if self.matched:
            return
        now = time.monotonic()
        self.since = self.since or now
        self.devices.add(reading["source"])
        if len(self.tags) < 3 and reading["tag"] not in self.tags:
            self.tags.append(reading["tag"])
        if now - self.since >= TAIL_NO_MATCH_HINT_S:
            self.matched = True  # said once
            devices = ", ".join(sorted(self.devices)[:8])
            print(
                f"edge-agent tail: no reading in {TAIL_NO_MATCH_HINT_S:g} s matched --tag {self.tag!r} "
                f"--device {self.device!r} (globs, case-sensitive); readings came from {devices}, "
                f"tags such as {', '.join(self.tags)}",
                file=sys.stderr,
            )


def cmd_buffer_stats(args: argparse.Namespace) -> int:
    from water_edge.buffer.stats import format_stats, read_stats, stats_to_json
    from water_edge.core.errors import BufferError, ConfigError
    from water_edge.core.reading import now_ns

    try:
        path = Path(args.db) if args.db else _outbox_of(args.config)
    except ConfigError as exc:  # a missing or broken config that names no outbox, a closed state_dir
        code = _config_errors(exc)
        if args.json:
            _json_error(_config_error_text(exc))
        return code
    try:
        stats = read_stats(path)
    except BufferError as exc:
        print(f"edge-agent: {printable_texts(str(exc))}", file=sys.stderr)
        if args.json:
            _json_error(str(exc))
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(orjson.dumps(stats_to_json(stats, now_ns())).decode() + "\n")
    else:
        print(format_stats(stats, now_ns()))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from water_edge.core.errors import ConfigError

    args = _parser().parse_args(argv)
    commands = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "status": cmd_status,
        "tail": cmd_tail,
    }
    try:
        if args.command == "buffer":
            result = cmd_buffer_stats(args)
        elif args.command in commands:
            result = commands[args.command](args)
        else:
            result = args.func(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # a full disk is found here, not by the interpreter's flush at exit
        return result
    except ConfigError as exc:
        return _config_errors(exc)
    except BrokenPipeError:
        _discard_output()
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C in a command (a long scan): no traceback, the shell's code
        sys.stderr.write(f"edge-agent {args.command}: interrupted\n")
        return EXIT_INTERRUPTED
    except OSError as exc:
        if output_failed(exc):  # `> /dev/full`, a full or failing card: as a pipe whose reader left
            _discard_output()
            _say(f"edge-agent: cannot write the output: {exc.strerror or exc}")
            return EXIT_FAILED
        if isinstance(exc, PermissionError) and exc.filename is not None:
            # What no command caught: a file this user may not open (the agent's, a directory of root's).
            from water_edge.core.files import printable_name

            _say(f"edge-agent {args.command}: {printable_name(exc.filename)}: {exc.strerror or exc}")
            return EXIT_USAGE
        raise


def _say(line: str) -> None:
    """`line` on stderr, unless stderr too cannot be written."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _discard_output() -> None:
    """After stdout failed: what is still buffered for it goes to /dev/null, so that the
    interpreter's flush at exit does not fail a second time, with a traceback."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # None (closed), or a test's StringIO
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
