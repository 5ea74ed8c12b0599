"""`edge-agent status` says why the agent is not running: systemd's view of edge-agent.service and
the agent's last error lines from its journal (agent/service_state.py).

systemd is not PID 1 where the suite runs, and cannot be: stand-in `systemctl` and `journalctl`
scripts first on PATH print what systemd 252 prints for each case (`systemctl show` with the
properties asked for, `journalctl -o json` entries with the fields asked for), and the module's
sd_booted() directory is pointed at one the test makes. The real `edge-agent status -c CONFIG` runs
against a config whose socket nobody serves.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.cli import edge_agent
from tests.support.testing import write_agent_config
from water_edge.agent import service_state
from water_edge.agent.commands._exits import EXIT_NOT_RUNNING

ROOT = Path(__file__).resolve().parent.parent
STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
TODAY = datetime.date.today().isoformat()
EARLIER = (datetime.date.today() - datetime.timedelta(days=6)).isoformat()
PASSWORD = "brk-Pa55word-7731"  # the broker password in the config; the journal quotes it
MORE = "sudo journalctl -u edge-agent -n 50"


def stamp(clock: str, day: str = TODAY) -> str:
    """A timestamp as systemctl prints it (the day's name is the locale's; never read)."""
    return f"Mon {day} {clock} UTC"


def show(**changed: str) -> str:
    """`systemctl show edge-agent.service --property=...` as systemd 252 prints it: the service's
    properties, then the unit's; a timestamp never set is empty."""
    props = {
        "Result": "success",
        "NRestarts": "0",
        "ExecMainPID": "0",
        "ExecMainCode": "0",
        "ExecMainStatus": "0",
        "LoadState": "loaded",
        "ActiveState": "inactive",
        "SubState": "dead",
        "UnitFileState": "enabled",
        "StateChangeTimestamp": "",
        "ActiveEnterTimestamp": "",
    } | changed
    return "".join(f"{name}={value}\n" for name, value in props.items())


_SEQ = iter(range(1, 10**6))


def entry(message: str, *, run: str = "a1", pid: int = 2301, priority: int = 6, systemd: bool = False) -> str:
    """One `journalctl -o json --output-fields=...` line: the agent's stderr (priority info, what
    a unit's stderr is stored at whatever it says), or one of systemd's own lines about the unit."""
    n = next(_SEQ)
    fields: dict[str, Any] = {
        "__CURSOR": f"s=5e1c;i={n:x}",
        "__REALTIME_TIMESTAMP": str(1_796_638_991_000_000 + n),
        "__MONOTONIC_TIMESTAMP": str(91_000_000 + n),
        "_BOOT_ID": "6f1e0c2a9b7d4e0f8a3c5d7e9f1a2b3c",
        "PRIORITY": str(priority),
        "MESSAGE": message,
    }
    if systemd:
        fields |= {"SYSLOG_IDENTIFIER": "systemd", "_PID": "1", "INVOCATION_ID": run}
    else:
        fields |= {"SYSLOG_IDENTIFIER": "edge-agent", "_PID": str(pid), "_SYSTEMD_INVOCATION_ID": run}
    return json.dumps(fields, separators=(",", ":"))


def config_error_run(run: str, pid: int) -> list[str]:
    """One start of a crash loop on a config that does not load, as the journal keeps it."""
    return [
        entry("Starting water-edge-agent: field devices to MQTT with a durable outbox...", run=run,
              systemd=True),
        entry("invalid configuration:", run=run, pid=pid),
        entry("  /etc/edge-agent/config.toml: uplink.port: expected an integer (got 'x')", run=run, pid=pid),
        entry("edge-agent.service: Main process exited, code=exited, status=2/INVALIDARGUMENT", run=run,
              priority=5, systemd=True),
        entry("edge-agent.service: Failed with result 'exit-code'.", run=run, priority=4, systemd=True),
        entry("Failed to start water-edge-agent: field devices to MQTT with a durable outbox.", run=run,
              priority=3, systemd=True),
        entry("edge-agent.service: Scheduled restart job, restart counter is at 14.", run=run, systemd=True),
    ]  # fmt: skip


