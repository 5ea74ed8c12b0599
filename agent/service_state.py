"""Why the agent is not running, in systemd's words: what `edge-agent status` adds when no agent
answers (docs/operations.md, Check that it runs).

`service_state()` asks `systemctl show` for the unit's state (works unprivileged) and, when the unit
is failing or failed, the agent's last error lines from the journal, each masked of the config's
secrets as the agent's own logs are (`core.redact`). It says nothing (None) where systemd
does not run (`SYSTEMD_DIR` absent: sd_booted()'s test), where systemctl is missing, fails or does
not answer: both commands together are given `TIMEOUT_S`, so `status` is never held longer.

Why not `journalctl -p warning`: the agent writes its log and its refusals (`invalid
configuration:`, a traceback) to stderr, which the journal stores at priority info whatever they
say; a priority filter would keep only systemd's own `Failed with result` lines. So the unit's
newest entries are read as JSON and the agent's lines chosen here: its plain-text lines, its
structured lines at warning or worse, and systemd's errors about the unit (an ExecStart that
cannot be run, the watchdog's timeout), of the newest run that said any.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from water_edge.core.redact import redact
from water_edge.core.units import printable

UNIT: Final = "edge-agent.service"  # deploy/edge-agent.service, as deploy/install.sh installs it
# sd_booted(): systemd is the init system when this directory exists. Tests point it elsewhere: this
# constant in-process, `$EDGE_AGENT_SYSTEMD_DIR` for an `edge-agent` they start (a test suite on a
# developer's machine, which runs systemd, is not to be told of that machine's units).
SYSTEMD_DIR = Path("/run/systemd/system")
SYSTEMD_DIR_ENV: Final = "EDGE_AGENT_SYSTEMD_DIR"
TIMEOUT_S: Final = 3.0  # systemctl and journalctl together: `status` is never held longer
JOURNAL_LINES: Final = 5  # the newest error lines shown
JOURNAL_ENTRIES: Final = 200  # the unit's newest journal entries looked through for them
LINE_MAX: Final = 300  # characters of one journal line shown
PROPERTIES: Final = (
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainStatus",
    "ExecMainCode",
    "ExecMainPID",
    "NRestarts",
    "StateChangeTimestamp",
    "ActiveEnterTimestamp",
    "UnitFileState",
)
# The agent's exit statuses (agent/cli.py, agent/commands/_exits.py, agent/assembly.py,
# agent/config/example.py, deploy/edge-agent.service) and systemd's own for a program it could
# not start (systemd.exec(5), "Process Exit Codes").
EXIT_MEANINGS: Final = {
    0: "it ended by itself",
    1: "it failed at run time",
    2: "the config does not load",
    75: "a restart it asked for: a reload or a command",
    78: "the config is still the unedited example install.sh wrote",
    203: "systemd cannot run its program (203/EXEC): is the release in /opt/edge-agent/current?",
    216: "its group does not exist (216/GROUP: run deploy/install.sh)",
    217: "its user does not exist (217/USER: run deploy/install.sh)",
}
_SYSTEMD_EXIT = range(200, 250)  # systemd's own: the service's set-up failed before the agent ran
_CLD = {
    "1": "exited",
    "2": "killed",
    "3": "dumped",
}  # as numbers (systemd 252), or words  # ExecMainCode: si_code, CLD_*
# What systemctl says of a failed run besides the main process's exit (Result=).
RESULT_MEANINGS: Final = {
    "watchdog": "the watchdog killed it: it stopped telling systemd it makes progress (hung)",
    "oom-kill": "killed for memory: it went over the unit's MemoryMax",
    "timeout": "it did not start, or stop, in time",
    "core-dump": "it crashed (core dumped)",
    "resources": "systemd could not set up what the unit needs (directories, user, namespaces)",
    "start-limit-hit": "started too often in too short a time: systemd gave up",
    "exec-condition": "an ExecCondition= said no",
}
_AGENT_LEVELS: Final = frozenset({"warning", "warn", "error", "err", "critical", "exception", "fatal"})
_SYSTEMD_SENDER: Final = "systemd"
_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})")


@dataclass
class ServiceState:
    """The unit as systemd sees it (`properties`, as `systemctl show` prints them) and what
    `status` says of it (`lines`)."""

    unit: str
    properties: dict[str, str]
    lines: list[str] = field(default_factory=list)


def _booted_with_systemd() -> bool:
    try:
        return Path(os.environ.get(SYSTEMD_DIR_ENV) or SYSTEMD_DIR).is_dir()
    except OSError:  # a directory on the way this user may not search: as without systemd
        return False


def service_state(
    unit: str = UNIT, *, socket: Path | None = None, config: Path | None = None, timeout_s: float = TIMEOUT_S
) -> ServiceState | None:
    """The unit as systemd sees it and the lines `status` adds when no agent answers (on `socket`,
    when one was asked); None without systemd, or when systemctl fails. `config`: the agent's
    config, whose secrets are masked in the journal lines shown."""
    if not _booted_with_systemd():
        return None
    deadline = time.monotonic() + timeout_s
    command = ["systemctl", "show", unit, "--property=" + ",".join(PROPERTIES), "--no-pager"]
    ran = _run(command, deadline)
    if ran is None or ran[0] != 0:
        return None  # missing, refused (no bus), or no answer in time: say nothing rather than guess
    properties = _properties(ran[1])
    if "LoadState" not in properties or "ActiveState" not in properties:
        return None
    state = ServiceState(unit, properties, _describe(unit, properties, socket))
    if _failing(properties):
        state.lines += _journal_lines(unit, config, deadline)
    return state


def _run(command: Sequence[str], deadline: float) -> tuple[int, str, str] | None:
    """`command`'s exit status, stdout and stderr; None when it cannot be run or is not done by
    `deadline` (then it and whatever it started are killed)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", SYSTEMD_URLIFY="0")
    try:
        process = subprocess.Popen(  # a fixed command, no shell
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed whole on a timeout
            env=env,
        )
    except OSError:
        return None
    try:
        out, err = process.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=0.5)
        return None
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _properties(text: str) -> dict[str, str]:
    properties: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in PROPERTIES:
            properties[name] = value.strip()
    return properties


