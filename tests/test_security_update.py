"""The root updater and the files the unprivileged agent leaves it in the state directory: the
agent (or whoever runs code as it) must not be able to make root create, chmod, hand over or copy
any other file through a link, a device or a sparse file placed there.
"""

from __future__ import annotations

import hashlib
import os
import platform
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from tests.support.testing import write_agent_config
from water_edge.agent.cli import main
from water_edge.agent.commands import update as update_command
from water_edge.agent.remote.audit import read_audit
from water_edge.agent.update.bundle import build_bundle, public_key_text
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.update.layout import Layout
from water_edge.agent.update.receive import UpdateReceiver
from water_edge.agent.update.service import CommandService
from water_edge.agent.update.state import UnsafeUpdateFileError, UpdateFiles, UpdateState
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
    assert f"{spool}: a link where a directory belongs" in outcome.reason, outcome.reason
    spool.unlink()
    spool.mkdir()
    os.mkfifo(spool / "fifo.tar")  # in the spool itself: opened without blocking, refused
    outcome = _run(tmp_path, state, spool / "fifo.tar")
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


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("sha256", "../../victim", "sha256 '../../victim' is not a sha256 in lower-case hex"),
        ("health_window_s", "soon", "health_window_s 'soon' is not a number of seconds"),
    ],
)
def test_a_request_root_cannot_act_on_safely_is_refused_before_anything_is_done(
    tmp_path: Path, field: str, value: Any, reason: str
) -> None:
    """The agent writes the request. Root named its work directory (removed before and after use)
    after the request's `sha256`: `../../victim` had root remove a directory of the agent's
    choosing (`/etc`, or `/` itself) before the bundle was even read. A health window that is not
    a number of seconds crashed the updater with the request already taken."""
    state = _state_dir(tmp_path)
    victim = tmp_path / "victim"  # what `<install root>/staging/../../victim` names
    victim.mkdir()
    (victim / "secret.json").write_text("root's")
    bundle = state / "update" / "spool" / "bundle.tar"
    bundle.write_bytes(b"never read")
    request = {"action": "apply", "bundle": str(bundle), "sha256": SHA, "requested_by": "c1", field: value}
    UpdateFiles(state).write_request(request)
    outcome = _updater(tmp_path, state).run()
    assert sorted(p.name for p in victim.iterdir()) == ["secret.json"]
    assert outcome.phase == "failed"
    assert outcome.reason == f"the request's {reason}; nothing was done", outcome.reason
    assert outcome.id.startswith("refused-")
    assert not (tmp_path / "opt" / "staging").exists()
    assert not UpdateFiles(state).request.exists()


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


# ---------------------------------------------------------------------- the update directory itself


