"""A config refused the same way by each check an engineer runs: `check-config`, `run`, `load_config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.core.errors import ConfigError


def refused_everywhere(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The problems of the config at `path`: what `check-config` prints (exit 2, no traceback),
    checked to be `run`'s too and `load_config`'s."""
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert main(["run", "--config", str(path)]) == 2
    assert capsys.readouterr().err == err
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert err == "invalid configuration:\n" + "".join(f"  {p}\n" for p in info.value.problems)
    return info.value.problems
