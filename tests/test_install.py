"""deploy/install.sh in a throw-away root: venv, console script, config, unit enabled, idempotent."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from water_edge.agent import __version__
from water_edge.agent.cli import main
from water_edge.agent.config.example import EXIT_UNEDITED_EXAMPLE

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SYSTEM_PYTHON.exists() or shutil.which("systemctl") is None,
        reason="needs Debian's python3 (with setuptools) and systemctl",
    ),
]


def install(root: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    # Offline and without dependencies: the test checks the layout, not PyPI.
    return subprocess.run(
        [
            str(ROOT / "deploy" / "install.sh"),
            "--root",
            str(root),
            "--python",
            str(SYSTEM_PYTHON),
            "--venv-args",
            "--system-site-packages",
            "--pip-args",
            "--no-deps --no-build-isolation --no-index",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=None if umask is None else (lambda: os.umask(umask) and None),
    )


def test_install_by_a_root_with_a_hardened_umask_leaves_a_release_the_service_user_can_run(
    tmp_path: Path,
) -> None:
    """Root's umask on a hardened host (CIS: 027; some 077) made the release, the units and the
    directories install.sh creates root's alone: the agent's user could not run its own release."""
    root = tmp_path / "root"
    done = install(root, umask=0o077)
    assert done.returncode == 0, done.stderr + done.stdout
    release = (root / "opt" / "edge-agent" / "current").resolve()
    (module,) = release.glob("lib/python3*/site-packages/water_edge/agent/__init__.py")
    for directory in (root / "opt", root / "opt" / "edge-agent", release, release / "bin", module.parent):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o005 == 0o005, directory  # others enter, read
    assert stat.S_IMODE(module.stat().st_mode) & 0o004, module
    assert stat.S_IMODE((release / "bin" / "edge-agent").stat().st_mode) & 0o001, "others may run it"
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    etc = root / "etc" / "edge-agent"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o750  # secrets: the explicit modes stand
    assert stat.S_IMODE((etc / "managed").stat().st_mode) == 0o2770


def test_install_into_a_staged_root_and_again_keeps_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root)
    assert first.returncode == 0, first.stderr + first.stdout
    assert first.stdout.splitlines()[-1].endswith("edge-agent status")
    assert "warning" not in first.stderr  # nothing of a board in the image yet
    example = ROOT / "deploy" / "config.example.toml"
    opt = root / "opt" / "edge-agent"
    venv = opt / "venv"
    assert (venv / "bin" / "edge-agent").is_file()
    # The A/B layout signed updates switch (docs/updates.md): a release, `current` linking to it.
    (first_release,) = (opt / "releases").iterdir()
    assert os.readlink(opt / "current") == f"releases/{first_release.name}"
    assert json.loads((first_release / "release.json").read_text())["version"] == __version__
    assert os.readlink(venv) == "current"
    assert not (opt / "previous").exists()
    # `edge-agent status`, as the docs and the install's last line say, works from any shell and
    # follows `current` across updates.
    command = root / "usr" / "local" / "bin" / "edge-agent"
    assert os.readlink(command) == "/opt/edge-agent/current/bin/edge-agent"
    config = root / "etc" / "edge-agent" / "config.toml"
    assert config.read_text() == (ROOT / "deploy" / "config.example.toml").read_text()
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert unit.read_text() == (ROOT / "deploy" / "edge-agent.service").read_text()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    for enabled in ("edge-agent.service", "edge-agent-update.service", "edge-agent-update.path"):
        assert (wants / enabled).is_symlink(), enabled
        assert (root / "etc" / "systemd" / "system" / enabled).read_text() == (
            ROOT / "deploy" / enabled
        ).read_text()
    keys = root / "etc" / "edge-agent" / "release-keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640
    assert all(line.startswith("#") for line in keys.read_text().splitlines())
    sysusers = (root / "usr" / "lib" / "sysusers.d" / "edge-agent.conf").read_text()
    assert "u edge-agent" in sysusers
    assert "m edge-agent dialout" in sysusers
    # The status group, and the service user in it (to give its socket that group).
    assert "g edge-agent-status -" in sysusers
    assert "m edge-agent edge-agent-status" in sysusers
    checked = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import water_edge.agent, water_edge.buffer, water_edge.drivers; "
            "print(water_edge.agent.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert str(venv) in checked.stdout, "the venv runs its own copy, not the source tree"
    # The production install is the product alone, under its namespace: no simulator, no training
    # code, no generic top-level names.
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "water_edge" / "agent").is_dir()
    for absent in ("agent", "drivers", "buffer", "models", "provisioning", "core", "fwsim"):
        assert not (site / absent).exists(), absent
    assert not (site / "water_edge" / "sim").exists()
    assert not (site / "water_edge" / "models" / "train").exists()
    assert not (venv / "bin" / "edge-sim").exists()

    config.write_text(example.read_text().replace('id = "gw-ps07"', 'id = "gw-ps11"'))  # edited on site
    # The image was booted once before it was taken: a machine id, and the agent's state of that
    # board (a copy would start as that gateway: docs/operations.md).
    (root / "etc" / "machine-id").write_text("4c4c4544003610458058b4c04f4e3432\n")
    (root / "var" / "lib" / "edge-agent").mkdir(parents=True)
    (root / "var" / "lib" / "edge-agent" / "board.json").write_text("{}")
    again = install(root)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if line.startswith("install.sh: warning: ")]
    assert len(warnings) == 2, again.stderr
    assert f"{root}/var/lib/edge-agent holds an agent's state (outbox, identity)" in warnings[0]
    assert f"{root}/etc/machine-id is set: every board made from this image shares it" in warnings[1]
    assert 'id = "gw-ps11"' in config.read_text()
    assert "kept the existing" in again.stdout
    # The second install is a new release; the first is kept as the one to roll back to.
    assert os.readlink(opt / "previous") == f"releases/{first_release.name}"
    assert os.readlink(opt / "current") != f"releases/{first_release.name}"


NEXT_STEPS = [
    "install.sh: not started: /etc/edge-agent/config.toml is still the example, unedited: its site, brokers",
    "install.sh: and device addresses are placeholders, and the agent refuses to run on it. Next:",
    "install.sh:   1. edit /etc/edge-agent/config.toml: [gateway] site and id, [uplink], [[devices]]",
    "install.sh:      (edge-agent scan ... finds what the devices have; docs/operations.md, Install)",
    "install.sh:   2. edge-agent check-config        # 0 = valid, 2 lists every problem",
    "install.sh:   3. systemctl start edge-agent     # enabled: it starts at every boot from then on",
    "install.sh: done. Then check with: systemctl status edge-agent; edge-agent status",
]


def _check_config(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """What `check-config` (and the unit's `run`) makes of the installed config."""
    capsys.readouterr()
    code = main(["check-config", "-c", str(config)])
    return code, capsys.readouterr().err


def test_a_fresh_install_does_not_start_the_agent_on_the_unedited_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs walk's finding: the example validates, so a fresh install started the agent at once
    as site north-plant, polling Modbus TCP 10.20.7.10:502, an address that may exist on a plant
    network. Now the unit stays enabled but the agent refuses the unedited example (also at boot,
    once: the unit does not restart on its exit status), and the install ends with the next steps;
    an edit ends it."""
    root = tmp_path / "root"
    first = install(root)
    assert first.returncode == 0, first.stderr + first.stdout
    assert first.stdout.splitlines()[-len(NEXT_STEPS) :] == NEXT_STEPS
    etc = root / "etc" / "edge-agent"
    config = etc / "config.toml"
    assert config.read_bytes() == (ROOT / "deploy" / "config.example.toml").read_bytes()
    assert (
        root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "edge-agent.service"
    ).is_symlink()
    record = etc / "config.example.sha256"
    assert stat.S_IMODE(record.stat().st_mode) == 0o644  # root's, where the agent cannot write

    code, err = _check_config(config, capsys)
    assert code == EXIT_UNEDITED_EXAMPLE  # the unit does not restart on it (test_service.py)
    assert f"{config}: this is still the example config deploy/install.sh installed, unedited" in err
    assert "`edge-agent check-config` and `systemctl start edge-agent`" in err
    assert main(["run", "-c", str(config)]) == EXIT_UNEDITED_EXAMPLE  # by hand, too: nothing is polled
    assert "this is still the example config" in capsys.readouterr().err

    # Upgraded before anyone configured it: still not started, the same next steps.
    again = install(root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-len(NEXT_STEPS) :] == NEXT_STEPS

    # Any edit makes it the site's config: it is checked as any other, and the install says done.
    config.write_text(config.read_text().replace('site = "north-plant"', 'site = "east-works"'))
    code, err = _check_config(config, capsys)
    assert code == 0, err
    edited = install(root)
    assert edited.returncode == 0, edited.stderr
    assert "not started" not in edited.stdout
    assert (
        edited.stdout.splitlines()[-1]
        == "install.sh: done. Check with: systemctl status edge-agent; edge-agent status"
    )


def test_an_older_install_still_on_the_example_is_recognised_on_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An install from before the record: config.toml byte for byte the example, no record. The
    upgrade records it, and the agent no longer runs on it."""
    root = tmp_path / "root"
    assert install(root).returncode == 0
    record = root / "etc" / "edge-agent" / "config.example.sha256"
    record.unlink()
    config = root / "etc" / "edge-agent" / "config.toml"
    assert _check_config(config, capsys)[0] == 0  # without the record, the example is just a valid file
    upgrade = install(root)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout.splitlines()[-len(NEXT_STEPS) :] == NEXT_STEPS
    assert record.is_file()
    assert _check_config(config, capsys)[0] == EXIT_UNEDITED_EXAMPLE


def test_install_refuses_a_source_that_is_not_the_project(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "deploy" / "install.sh"), "--root", str(tmp_path / "r"), "--source", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "not a water-edge-agent source tree" in result.stderr


# ---------------------------------------------------------------- config_update under the installed layout

# Run as root up to the point where every module is imported (the test's interpreter may live where
# only root can read), then as the service user: file access from there on is the service's own.
UPDATE_AS_SERVICE = r"""
import asyncio, base64, concurrent.futures.thread, os, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.remote.config import OperatorKey, SecuritySection
from water_edge.agent.remote.handlers import Targets, build_handlers
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.processor import CommandProcessor
from water_edge.agent.config import load_config
from water_edge.core import envelope

config, new, state = Path(sys.argv[1]), Path(sys.argv[2]).read_text(), Path(sys.argv[3])
load_config(config)  # imports the drivers the config names, while still root
os.setgroups([])
os.setgid(int(sys.argv[5]))
os.setuid(int(sys.argv[4]))
key = Ed25519PrivateKey.generate()
raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
security = SecuritySection(operators=[OperatorKey(
    name="ops", public_key=base64.b64encode(raw).decode(), commands=["config_update"])])
proc = CommandProcessor(security, site="north-plant", gateway="gw-ps07",
    nonces=NonceStore(state / "nonces.sqlite"), audit=AuditLog(state / "audit.log"),
    handlers=build_handlers(Targets(config_path=config)))
cmd = envelope.sign(key, "ops", "config_update", "north-plant/gw-ps07", {"config": new, "restart": False})
result = asyncio.run(proc.handle("config_update", cmd))
print(result.status, result.reason)
"""


def first_boot(root: Path) -> tuple[int, int]:
    """What systemd does at the image's first boot: create the user, apply tmpfiles.d."""
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}"], check=True, capture_output=True)
    for line in (root / "etc" / "passwd").read_text().splitlines():
        name, _x, uid, gid, *_rest = line.split(":")
        if name == "edge-agent":
            return int(uid), int(gid)
    raise AssertionError("systemd-sysusers did not create edge-agent")


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None or os.geteuid() != 0,
    reason="needs systemd-sysusers, systemd-tmpfiles and root (to act as the service user)",
)
def test_config_update_works_as_the_service_user_in_the_installed_layout() -> None:
    # Under /tmp, traversable by the service user (pytest's own temporary root is 0700).
    base = Path(tempfile.mkdtemp(prefix="edge-install-"))
    base.chmod(0o755)
    try:
        root = base / "root"
        assert install(root).returncode == 0
        etc = root / "etc" / "edge-agent"
        unit = (root / "etc" / "systemd" / "system" / "edge-agent.service").read_text()
        assert "ReadWritePaths=-/etc/edge-agent/managed" in unit
        assert os.readlink(etc / "config.toml") == "managed/config.toml"
        uid, gid = first_boot(root)
        groups = {
            line.split(":")[0]: line.split(":")[3].split(",")
            for line in (root / "etc" / "group").read_text().splitlines()
        }
        assert "edge-agent" in groups["edge-agent-status"], "the service user may give its socket the group"
        assert groups["edge-agent"] == [""], "nobody is in the agent's own group"
        # The shipped config puts the socket where that group may reach it (the runtime directory).
        assert '\nsocket = "/run/edge-agent/status.sock"' in (etc / "config.toml").read_text()
        for path, mode in ((etc, 0o750), (etc / "managed", 0o2770), (etc / "managed" / "config.toml", 0o640)):
            info = path.stat()
            assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, mode), path
        # Configured for its site, as the agent runs only then (not on the unedited example).
        site = (etc / "config.toml").read_text() + "# configured for this site\n"
        (etc / "managed" / "config.toml").write_text(site)
        # Another plain config in /etc/edge-agent itself, as an older install had it.
        (etc / "plain.toml").write_bytes((etc / "managed" / "config.toml").read_bytes())
        state = base / "state"
        state.mkdir()
        os.chown(state, uid, gid)
        new = base / "new.toml"
        new.write_text(site.replace('level = "info"', 'level = "debug"'))
        new.chmod(0o644)

        def update(config: Path) -> str:
            args = [str(config), str(new), str(state), str(uid), str(gid)]
            done = subprocess.run(
                [sys.executable, "-c", UPDATE_AS_SERVICE, *args],
                capture_output=True, text=True, cwd=base, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            return done.stdout.strip().splitlines()[-1]

        assert update(etc / "config.toml") == "ok None"
        assert 'level = "debug"' in (etc / "config.toml").read_text()
        assert (etc / "config.toml").is_symlink()
        written = (etc / "managed" / "config.toml").stat()
        assert (written.st_uid, written.st_gid, stat.S_IMODE(written.st_mode)) == (uid, gid, 0o640)
        assert update(etc / "plain.toml").startswith("refused permission: cannot write")
        assert 'level = "info"' in (etc / "plain.toml").read_text()
    finally:
        shutil.rmtree(base, ignore_errors=True)
