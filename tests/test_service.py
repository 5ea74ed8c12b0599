"""The systemd unit: hardened (systemd's own exposure score), notify-type with a watchdog."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "edge-agent.service"
MAX_EXPOSURE = 2.5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="apt-get install systemd")
@pytest.mark.parametrize("unit", [UNIT, UNIT.parent / "edge-enrolment.service"], ids=lambda u: u.name)
def test_exposure_is_at_most_2_5(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout


def test_the_unit_declares_what_the_runbook_promises() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["Type"] == ["notify"]
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["WatchdogSec"][0]) >= 30
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["ProtectSystem"] == ["strict"]
    # config_update's one writable place under /etc (docs/security.md); nothing else there.
    assert settings["ReadWritePaths"] == ["-/etc/edge-agent/managed"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["StateDirectory"] == ["edge-agent"]
    # edge-agent-status: the group the agent gives its status socket (reading the status and
    # nothing else); its socket lives in the runtime directory, which that group may enter.
    assert set(settings["SupplementaryGroups"][0].split()) == {"dialout", "audio", "edge-agent-status"}
    assert settings["RuntimeDirectory"] == ["edge-agent"]
    assert settings["RuntimeDirectoryMode"] == ["0755"]
    assert settings["StateDirectoryMode"] == ["0750"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in settings["SystemCallFilter"]
    # adjtimex reads the clock's synchronisation state; with no capabilities it can set nothing.
    assert settings["SystemCallFilter"][-1] == "adjtimex"
    assert "settimeofday" in settings["SystemCallFilter"][-2]
    assert settings["MemoryMax"]
    assert "edge-agent run -c /etc/edge-agent/config.toml" in settings["ExecStart"][0]


def _settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_updater_units_take_their_trust_from_root_owned_places() -> None:
    deploy = UNIT.parent
    updater = _settings(deploy / "edge-agent-update.service")
    assert updater["Type"] == ["oneshot"]
    (command,) = updater["ExecStart"]
    # The keys and the install root on the command line, never from the agent-writable config.
    assert "--keys /etc/edge-agent/release-keys" in command
    assert "--root /opt/edge-agent" in command
    # The state directory too: root must not read its request or write its state where the config
    # (which the agent may rewrite) says. It is the one the path unit watches and the agent's unit has.
    assert "--state-dir /var/lib/edge-agent" in command
    assert command.startswith("/opt/edge-agent/current/bin/edge-agent update run")
    path = _settings(deploy / "edge-agent-update.path")
    assert path["PathExists"] == ["/var/lib/edge-agent/update/request.json"]
    assert _settings(UNIT)["StateDirectory"] == ["edge-agent"]
    assert path["Unit"] == ["edge-agent-update.service"]
    # The agent itself runs whatever release `current` points at.
    assert _settings(UNIT)["ExecStart"][0].startswith("/opt/edge-agent/current/bin/edge-agent run")


def test_the_enrolment_service_unit_runs_what_the_cli_accepts_and_keeps_the_brokers_acl() -> None:
    # Central side: the unit's command line parses with this release's CLI (a renamed option would
    # fail here, not on the broker host), and the ACL it keeps is the one the shipped Mosquitto
    # config reads, in a directory the sandbox lets it write.
    import shlex

    from water_edge.agent.cli import _parser

    unit = _settings(UNIT.parent / "edge-enrolment.service")
    (command,) = unit["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == "/opt/edge-agent/current/bin/edge-agent"
    args = _parser().parse_args(argv[1:])
    assert args.ca_command == "serve-enrolment"
    assert shlex.split(args.acl_reload) == ["systemctl", "reload", "mosquitto"]
    conf = (UNIT.parent / "mosquitto" / "edge-agent.conf").read_text()
    assert f"acl_file {args.acl}\n" in conf
    assert str(args.acl.parent) in unit["ReadWritePaths"][0].split()
    assert str(args.dir) == "/var/lib/" + unit["StateDirectory"][0]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["ProtectSystem"] == ["strict"]


def test_the_unedited_example_stops_the_unit_instead_of_a_restart_every_5_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway booted on the example install.sh wrote (nobody has edited it) was refused by the
    unit's ExecStartPre and restarted every RestartSec=5, forever: a journal line pair every 5 s on
    an SD card. Now the unit's main command exits with a status of its own for it, which the unit
    names in RestartPreventExitStatus: it stops, failed, after one line saying what to edit.

    systemd judges RestartPreventExitStatus= on the main process's status only
    (service_shall_restart() tests main_exec_status): a refusal in an ExecStartPre would be
    restarted whatever its status, so no ExecStartPre may refuse the config. An invalid config
    keeps its exit 2, which the unit still restarts."""
    import hashlib
    import shlex

    from water_edge.agent.cli import _parser, main

    unit = _settings(UNIT)
    assert unit["Restart"] == ["on-failure"]
    assert "ExecStartPre" not in unit  # its failure would be restarted, whatever its exit status
    (command,) = unit["ExecStart"]
    argv = shlex.split(command)
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.config) == ("run", "/etc/edge-agent/config.toml")
    prevented = {int(word) for line in unit.get("RestartPreventExitStatus", []) for word in line.split()}

    etc = tmp_path / "etc"  # as install.sh leaves /etc/edge-agent on a fresh install
    (etc / "managed").mkdir(parents=True)
    example = UNIT.parent / "config.example.toml"
    (etc / "managed" / "config.toml").write_bytes(example.read_bytes())
    (etc / "config.toml").symlink_to("managed/config.toml")
    digest = hashlib.sha256(example.read_bytes()).hexdigest()
    (etc / "config.example.sha256").write_text(f"{digest}  config.example.toml (release 0.1.0)\n")
    config = str(etc / "config.toml")

    capsys.readouterr()
    code = main([*argv[1:-1], config])  # the unit's command, on this config
    err = capsys.readouterr().err
    assert code in prevented  # stopped, not restarted
    assert code not in (0, 1, 2, 75)  # ok, a failure at run time, an invalid config, a restart by command
    (line,) = err.splitlines()  # one line in the journal, saying what to edit and what then
    assert line.startswith(f"edge-agent: {config}: this is still the example config")
    assert "Edit [gateway], [uplink] and [[devices]] for this site" in line
    assert main(["check-config", "-c", config]) == code  # by hand: the same answer
    capsys.readouterr()

    # An invalid config is retried: its exit status is not one the unit stops on.
    (etc / "managed" / "config.toml").write_text("schema_version = 1\n[gateway]\nsite = 'x'\n")
    assert main([*argv[1:-1], config]) == 2
    assert 2 not in prevented
    # An edited, valid config is checked as any other (systemctl restart then starts it).
    edited = example.read_text().replace('site = "north-plant"', 'site = "east-works"')
    (etc / "managed" / "config.toml").write_text(edited)
    assert main(["check-config", "-c", config]) == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="apt-get install systemd")
def test_systemd_parses_every_line_of_the_agents_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` (no running systemd needed) reads the unit as systemd would: a key
    it does not know, or a value it cannot parse (RestartPreventExitStatus=, SystemCallFilter=), is
    ignored by systemd with a warning, never an error at start. Only the commands' absence is
    expected here (no /opt/edge-agent on this machine)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert complaints == []
