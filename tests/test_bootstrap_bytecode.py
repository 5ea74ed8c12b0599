"""`make setup` leaves the dependencies compiled, as pip and deploy/install.sh leave a gateway's.

Where PYTHONDONTWRITEBYTECODE is set (CI, containers) a dependency installed as sources only is
compiled again by every process at every start: asyncua's import took 1.0 s and 94 MB instead of
0.5 s and 49 MB, and a fresh clone's demo and bench measured the compiler (scripts/bootstrap.sh).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# The heaviest imports of an agent's start: OPC UA's node-id tables, numpy, scipy's signal
# processing (the audio features), pydantic (every config).
HEAVY_MODULES = (
    "asyncua.ua.object_ids",
    "numpy.polynomial.polynomial",
    "scipy.signal._signaltools",
    "pydantic.main",
)


def _bootstrap_stamp() -> Path:
    stamp = Path(sys.prefix) / ".installed"
    if not stamp.exists():
        pytest.skip(f"{sys.prefix} was not made by scripts/bootstrap.sh (no .installed stamp)")
    return stamp


@pytest.mark.parametrize("module", HEAVY_MODULES)
def test_setup_compiled_the_dependencies_before_any_process_ran(module: str) -> None:
    stamp = _bootstrap_stamp()
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    assert spec.origin is not None, f"{module} has no source file"
    compiled = Path(importlib.util.cache_from_source(spec.origin))
    assert compiled.exists(), f"{module} has no bytecode: the setup installed it as sources only"
    # Bytecode written after the setup finished came from a process importing it, not the setup.
    assert compiled.stat().st_mtime <= stamp.stat().st_mtime + 1, (
        f"{compiled} was written after the setup ({stamp}): the setup left {module} uncompiled"
    )
