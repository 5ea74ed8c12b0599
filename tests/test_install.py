"""deploy/install.sh in a throw-away root: venv, console script, config, unit enabled, idempotent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = pytest.mark.skipif(
    not SYSTEM_PYTHON.exists() or shutil.which("systemctl") is None,
    reason="needs Debian's python3 (with setuptools) and systemctl",
)


def install(root: Path) -> subprocess.CompletedProcess[str]:
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
    )


def test_install_into_a_staged_root_and_again_keeps_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root)
    assert first.returncode == 0, first.stderr + first.stdout
    venv = root / "opt" / "edge-agent" / "venv"
    assert (venv / "bin" / "edge-agent").is_file()
    config = root / "etc" / "edge-agent" / "config.toml"
    assert config.read_text() == (ROOT / "deploy" / "config.example.toml").read_text()
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert unit.read_text() == (ROOT / "deploy" / "edge-agent.service").read_text()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "edge-agent.service"
    assert wants.is_symlink()
    sysusers = (root / "usr" / "lib" / "sysusers.d" / "edge-agent.conf").read_text()
    assert "u edge-agent" in sysusers
    assert "m edge-agent dialout" in sysusers
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

    config.write_text("# edited on site\n")
    again = install(root)
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# edited on site\n"
    assert "kept the existing" in again.stdout


def test_install_refuses_a_source_that_is_not_the_project(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "deploy" / "install.sh"), "--root", str(tmp_path / "r"), "--source", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "not a water-edge-agent source tree" in result.stderr