def _int(properties: dict[str, str], name: str) -> int:
    try:
        return int(properties.get(name, ""))
    except ValueError:
        return 0


def _when(value: str) -> str | None:
    """A systemctl timestamp (`Mon 2026-12-07 12:03:11 UTC`, the day's name in the locale's
    language) as the time alone when it is today, else date and time; None when unset."""
    match = _DATE_TIME.search(value)
    if match is None:
        return None
    day, clock = match.groups()
    return clock if day == datetime.date.today().isoformat() else f"{day} {clock}"


def _short(unit: str) -> str:
    return unit.removesuffix(".service")


def _failing(properties: dict[str, str]) -> bool:
    """The unit is failing (restarting after a failure), failed, or stopped after one."""
    active, sub = properties.get("ActiveState"), properties.get("SubState")
    if properties.get("LoadState") != "loaded":
        return False
    if active == "failed" or sub == "auto-restart":
        return True
    if active == "activating" and _int(properties, "NRestarts") > 0:
        return True  # started again after failing: the last failure is what to read
    return active == "inactive" and properties.get("Result", "success") != "success"


def _code(properties: dict[str, str]) -> str:
    code = properties.get("ExecMainCode", "")
    return _CLD.get(code, code)


def why(properties: dict[str, str]) -> str:
    """How the unit's last run ended, in words: `exit status 2 (the config does not load)`,
    `killed by SIGKILL`, `the watchdog killed it: ... (SIGABRT)`."""
    result = properties.get("Result", "")
    code = _code(properties)
    status = _int(properties, "ExecMainStatus")
    ended = ""
    if code == "exited":
        meaning = EXIT_MEANINGS.get(status) or (
            "systemd could not start it (systemctl status for the step)" if status in _SYSTEMD_EXIT else None
        )
        ended = f"exit status {status}" + (f" ({meaning})" if meaning else "")
    elif code in ("killed", "dumped"):
        try:
            name = signal.Signals(status).name
        except ValueError:
            name = f"signal {status}"
        ended = f"killed by {name}" + (" (core dumped)" if code == "dumped" else "")
    if result in RESULT_MEANINGS and result != "core-dump":
        return RESULT_MEANINGS[result] + (f" ({ended})" if ended else "")
    if ended:
        return ended
    return f"result {result}" if result and result != "success" else "no failure recorded"


