"""The layer contract (pyproject.toml [tool.importlinter], docs/architecture.md) holds, and it
really fails on a wrong import: the check is run once on the tree and once on a copy with one
deliberate violation per contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
FOLDERS = {
    "core": ROOT / "core",
    "agent": ROOT / "agent",
    "drivers": ROOT / "drivers",
    "buffer": ROOT / "buffer",
    "models": ROOT / "models",
    "provisioning": ROOT / "provisioning",
    "sim": ROOT / "firmware-sim" / "fwsim",
    "centre": ROOT / "centre" / "edgecentre",
}

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter ([dev] extra) not installed")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def tree_with(tmp_path: Path, folder: str, module: str, source: str) -> Path:
    """A copy of the namespace where `folder` is a real copy holding one extra module."""
    namespace = tmp_path / "water_edge"
    namespace.mkdir()
    for name, path in FOLDERS.items():
        if name == folder:
            shutil.copytree(path, namespace / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (namespace / name).symlink_to(path)
    (namespace / folder / f"{module}.py").write_text(source)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_layer_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("folder", "source", "broken"),
    [
        (
            "core",
            "import water_edge.agent.runtime\n",
            "water_edge.core is not allowed to import water_edge.agent",
        ),
        (
            "drivers",
            "import water_edge.buffer.outbox\n",
            "water_edge.drivers is not allowed to import water_edge.buffer",
        ),
        (
            "models",
            "import water_edge.agent.cli\n",
            "water_edge.models is not allowed to import water_edge.agent",
        ),
        (
            "agent",
            "import water_edge.sim.pumpstation\n",
            "water_edge.agent.deliberate_violation -> water_edge.sim",
        ),
        ("sim", "import water_edge.core.reading\n", "water_edge.sim.deliberate_violation -> water_edge.core"),
        (
            "agent",
            "import water_edge.centre.store\n",
            "water_edge.agent.deliberate_violation -> water_edge.centre",
        ),
        (
            "centre",
            "import water_edge.agent.uplink.json_encoding\n",
            "water_edge.centre is not allowed to import water_edge.agent",
        ),
    ],
)
def test_a_deliberate_violation_breaks_the_contract(
    tmp_path: Path, folder: str, source: str, broken: str
) -> None:
    result = lint_imports(tree_with(tmp_path, folder, "deliberate_violation", source))
    assert result.returncode != 0
    assert broken in result.stdout


def test_every_models_module_is_a_source_of_the_never_import_training_contract() -> None:
    # The contract lists models' children one by one (models.train is itself under models); a new
    # processor package left off the list would escape the check.
    import pkgutil
    import tomllib

    import water_edge.models

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["id"] == "product-never-imports-sim-or-training"]
    children = {f"water_edge.models.{m.name}" for m in pkgutil.iter_modules(water_edge.models.__path__)}
    missing = children - {"water_edge.models.train"} - set(contract["source_modules"])
    assert not missing, f"add to the contract's source_modules: {sorted(missing)}"
