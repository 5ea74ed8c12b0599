"""How the updater builds a release's virtualenv when the release does not list a pip of its own:
the venv module's bootstrap pip installs the wheels, and the release keeps that pip (for the next
update and for a technician). A release that lists its pip (as the agent's does: sqlite-utils needs
it) is built without that bootstrap; test_update_selfupdate.py runs that path end to end."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support.releases import write_wheel
from water_edge.agent.update.layout import Layout
from water_edge.agent.update.service import CommandService
from water_edge.agent.update.state import UpdateFiles
from water_edge.agent.update.updater import Updater


def _wheel(into: Path) -> Path:
    """A small pure-Python wheel: `release_probe`, whose VALUE is 42."""
    files = {
        "release_probe/__init__.py": b"VALUE = 42\n",
        "release_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: release-probe\nVersion: 1.0\n",
        "release_probe-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    wheel = into / "release_probe-1.0-py3-none-any.whl"
    return write_wheel(wheel, files.items(), "release_probe-1.0.dist-info")


def _updater(tmp_path: Path) -> Updater:
    return Updater(
        layout=Layout(tmp_path / "opt"),
        files=UpdateFiles(tmp_path / "state"),
        keys_file=tmp_path / "release-keys",
        config_path=tmp_path / "agent.toml",
        status_socket=tmp_path / "status.sock",
        service=CommandService(["true"]),
        audit_path=None,
    )


def test_a_release_without_its_own_pip_is_built_with_the_venv_modules_pip(tmp_path: Path) -> None:
    updater = _updater(tmp_path)
    target = tmp_path / "opt" / "releases" / "1.0-probe"
    updater._build_venv(target, [_wheel(tmp_path)])

    python = str(target / "bin" / "python")
    imported = subprocess.run(
        [python, "-c", "import release_probe; print(release_probe.VALUE)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert imported.stdout.strip() == "42"
    pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, check=False)
    assert pip.returncode == 0, pip.stderr
    assert str(target) in pip.stdout  # the release's own pip, not one from elsewhere
    # Byte-compiled at install: the agent, running as its own user, cannot write a cache there.
    assert list((target / "lib").glob("python3*/site-packages/release_probe/__pycache__/*.pyc"))


def test_a_release_built_under_a_hardened_umask_is_readable_by_the_service_user(tmp_path: Path) -> None:
    """Root's umask on a hardened host (027, or 077) made the release's files root's alone: the
    agent's user could not run the release `update apply` installed by hand."""
    updater = _updater(tmp_path)
    target = tmp_path / "opt" / "releases" / "1.0-probe"
    before = os.umask(0o077)
    try:
        updater._build_venv(target, [_wheel(tmp_path)])
    finally:
        os.umask(before)
    (module,) = (target / "lib").glob("python3*/site-packages/release_probe/__init__.py")
    for path in (tmp_path / "opt" / "releases", target, target / "bin", module.parent):
        assert stat.S_IMODE(path.stat().st_mode) & 0o005 == 0o005, path  # others may enter and read
    assert stat.S_IMODE(module.stat().st_mode) & 0o004, module
    assert stat.S_IMODE((target / "bin" / "python").stat().st_mode) & 0o001  # and run it