def _describe(unit: str, p: dict[str, str], socket: Path | None) -> list[str]:
    name = _short(unit)
    load, active, sub = p.get("LoadState", ""), p.get("ActiveState", ""), p.get("SubState", "")
    changed = _when(p.get("StateChangeTimestamp", ""))
    if load == "not-found":
        line = f"{unit} is not installed (no such systemd unit here; deploy/install.sh installs it)"
    elif load == "masked":
        line = f"{unit} is masked: systemd will not start it (systemctl unmask {name})"
    elif load != "loaded":
        line = f"{unit} cannot be loaded by systemd ({load}): systemctl status {name}"
    elif active in ("active", "reloading"):
        line = _runs(unit, p, socket)
    elif sub == "auto-restart":
        at = f" at {changed}" if changed else ""
        restarts = _times(_int(p, "NRestarts"))
        line = f"{unit} keeps failing: restarted {restarts}, last {why(p)}{at}; systemd starts it again"
    elif active == "activating":
        line = _starting(unit, p, changed)
    elif active == "failed" or (active == "inactive" and p.get("Result", "success") != "success"):
        line = _failed(unit, p, changed)
    elif active == "inactive":
        start = (
            f"systemctl enable --now {name}: it is not enabled, so it does not start at boot"
            if p.get("UnitFileState") == "disabled"
            else f"systemctl start {name}"
        )
        since = f" since {changed}" if changed else " (not started since boot)"
        line = f"{unit} is stopped{since} ({start})"
    else:  # deactivating, maintenance
        line = f"{unit} is {active} ({sub})" + (f" since {changed}" if changed else "")
    return [line]


def _runs(unit: str, p: dict[str, str], socket: Path | None) -> str:
    since = _when(p.get("ActiveEnterTimestamp", ""))
    pid, restarts = _int(p, "ExecMainPID"), _int(p, "NRestarts")
    facts = [f"since {since}" if since else "", f"pid {pid}" if pid else ""]
    facts.append(f"restarted {_times(restarts)}" if restarts else "")
    line = f"{unit} runs" + _listed(facts)
    if p.get("ActiveState") == "reloading":
        line += ", reloading its config"
    if socket is not None:
        line += (
            f" but does not answer on {socket}: hung (the watchdog restarts it), or it listens on "
            "another socket (its config's [status] socket: edge-agent status -c CONFIG)"
        )
    return line


def _starting(unit: str, p: dict[str, str], changed: str | None) -> str:
    pid, restarts = _int(p, "ExecMainPID"), _int(p, "NRestarts")
    again = f" again after {_times(restarts, 'restart')}" if restarts else ""
    facts = _listed([f"since {changed}" if changed else "", f"pid {pid}" if pid else ""])
    return f"{unit} is starting{again}{facts}: it has not told systemd it is ready"


def _failed(unit: str, p: dict[str, str], changed: str | None) -> str:
    name = _short(unit)
    at = f" at {changed}" if changed else ""
    example = _int(p, "ExecMainStatus") == 78 and _code(p) == "exited"
    after = (
        f"edit the config (edge-agent check-config), then systemctl restart {name}"
        if example
        else f"systemctl restart {name} once that is put right"
    )
    return f"{unit} failed{at}: {why(p)}; systemd does not restart it ({after})"


def _listed(facts: list[str]) -> str:
    given = [fact for fact in facts if fact]
    return f" ({', '.join(given)})" if given else ""


def _times(n: int, noun: str = "") -> str:
    if noun:
        return f"{n} {noun}" + ("" if n == 1 else "s")
    return "once" if n == 1 else f"{n} times"


# --- the journal ----------------------------------------------------------------------------------


def _journal_lines(unit: str, config: Path | None, deadline: float) -> list[str]:
    name = _short(unit)
    more = f"sudo journalctl -u {name} -n 50"
    command = [
        "journalctl", "-u", unit, "-n", str(JOURNAL_ENTRIES), "-o", "json", "--no-pager",
        "--output-fields=MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_PID,_SYSTEMD_INVOCATION_ID,INVOCATION_ID",
    ]  # fmt: skip
    ran = _run(command, deadline)
    if ran is None:
        return [f"its journal did not answer within {TIMEOUT_S:g} s: {more}"]
    code, out, err = ran
    entries = [entry for line in out.splitlines() if (entry := _entry(line)) is not None]
    if not entries and _journal_closed(err):
        # Not root, in none of the journal's groups (systemd-journal, adm): none of the agent's lines.
        return [f"this user may not read the system journal for its last error lines: {more}"]
    if not entries and code != 0:
        said = printable(err.strip().splitlines()[0]) if err.strip() else f"exit status {code}"
        return [f"journalctl failed ({said}): {more}"]
    chosen = _last_run_errors(entries)
    if not chosen:
        return [f"no error lines in its journal: {more} shows its last lines"]
    secrets = _config_secrets(config)
    shown = [_masked(text, secrets) for text in chosen[-JOURNAL_LINES:]]
    return [f"its last error lines ({more} for more):", *(f"  {line}" for line in shown)]


