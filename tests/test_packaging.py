"""Packaging stays in step with the tree: every package folder is listed under the `water_edge`
namespace, the production wheel carries the product alone, every driver loads."""

from __future__ import annotations

import configparser
import zipfile
from pathlib import Path

import pytest

from tests.support.releases import build_wheel, copy_of_tree
from water_edge.drivers import registry

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_FOLDERS = ("core", "agent", "drivers", "buffer", "models", "provisioning")


def listed_packages(setup_cfg: Path) -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    return {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}


def package_folders(base: Path, folder: str, name: str) -> set[str]:
    return {
        ".".join((name, *init.parent.relative_to(base / folder).parts))
        for init in (base / folder).rglob("__init__.py")
    }


def test_every_product_package_folder_is_listed_in_setup_cfg() -> None:
    # An editable install finds unlisted folders; a wheel on a gateway would silently miss them.
    found = set()
    for folder in PRODUCT_FOLDERS:
        found |= package_folders(ROOT, folder, f"water_edge.{folder}")
    product = {p for p in found if not p.startswith("water_edge.models.train")}
    missing = product - listed_packages(ROOT / "setup.cfg")
    assert not missing, f"add to setup.cfg [options] packages: {sorted(missing)}"


def test_every_simulator_package_folder_is_listed_in_its_own_setup_cfg() -> None:
    found = package_folders(ROOT / "firmware-sim", "fwsim", "water_edge.sim")
    missing = found - listed_packages(ROOT / "firmware-sim" / "setup.cfg")
    assert not missing, f"add to firmware-sim/setup.cfg [options] packages: {sorted(missing)}"


def test_every_centre_package_folder_is_listed_in_its_own_setup_cfg() -> None:
    found = package_folders(ROOT / "centre", "edgecentre", "water_edge.centre")
    missing = found - listed_packages(ROOT / "centre" / "setup.cfg")
    assert not missing, f"add to centre/setup.cfg [options] packages: {sorted(missing)}"


def test_the_production_wheel_carries_the_product_alone(tmp_path: Path) -> None:
    wheel = build_wheel(copy_of_tree(tmp_path / "src"), tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"water_edge"}
    assert not any(
        n.startswith(("water_edge/sim/", "water_edge/models/train/", "water_edge/centre/")) for n in names
    )
    # The namespace is shared with the simulator's distribution: no water_edge/__init__.py.
    assert "water_edge/__init__.py" not in names
    for shipped in (
        "leak/leak_detector.tflite",
        "leak/leak_detector.json",
        "pump/pump_scorer.tflite",
        "machine_sound/pump_prior.npy",
        "machine_sound/pump_prior.json",
    ):
        assert f"water_edge/models/{shipped}" in names


@pytest.mark.parametrize("kind", registry.known_kinds())
def test_every_declared_driver_loads_with_a_config_model(kind: str) -> None:
    factory = registry.load(kind)
    assert factory is not None
    fields = factory.config_model.model_fields
    assert "name" in fields
    assert "kind" in fields