@dataclass
class Systemd:
    """Stand-ins for systemctl and journalctl: what each prints, and the calls they got."""

    bin: Path
    calls: Path

    def _script(self, name: str, out: str, err: str = "", code: int = 0, hang: bool = False) -> None:
        (self.bin / f"{name}.out").write_text(out)
        (self.bin / f"{name}.err").write_text(err)
        body = (
            "exec sleep 60\n"
            if hang
            else f'cat "{self.bin}/{name}.out"\ncat "{self.bin}/{name}.err" >&2\nexit {code}\n'
        )
        script = self.bin / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{self.calls}"\n{body}')
        script.chmod(0o755)

    def show(self, text: str, *, hang: bool = False, code: int = 0, err: str = "") -> None:
        self._script("systemctl", text, err, code, hang)

    def journal(self, lines: Sequence[str], *, err: str = "", hang: bool = False) -> None:
        self._script(
            "journalctl", "".join(line + "\n" for line in lines) or "-- No entries --\n", err, hang=hang
        )

    def called(self) -> list[list[str]]:
        if not self.calls.exists():
            return []
        return [shlex.split(line) for line in self.calls.read_text().splitlines()]


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Systemd:
    booted = tmp_path / "run-systemd-system"
    booted.mkdir()
    monkeypatch.setattr(service_state, "SYSTEMD_DIR", booted)  # in this process
    monkeypatch.setenv(service_state.SYSTEMD_DIR_ENV, str(booted))  # in an `edge-agent` started
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    stand_in = Systemd(bin_dir, tmp_path / "calls.txt")
    stand_in.journal([])
    return stand_in


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A valid config with the broker password in it, whose status socket nobody serves."""
    return write_agent_config(tmp_path, uplink={"username": "gw-ps07", "password": PASSWORD})


def status(config: Path, *more: str) -> tuple[int, list[str], str]:
    result = edge_agent("status", "-c", str(config), *more)
    return result.returncode, result.stderr.splitlines(), result.stdout


def no_answer(config: Path) -> str:
    socket = config.parent / "state" / "status.sock"
    return f"edge-agent: no agent answers on {socket} (No such file or directory)"


# -- what status says in each case -------------------------------------------------------------------


def test_a_crash_loop_says_the_restarts_the_exit_status_and_the_config_error(
    systemd: Systemd, config: Path
) -> None:
    systemd.show(
        show(Result="exit-code", NRestarts="14", ExecMainCode="1", ExecMainStatus="2",
             ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:03:11"),
             ActiveEnterTimestamp=stamp("09:14:02", EARLIER))
    )  # fmt: skip
    systemd.journal([*config_error_run("a1", 2301), *config_error_run("b2", 2317)])

    code, err, out = status(config)

    assert code == EXIT_NOT_RUNNING
    assert out == ""
    assert err == [
        no_answer(config),
        "edge-agent.service keeps failing: restarted 14 times, last exit status 2 (the config does not "
        "load) at 12:03:11; systemd starts it again",
        f"its last error lines ({MORE} for more):",
        "  invalid configuration:",
        "  /etc/edge-agent/config.toml: uplink.port: expected an integer (got 'x')",
    ]  # one run's lines, not one copy per restart; systemd's own notices left out
    (show_call, journal_call) = systemd.called()
    assert show_call[:3] == ["systemctl", "show", "edge-agent.service"]
    assert set(show_call[3].removeprefix("--property=").split(",")) >= {
        "LoadState", "ActiveState", "SubState", "Result", "ExecMainStatus", "ExecMainCode", "ExecMainPID",
        "NRestarts", "StateChangeTimestamp", "ActiveEnterTimestamp",
    }  # fmt: skip
    assert journal_call[:3] == ["journalctl", "-u", "edge-agent.service"]
    assert "-q" not in journal_call  # its hint to a user who may not read the journal is wanted


def test_the_installed_command_says_it_too(systemd: Systemd, config: Path) -> None:
    """`edge-agent status` as its own process (the directory it tests given by the environment)."""
    systemd.show(
        show(Result="exit-code", NRestarts="14", ExecMainCode="1", ExecMainStatus="2",
             ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:03:11"))
    )  # fmt: skip
    systemd.journal(config_error_run("a1", 2301))
    result = subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "status", "-c", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_NOT_RUNNING
    assert result.stderr.splitlines()[1:3] == [
        "edge-agent.service keeps failing: restarted 14 times, last exit status 2 (the config does not "
        "load) at 12:03:11; systemd starts it again",
        f"its last error lines ({MORE} for more):",
    ]


def test_the_first_line_asks_is_it_running_only_when_systemd_has_not_answered_it(
    systemd: Systemd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config it cannot read leaves it nothing to go by: it says what it tried, then asks. With
    systemd's line under it ("is stopped since ..."), the question is answered: not asked."""
    monkeypatch.setenv("EDGE_AGENT_RUNTIME_DIR", str(tmp_path / "no-agents"))
    unreadable = tmp_path / "missing.toml"
    systemd.show(show(ActiveState="inactive", SubState="dead", Result="success",
                      StateChangeTimestamp=stamp("11:50:02")))  # fmt: skip
    code, err, out = status(unreadable, "--json")
    assert code == EXIT_NOT_RUNNING
    assert err[0].startswith(f"edge-agent: no agent answers; tried {unreadable} (cannot read it); "), err
    assert err[0].endswith(". If it runs with another config, pass -c CONFIG or --socket PATH"), err
    assert "Is it running" not in err[0]
    assert err[1].startswith("edge-agent.service is stopped since 11:50:02"), err
    assert json.loads(out)["verdict"]["problems"] == [err[0].removeprefix("edge-agent: "), err[1]]

    monkeypatch.setattr(service_state, "SYSTEMD_DIR", tmp_path / "no-such-dir")  # not booted with systemd
    monkeypatch.delenv(service_state.SYSTEMD_DIR_ENV)
    code, err, _ = status(unreadable)
    assert len(err) == 1
    assert err[0].endswith(
        ". Is it running (systemctl status edge-agent)? Otherwise pass -c CONFIG or --socket PATH"
    )