def _journal_closed(stderr: str) -> bool:
    """journalctl said this user sees only their own entries: since systemd 247 a hint on stderr
    (unless -q, never given here), before it an error (exit 1)."""
    return "not seeing messages from other users" in stderr or "insufficient permissions" in stderr


def _entry(line: str) -> dict[str, Any] | None:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # "-- No entries --"
    return entry if isinstance(entry, dict) else None


def _message(entry: dict[str, Any]) -> str:
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # not UTF-8: journalctl gives the bytes
        with contextlib.suppress(TypeError, ValueError):
            return bytes(message).decode("utf-8", "replace")
        return ""
    return message if isinstance(message, str) else ""


# An error line: the agent's plain text, or one of its structured log events (masked as a
# document, secret-named keys too, then rendered: `_masked`).
ErrorLine = str | dict[str, Any]


def _last_run_errors(entries: list[dict[str, Any]]) -> list[ErrorLine]:
    """The error lines of the newest run that had any: a crash loop shows one run's, not the same
    lines once per restart."""
    runs: dict[str, list[ErrorLine]] = {}
    for entry in entries:
        text = _error_text(entry)
        if text is None:
            continue
        run = str(entry.get("_SYSTEMD_INVOCATION_ID") or entry.get("INVOCATION_ID") or "")
        runs.setdefault(run, []).append(text)  # dicts keep insertion order: the newest run is last
        runs[run] = runs.pop(run)
    return next(reversed(runs.values()), [])


def _error_text(entry: dict[str, Any]) -> ErrorLine | None:
    """What an entry says when it is an error worth showing, else None."""
    message = _message(entry).strip()
    if not message:
        return None
    priority = _priority(entry)
    if entry.get("SYSLOG_IDENTIFIER") == _SYSTEMD_SENDER:
        # systemd's own: errors (ExecStart cannot be run, a watchdog timeout), not its notices
        # ("Main process exited") or its warning "Failed with result": the state line says those.
        # "Failed to start ..." is the start job's end (err), said of every failed start.
        first = message.splitlines()[0]
        return first if priority <= 3 and not first.startswith("Failed to start ") else None
    if message.startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(message)
            if isinstance(event, dict):
                level = str(event.get("level", "")).lower()
                return event if level in _AGENT_LEVELS or priority <= 4 else None
    return message  # the agent's plain stderr: a refusal, `invalid configuration:`, a traceback


def _priority(entry: dict[str, Any]) -> int:
    try:
        return int(entry.get("PRIORITY", 6))
    except (TypeError, ValueError):
        return 6


def _config_secrets(config: Path | None) -> list[str]:
    """The secret values of `config`, as the agent masks them in its logs; those of a config that
    does not load read from its text. None when this user may not read it (the journal's lines
    are then masked by key only; such a user may read them with journalctl all the same)."""
    if config is None:
        return []
    from water_edge.agent.config import load_config
    from water_edge.agent.secrets import config_secrets

    try:
        return list(config_secrets(load_config(config, closed_state="warning")))
    except Exception:  # noqa: BLE001, S110 - a ConfigError (the agent did not load it either), or
        pass  # whatever else the loader raises: what its text holds, and `status` still answers
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    from water_edge.agent.config_redaction import config_text_secrets

    return config_text_secrets(text)


def _masked(text: ErrorLine, secrets: Iterable[str]) -> str:
    values = list(secrets)
    values += [repr(v)[1:-1] for v in values]  # a traceback quoting it
    if isinstance(text, dict):
        event = redact(text, values)
        head = " ".join(str(event.pop(key)) for key in ("level", "event") if key in event)
        event.pop("timestamp", None)
        rest = " ".join(f"{k}={_value(v)}" for k, v in event.items())
        line = f"{head} {rest}".strip()
    else:
        line = redact(text, values)
    line = printable(line)
    return line if len(line) <= LINE_MAX else line[: LINE_MAX - 1] + "…"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
