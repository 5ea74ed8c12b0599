"""The unedited example config that deploy/install.sh wrote is refused (agent/config/example.py).

The example validates as it stands and names a Modbus TCP device at 10.20.7.10:502: an enabled agent
that started on it (at install, by hand, or at the next boot) polled a placeholder address on the
plant network. install.sh records the example's sha256 beside the config; while the config is that
file byte for byte, `check-config`, `run` (the unit's command) and `probe` refuse it, exit 78. The installed
layout itself is tested in test_install.py.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from water_edge.agent.cli import main
from water_edge.agent.config.example import EXIT_UNEDITED_EXAMPLE

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "config.example.toml"


def _layout(tmp_path: Path) -> Path:
    """/etc/edge-agent as install.sh leaves it: config.toml linking into managed/, the record."""
    etc = tmp_path / "etc"
    (etc / "managed").mkdir(parents=True)
    shutil.copyfile(EXAMPLE, etc / "managed" / "config.toml")
    (etc / "config.toml").symlink_to("managed/config.toml")
    digest = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    (etc / "config.example.sha256").write_text(
        f"# a comment\n{digest}  config.example.toml (release 0.1.0)\n"
    )
    return etc


def test_the_unedited_example_is_refused_by_name_and_any_edit_ends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = _layout(tmp_path)
    for config in (etc / "config.toml", etc / "managed" / "config.toml"):
        assert main(["check-config", "-c", str(config)]) == EXIT_UNEDITED_EXAMPLE
        err = capsys.readouterr().err
        assert f"{config}: this is still the example config deploy/install.sh installed, unedited" in err
        assert str(etc / "config.example.sha256") in err
    # Nothing polled: neither by the service nor by a technician's probe of the example's devices.
    for command in ("run", "probe"):
        assert main([command, "-c", str(etc / "config.toml")]) == EXIT_UNEDITED_EXAMPLE, command
        assert "this is still the example config" in capsys.readouterr().err

    # A comment is an edit: the engineer has looked at it. Then it is checked like any config.
    with (etc / "managed" / "config.toml").open("a") as f:
        f.write("# site survey 2026-12-07\n")
    assert main(["check-config", "-c", str(etc / "config.toml")]) == 0
    assert "still the example" not in capsys.readouterr().err


def test_without_a_record_the_example_is_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped file itself (a checkout, the docs' own examples) and a record of another file."""
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0
    etc = _layout(tmp_path)
    (etc / "config.example.sha256").write_text(f"{'0' * 64}  config.example.toml\n")
    assert main(["check-config", "-c", str(etc / "config.toml")]) == 0
    assert "still the example" not in capsys.readouterr().err