@pytest.mark.parametrize(
    ("properties", "said"),
    [
        pytest.param(
            show(Result="exit-code", ExecMainCode="1", ExecMainStatus="78", ActiveState="failed",
                 SubState="failed", StateChangeTimestamp=stamp("11:50:02")),
            "edge-agent.service failed at 11:50:02: exit status 78 (the config is still the unedited "
            "example install.sh wrote); systemd does not restart it (edit the config (edge-agent "
            "check-config), then systemctl restart edge-agent)",
            id="failed-unedited-example",
        ),
        pytest.param(
            show(ActiveState="inactive", SubState="dead", ExecMainCode="1",
                 StateChangeTimestamp=stamp("11:50:02"), ActiveEnterTimestamp=stamp("08:00:00")),
            "edge-agent.service is stopped since 11:50:02 (systemctl start edge-agent)",
            id="stopped",
        ),
        pytest.param(
            show(UnitFileState="disabled"),
            "edge-agent.service is stopped (not started since boot) (systemctl enable --now edge-agent: it "
            "is not enabled, so it does not start at boot)",
            id="never-started-not-enabled",
        ),
        pytest.param(
            show(LoadState="not-found", UnitFileState=""),
            "edge-agent.service is not installed (no such systemd unit here; deploy/install.sh installs it)",
            id="not-installed",
        ),
        pytest.param(
            show(ActiveState="active", SubState="running", ExecMainPID="812",
                 StateChangeTimestamp=stamp("11:50:02"),
                 ActiveEnterTimestamp=stamp("11:50:02", EARLIER)),
            "edge-agent.service runs (since {earlier} 11:50:02, pid 812) but does not answer on {socket}: "
            "hung (the watchdog restarts it), or it listens on another socket (its config's [status] "
            "socket: edge-agent status -c CONFIG)",
            id="runs-without-answering",
        ),
        pytest.param(
            show(Result="watchdog", NRestarts="3", ExecMainCode="3", ExecMainStatus="6",
                 ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:10:40")),
            "edge-agent.service keeps failing: restarted 3 times, last the watchdog killed it: it stopped "
            "telling systemd it makes progress (hung) (killed by SIGABRT (core dumped)) at 12:10:40; "
            "systemd starts it again",
            id="watchdog",
        ),
        pytest.param(
            show(Result="signal", NRestarts="1", ExecMainCode="2", ExecMainStatus="9",
                 ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:10:40")),
            "edge-agent.service keeps failing: restarted once, last killed by SIGKILL at 12:10:40; "
            "systemd starts it again",
            id="sigkill",
        ),
        pytest.param(
            show(Result="exit-code", NRestarts="2", ExecMainCode="1", ExecMainStatus="1",
                 ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:10:40")),
            "edge-agent.service keeps failing: restarted 2 times, last exit status 1 (it failed at run "
            "time) at 12:10:40; systemd starts it again",
            id="failed-at-run-time",
        ),
    ],
)  # fmt: skip
def test_status_says_what_systemd_says_of_the_unit(
    systemd: Systemd, config: Path, properties: str, said: str
) -> None:
    systemd.show(properties)
    code, err, _ = status(config)
    assert code == EXIT_NOT_RUNNING
    assert err[0] == no_answer(config)
    assert err[1] == said.format(socket=config.parent / "state" / "status.sock", earlier=EARLIER)
    journal_read = any(call[0] == "journalctl" for call in systemd.called())
    failing = "keeps failing" in said or " failed at " in said
    assert journal_read == failing  # only a failing or failed unit's journal is read
    assert err[2:] == ([f"no error lines in its journal: {MORE} shows its last lines"] if failing else [])


def test_a_secret_the_journal_quotes_is_masked(systemd: Systemd, config: Path) -> None:
    systemd.show(
        show(Result="exit-code", NRestarts="2", ExecMainCode="1", ExecMainStatus="1",
             ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:10:40"))
    )  # fmt: skip
    event = {"event": "uplink.refused", "level": "error", "detail": f"broker said no to {PASSWORD}",
             "password": "short", "timestamp": "2026-12-07T12:10:39Z"}  # fmt: skip
    systemd.journal([
        entry(json.dumps({"event": "uplink.connecting", "level": "info", "broker": "b:8883"})),
        entry(json.dumps(event)),
        entry("Traceback (most recent call last):"),
        entry(f"RuntimeError: CONNACK refused for gw-ps07:{PASSWORD}@mqtt-a.waterworks.example"),
    ])  # fmt: skip

    code, err, _ = status(config)
    _, _, out = status(config, "--json")

    assert code == EXIT_NOT_RUNNING
    assert err[2:] == [
        f"its last error lines ({MORE} for more):",
        "  error uplink.refused detail=broker said no to *** password=***",  # by value, and by key
        "  Traceback (most recent call last):",
        "  RuntimeError: CONNACK refused for gw-ps07:***@mqtt-a.waterworks.example",
    ]  # the info line is not an error
    assert PASSWORD not in "\n".join(err)
    assert PASSWORD not in out
    assert "short" not in "\n".join(err)


def test_a_secret_is_masked_when_the_config_does_not_load(systemd: Systemd, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    text = write_agent_config(tmp_path, uplink={"username": "gw-ps07", "password": PASSWORD}).read_text()
    broken.write_text(text.replace("[buffer]", "[buffer]\nno_such_key = 1"))  # the agent refuses it
    systemd.show(
        show(Result="exit-code", NRestarts="5", ExecMainCode="1", ExecMainStatus="2",
             ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:03:11"))
    )  # fmt: skip
    systemd.journal(
        [entry("invalid configuration:"), entry(f"  {broken}: uplink.proxy: http://u:{PASSWORD}@p")]
    )

    _, err, _ = status(broken)

    assert err[-1] == f"  {broken}: uplink.proxy: http://u:***@p"


def test_json_carries_the_lines_and_systemds_properties(systemd: Systemd, config: Path) -> None:
    systemd.show(
        show(Result="exit-code", NRestarts="14", ExecMainCode="1", ExecMainStatus="2",
             ActiveState="activating", SubState="auto-restart", StateChangeTimestamp=stamp("12:03:11"))
    )  # fmt: skip
    systemd.journal(config_error_run("a1", 2301))

    code, err, out = status(config, "--json")

    assert code == EXIT_NOT_RUNNING
    doc = json.loads(out)
    jsonschema.validate(doc, STATUS_SCHEMA)
    assert doc["verdict"]["state"] == "down"
    assert doc["verdict"]["problems"] == [doc["error"], *err[1:]]  # what stderr says, after the error
    assert doc["verdict"]["problems"][1].startswith("edge-agent.service keeps failing: restarted 14 times")
    assert doc["service"]["unit"] == "edge-agent.service"
    assert (doc["service"]["NRestarts"], doc["service"]["ExecMainStatus"]) == ("14", "2")


def test_prometheus_output_stays_the_exposition_format(systemd: Systemd, config: Path) -> None:
    systemd.show(show(LoadState="not-found"))
    code, err, out = status(config, "--prometheus")
    assert code == EXIT_NOT_RUNNING
    assert err[1].startswith("edge-agent.service is not installed")  # on stderr, not in the metrics
    assert "edge_agent_verdict" in out
    assert "not installed" not in out


def test_a_user_who_may_not_read_the_journal_is_told_the_command(systemd: Systemd, config: Path) -> None:
    systemd.show(
        show(Result="exit-code", ExecMainCode="1", ExecMainStatus="1", ActiveState="failed",
             SubState="failed", StateChangeTimestamp=stamp("11:50:02"))
    )  # fmt: skip
    systemd.journal(
        [],
        err="Hint: You are currently not seeing messages from other users and the system.\n"
        "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
        "      Pass -q to turn off this notice.\n",
    )
    _, err, _ = status(config)
    assert err[1].startswith("edge-agent.service failed at 11:50:02: exit status 1 (it failed at run time)")
    assert err[2:] == [f"this user may not read the system journal for its last error lines: {MORE}"]


# -- never in the way: no systemd, no tools, tools that hang -----------------------------------------


def test_without_systemd_nothing_is_added(
    systemd: Systemd, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_state, "SYSTEMD_DIR", tmp_path / "no-such-dir")  # not booted with systemd
    monkeypatch.delenv(service_state.SYSTEMD_DIR_ENV)
    systemd.show(show(LoadState="not-found"))
    code, err, out = status(config, "--json")
    assert code == EXIT_NOT_RUNNING
    assert err == [no_answer(config)]
    assert json.loads(out)["verdict"]["problems"] == [no_answer(config).removeprefix("edge-agent: ")]
    assert "service" not in json.loads(out)
    assert systemd.called() == []  # not even asked


def test_without_systemctl_nothing_is_added(
    systemd: Systemd, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, err, _ = status(config)
    assert code == EXIT_NOT_RUNNING
    assert err == [no_answer(config)]


def test_a_systemctl_that_hangs_is_cut_off_within_the_bound(systemd: Systemd, config: Path) -> None:
    systemd.show("", hang=True)
    started = time.monotonic()
    code, err, _ = status(config)
    took = time.monotonic() - started
    assert code == EXIT_NOT_RUNNING
    assert err == [no_answer(config)]
    assert took < service_state.TIMEOUT_S + 1.5


def test_a_journalctl_that_hangs_shares_the_same_bound(systemd: Systemd, config: Path) -> None:
    systemd.show(
        show(Result="exit-code", ExecMainCode="1", ExecMainStatus="1", ActiveState="failed",
             SubState="failed", StateChangeTimestamp=stamp("11:50:02"))
    )  # fmt: skip
    systemd.journal([], hang=True)
    started = time.monotonic()
    _, err, _ = status(config)
    took = time.monotonic() - started
    assert err[1].startswith("edge-agent.service failed at 11:50:02")
    assert err[2:] == [f"its journal did not answer within 3 s: {MORE}"]
    assert took < service_state.TIMEOUT_S + 1.5


def test_the_schema_documents_every_property_asked_for() -> None:
    documented = set(STATUS_SCHEMA["$defs"]["NoAgentService"]["properties"])
    assert documented == {"unit", *service_state.PROPERTIES}
