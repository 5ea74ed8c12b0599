"""The root updater and the files the unprivileged agent leaves it in the state directory: the
agent (or whoever runs code as it) must not be able to make root create, chmod, hand over or copy
any other file through a link, a device or a sparse file placed there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.testing import write_agent_config
from water_edge.agent.cli import main
from water_edge.agent.commands import update as update_command
from water_edge.agent.remote.audit import read_audit
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.update.layout import Layout
from water_edge.agent.update.receive import UpdateReceiver
from water_edge.agent.update.service import CommandService
from water_edge.agent.update.state import UpdateFiles, UpdateState
from water_edge.agent.update.updater import Updater

AGENT_UID = 65534  # a user other than the test's, standing for edge-agent
SHA = "0" * 64


def _state_dir(tmp: Path) -> Path:
    """The agent's state directory: owned by the agent's user when the test can give it away."""
    state = tmp / "state"
    (state / "update" / "spool").mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (state, state / "update", state / "update" / "spool"):
            os.chown(path, AGENT_UID, AGENT_UID)
    return state


def _run(
    tmp: Path,
    state: Path,
    bundle: Path,
    max_bundle_bytes: int = 512 * 2**20,
    audit_path: Path | None = None,
) -> UpdateState:
    """Root's updater, asked to apply `bundle`; its audit log `<state>/audit.log` unless given."""
    files = UpdateFiles(state)
    files.write_request({"action": "apply", "bundle": str(bundle), "sha256": SHA, "requested_by": "c1"})
    updater = Updater(
        layout=Layout(tmp / "opt"),
        files=files,
        keys_file=tmp / "release-keys",
        config_path=tmp / "config.toml",
        status_socket=state / "status.sock",
        service=CommandService(["true"]),
        audit_path=audit_path or state / "audit.log",
        max_bundle_bytes=max_bundle_bytes,
    )
    return updater.run()