def _root_only_dir(tmp: Path) -> Path:
    """A directory of root's, holding a file of root's, where the agent would like root to work."""
    target = tmp / "etc-somewhere"
    target.mkdir(mode=0o700)
    (target / "secret.json").write_text('{"phase": "trial", "requested_by": "SECRET"}')
    return target


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_a_link_at_the_update_directory_is_never_followed_and_the_run_fails_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent swapped `update` for a link: root wrote state.json (temp + rename) into whatever
    directory it named, and read and removed the request.json there."""
    state = _state_dir(tmp_path)
    elsewhere = _root_only_dir(tmp_path)
    (elsewhere / "request.json").write_text('{"action": "rollback", "requested_by": "the link"}')
    before = _contents(elsewhere)
    shutil.rmtree(state / "update")
    (state / "update").symlink_to(elsewhere)
    argv = ["update", "run", "-c", str(write_agent_config(tmp_path)), "--root", str(tmp_path / "opt")]
    argv += ["--restart-command", "true", "--state-dir", str(state)]
    with capture_logs() as logs:
        assert main(argv) != 0
    assert _contents(elsewhere) == before, "root wrote, read or removed a file through the link"
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700
    out, err = capsys.readouterr()
    assert f"failed: refused {state / 'update'}: a link where a directory belongs" in out, out
    assert f"state not written: {state / 'update'}" in err, err
    (written,) = [e for e in logs if e["event"] == "update.state_not_written"]
    assert (written["path"], written["log_level"]) == (str(state / "update" / "state.json"), "error")
    (entry,) = read_audit(state / "audit.log")  # the audit log is beside `update`, not in it
    assert (entry["outcome"], entry["reason"].startswith(f"refused {state / 'update'}")) == ("failed", True)


@pytest.mark.parametrize("kind", ["link", "fifo", "hard link"])
def test_a_request_that_is_not_a_regular_file_is_removed_unread_and_the_update_fails(
    tmp_path: Path, kind: str
) -> None:
    state = _state_dir(tmp_path)
    secret = _root_only_dir(tmp_path) / "secret.json"
    request = state / "update" / "request.json"
    if kind == "link":
        request.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(request)  # opening it to read would hang root
    else:
        os.link(secret, request)  # what root may do; the agent, where protected_hardlinks is off
    outcome = _updater(tmp_path, state).run()
    assert outcome.phase == "failed"
    assert outcome.reason is not None
    assert outcome.reason.startswith(f"refused {request}: "), outcome.reason
    assert outcome.id.startswith("refused-"), "without an id the agent would not report it"
    assert not os.path.lexists(request), "left for the path unit to start the updater again"
    assert secret.read_text() == '{"phase": "trial", "requested_by": "SECRET"}'
    assert b"SECRET" not in (state / "update" / "state.json").read_bytes()


def test_a_link_at_state_json_is_replaced_never_read_or_written_through(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    secret = _root_only_dir(tmp_path) / "secret.json"
    os.chmod(secret, 0o600)
    link = state / "update" / "state.json"
    link.symlink_to(secret)
    outcome = _updater(tmp_path, state).run()
    assert (outcome.phase, outcome.reason) == (
        "failed",
        f"refused {link}: a link where a regular file belongs: not followed",
    )
    assert secret.read_text() == '{"phase": "trial", "requested_by": "SECRET"}'
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not link.is_symlink(), "state.json is root's own file again, renamed over the link"
    assert stat.S_IMODE(link.stat().st_mode) == 0o644  # the agent reads it (its `update` events)
    assert UpdateFiles(state).read_state().reason == outcome.reason


def test_a_state_or_request_write_never_goes_through_a_link_at_the_update_directory(tmp_path: Path) -> None:
    """What both sides write (state.json by root, request.json by the agent or `update rollback` as
    root, the spool by `update apply` as root): refused, nothing made where the link points."""
    state = _state_dir(tmp_path)
    elsewhere = _root_only_dir(tmp_path)
    before = _contents(elsewhere)
    shutil.rmtree(state / "update")
    (state / "update").symlink_to(elsewhere)
    files = UpdateFiles(state)
    with pytest.raises(UnsafeUpdateFileError, match="a link where a directory belongs"):
        files.write_state(UpdateState(phase="failed"))
    with pytest.raises(UnsafeUpdateFileError):
        files.write_request({"action": "rollback"})
    bundle = tmp_path / "usb.tar"
    bundle.write_bytes(b"bundle")
    with pytest.raises(UnsafeUpdateFileError):
        UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys"), files).spool(bundle, SHA)
    assert files.read_state() == UpdateState()  # the agent's side: nothing to read
    assert _contents(elsewhere) == before


def test_update_apply_never_spools_into_a_directory_a_link_at_the_spool_names(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    elsewhere = _root_only_dir(tmp_path)
    spool = state / "update" / "spool"
    spool.rmdir()
    spool.symlink_to(elsewhere)
    bundle = tmp_path / "usb.tar"
    bundle.write_bytes(b"bundle")
    with pytest.raises(UnsafeUpdateFileError, match=f"{spool}: a link where a directory belongs"):
        UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys"), UpdateFiles(state)).spool(bundle, SHA)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.json"]


def _updater(tmp: Path, state: Path, *, root: Path | None = None, config: Path | None = None) -> Updater:
    return Updater(
        layout=Layout(root or tmp / "opt"),
        files=UpdateFiles(state),
        keys_file=tmp / "release-keys",
        config_path=config or tmp / "config.toml",
        status_socket=state / "status.sock",
        service=CommandService(["true"]),
        audit_path=state / "audit.log",
    )


# ---------------------------------------------------------------------- check-config of the new release


def _built_release(root: Path, tmp: Path, state: Path, check_config_exit: int = 3) -> tuple[Path, str]:
    """A signed bundle spooled with its request, and its release already built under `root` (as an
    earlier attempt leaves it), whose `edge-agent` records who runs it and ends check-config with
    `check_config_exit`."""
    key = Ed25519PrivateKey.generate()
    (tmp / "release-keys").write_text(f"rel-test {public_key_text(key)}\n")
    wheel = tmp / "w" / "water_edge_agent-0.2.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(os.urandom(1000))
    python = ".".join(platform.python_version_tuple()[:2])
    bundle = state / "update" / "spool" / "bundle.tar"
    build_bundle([wheel], [], key, "rel-test", bundle, python=python, config_schema=(1, 1), outbox_schema=1)
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    UpdateFiles(state).write_request({"action": "apply", "bundle": str(bundle), "sha256": sha})
    release = root / "releases" / f"0.2.0-{sha[:8]}"
    (release / "bin").mkdir(parents=True)
    for built in (root / "releases", release, release / "bin"):  # as the updater builds it, any umask
        built.chmod(0o755)
    (release / "release.json").write_text('{"version": "0.2.0"}')
    record = root / "ran-as"
    record.mkdir()
    record.chmod(0o777)  # whatever the umask
    stand_in = release / "bin" / "edge-agent"
    stand_in.write_text(f"#!/bin/sh\nid -u > {record}/uid\nid -g > {record}/gid\nexit {check_config_exit}\n")
    os.chmod(stand_in, 0o755)
    return record, sha


@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another user needs root")
@pytest.mark.parametrize("owner", ["the agent", "root"])
def test_the_new_releases_check_config_runs_as_the_user_who_owns_the_state_directory(
    tmp_path: Path, owner: str
) -> None:
    """The config is the agent's to rewrite (`config_update`): root no longer loads it with the new
    release's code. A state directory of root's (no agent user to be) runs it as before."""
    try:
        agent = pwd.getpwuid(AGENT_UID)
    except KeyError:
        pytest.skip(f"no user with uid {AGENT_UID} on this machine")
    # The install root where the agent's user can reach it (pytest's tmp_path is root's alone).
    root = Path(tempfile.mkdtemp(prefix="edge-agent-opt-"))
    try:
        os.chmod(root, 0o755)
        state = _state_dir(tmp_path)
        if owner == "root":
            os.chown(state, 0, 0)
        record, _ = _built_release(root, tmp_path, state)
        config = write_agent_config(tmp_path)
        outcome = _updater(tmp_path, state, root=root, config=config).run()
        assert outcome.phase == "failed"
        assert outcome.reason is not None
        assert "check-config on the live config failed" in outcome.reason, outcome.reason
        expected = (agent.pw_uid, agent.pw_gid) if owner == "the agent" else (0, 0)
        ran_as = (int((record / "uid").read_text()), int((record / "gid").read_text()))
        assert ran_as == expected
    finally:
        shutil.rmtree(root)


class SwapsTheUpdateDirectoryWhenBuilt(Layout):
    """The agent swaps `update` for a link while root builds the release (its last step is this)."""

    def write_info(self, path: Path, info: dict[str, Any]) -> None:
        super().write_info(path, info)
        state = self.root.parent / "state"
        shutil.rmtree(state / "update")
        (state / "update").symlink_to(self.root.parent / "etc-somewhere")


def test_a_trial_that_cannot_be_recorded_is_never_switched_to(tmp_path: Path) -> None:
    """The trial goes to state.json before `current` is switched (a power cut must find it to judge)."""
    state = _state_dir(tmp_path)
    os.chown(state, 0, 0)  # check-config as is: the stand-in release is in root's tmp_path
    elsewhere = _root_only_dir(tmp_path)
    root = tmp_path / "opt"
    (root / "releases" / "0.1.0-dev").mkdir(parents=True)
    (root / "current").symlink_to("releases/0.1.0-dev")
    _built_release(root, tmp_path, state, check_config_exit=0)
    updater = _updater(tmp_path, state, config=write_agent_config(tmp_path))
    updater.layout = SwapsTheUpdateDirectoryWhenBuilt(root)
    outcome = updater.run()
    assert outcome.phase == "failed"
    assert outcome.reason is not None
    assert outcome.reason.startswith("the trial could not be recorded ("), outcome.reason
    assert outcome.reason.endswith("nothing was switched"), outcome.reason
    assert os.readlink(root / "current") == "releases/0.1.0-dev"
    assert updater.state_unwritten is not None
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.json"]


def test_the_directories_root_makes_for_an_update_are_the_agents(tmp_path: Path) -> None:
    """`edge-agent update apply` run as root on a gateway whose agent never staged an update made
    `update/` and `spool/` root's: the agent could then stage no signed update (no `chunks/`, no
    `request.json`). They now belong to the state directory's owner, as if the agent had made them."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, AGENT_UID, AGENT_UID)
    bundle = tmp_path / "usb.tar"
    bundle.write_bytes(b"bundle")
    files = UpdateFiles(state)
    UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys"), files).spool(bundle, SHA)
    files.write_request({"action": "apply", "sha256": SHA})
    for made in (files.dir, files.spool):
        st = os.lstat(made)
        assert stat.S_ISDIR(st.st_mode)
        assert (st.st_uid, st.st_gid) == (AGENT_UID, AGENT_UID), made
    assert os.stat(files.request).st_uid == 0  # root's own file in it stays root's (0640)


def test_a_state_directory_reached_through_a_link_is_used(tmp_path: Path) -> None:
    # The installer may put the state directory on a data partition behind a link: only what is in
    # `update/` is the agent's to plant.
    (tmp_path / "data").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "data")
    files = UpdateFiles(tmp_path / "state")
    files.write_request({"action": "apply", "sha256": SHA})
    assert files.take_request() == {"action": "apply", "sha256": SHA}
    assert (tmp_path / "data" / "update").is_dir()
