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