def test_the_updater_never_writes_its_audit_line_through_a_link_the_agent_planted(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    # What root runs: a .pth in its release's site-packages is executed by every Python start.
    site_packages = tmp_path / "opt" / "current" / "lib" / "site-packages"
    site_packages.mkdir(parents=True)
    (state / "audit.log").symlink_to(site_packages / "zz.pth")
    outcome = _run(tmp_path, state, state / "update" / "spool" / "missing.tar")
    assert outcome.phase == "failed"
    assert not (site_packages / "zz.pth").exists(), "root created (and gave away) a file through the link"
    assert (state / "audit.log").is_symlink()
    assert any(line.startswith("audit log not written:") for line in outcome.log), outcome.log


def test_a_link_to_an_existing_file_is_neither_appended_to_nor_chmodded(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    target = tmp_path / "opt" / "bin-edge-agent"
    target.parent.mkdir(parents=True)
    target.write_text("#!/usr/bin/python\n")
    os.chmod(target, 0o755)
    (state / "audit.log").symlink_to(target)
    _run(tmp_path, state, state / "update" / "spool" / "missing.tar")
    assert target.read_text() == "#!/usr/bin/python\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_an_audit_log_outside_the_state_directory_is_not_written_by_root(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    elsewhere = tmp_path / "opt" / "current" / "bin" / "edge-agent"  # `audit_log` is the agent's to set
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("#!/usr/bin/python\n")
    outcome = _run(tmp_path, state, state / "update" / "spool" / "x.tar", audit_path=elsewhere)
    assert outcome.phase == "failed"
    assert elsewhere.read_text() == "#!/usr/bin/python\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_audit_log_the_updater_makes_is_the_agents(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    outcome = _run(tmp_path, state, state / "update" / "spool" / "missing.tar")
    log = state / "audit.log"
    assert (log.stat().st_uid, log.stat().st_gid) == (AGENT_UID, AGENT_UID)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    (entry,) = read_audit(log)
    assert (entry["action"], entry["outcome"]) == ("update", outcome.phase)


def test_the_bundle_is_copied_only_from_a_regular_file_in_the_spool(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    spool = state / "update" / "spool"
    spool.rmdir()
    spool.symlink_to("/dev")  # the agent swapped its spool for the devices
    outcome = _run(tmp_path, state, spool / "null")
    assert outcome.phase == "failed"
    assert outcome.reason is not None
    assert "not a regular file" in outcome.reason, outcome.reason


def test_a_bundle_over_the_size_limit_is_not_copied(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    sparse = state / "update" / "spool" / "big.tar"
    with sparse.open("wb") as out:
        out.truncate(2**40)  # a terabyte that costs the agent's disk nothing
    outcome = _run(tmp_path, state, sparse, max_bundle_bytes=2**20)
    assert outcome.phase == "failed"
    assert outcome.reason is not None
    assert "max_bundle_bytes" in outcome.reason, outcome.reason
    assert not list((tmp_path / "opt" / "staging").rglob("*.tar"))


def test_update_apply_never_copies_the_bundle_through_a_link_in_the_spool(tmp_path: Path) -> None:
    """`edge-agent update apply` runs as root and spools the stick's bundle under its sha256, a
    name the agent can know beforehand (the release is published): it used to copy through a link
    the agent placed at `<sha>.part`, overwriting whatever root file the link named."""
    state = _state_dir(tmp_path)
    bundle = tmp_path / "usb" / "agent-0.2.0.tar"
    bundle.parent.mkdir()
    bundle.write_bytes(b"release bundle bytes")
    victim = tmp_path / "etc-shadow"
    victim.write_text("root:$6$...:19000:0:99999:7:::\n")
    (state / "update" / "spool" / f"{SHA}.part").symlink_to(victim)
    receiver = UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys"), UpdateFiles(state))
    staged = receiver.spool(bundle, SHA)
    assert victim.read_text() == "root:$6$...:19000:0:99999:7:::\n"
    assert not staged.is_symlink()
    assert staged.read_bytes() == b"release bundle bytes"


def _decoy(tmp: Path) -> tuple[Path, Path]:
    """A config whose `gateway.state_dir` the agent chose (config_update, or written as the agent),
    with a request of its own waiting there."""
    (tmp / "agent-wrote").mkdir()
    config = write_agent_config(tmp / "agent-wrote", extra=f'[update]\nroot = "{tmp / "opt"}"\n')
    decoy = tmp / "agent-wrote" / "state"
    UpdateFiles(decoy).write_request({"action": "rollback", "requested_by": "the decoy"})
    return config, decoy


def _untouched(decoy: Path) -> None:
    assert (decoy / "update" / "request.json").exists(), "root took the decoy's request"
    assert not (decoy / "update" / "state.json").exists()
    assert not (decoy / "audit.log").exists()


def test_the_root_updater_works_in_the_state_directory_of_its_command_line(tmp_path: Path) -> None:
    """`update run` took the state directory, and with it the request it acts on, the files it writes
    as root and the socket that judges a release, from the config the agent may rewrite."""
    config, decoy = _decoy(tmp_path)
    state = _state_dir(tmp_path)
    UpdateFiles(state).write_request({"action": "rollback", "requested_by": "the technician"})
    argv = ["update", "run", "-c", str(config), "--root", str(tmp_path / "opt"), "--restart-command", "true"]
    argv += ["--state-dir", str(state)]
    assert main(argv) != 0  # no previous release to roll back to, in an empty install root
    _untouched(decoy)
    outcome = UpdateFiles(state).read_state()
    assert (outcome.requested_by, outcome.phase) == ("the technician", "failed")
    assert not UpdateFiles(state).request.exists()
    (entry,) = read_audit(state / "audit.log")
    assert (entry["action"], entry["outcome"]) == ("update", "failed")


@pytest.mark.skipif(os.geteuid() != 0, reason="the default that differs is root's")
def test_without_the_flag_root_uses_the_services_state_directory_not_the_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A unit file of an older install passes no --state-dir: root then works in the directory
    edge-agent.service has and edge-agent-update.path watches, and says so."""
    config, decoy = _decoy(tmp_path)
    service = _state_dir(tmp_path)
    monkeypatch.setattr(update_command, "SERVICE_STATE_DIR", service)
    UpdateFiles(service).write_request({"action": "rollback", "requested_by": "the service's"})
    argv = ["update", "run", "-c", str(config), "--root", str(tmp_path / "opt"), "--restart-command", "true"]
    assert main(argv) != 0
    _untouched(decoy)
    assert UpdateFiles(service).read_state().requested_by == "the service's"
    assert f"as root the state directory is {service}, not the config's {decoy}" in capsys.readouterr().err
