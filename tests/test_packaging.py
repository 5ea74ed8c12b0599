"""Packaging stays in step with the tree: every package folder is listed, every driver loads."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from drivers import registry

ROOT = Path(__file__).resolve().parents[1]


def listed_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}


def package_folders() -> set[str]:
    found = set()
    for top in ("agent", "drivers", "buffer", "models", "provisioning"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    for init in (ROOT / "firmware-sim" / "fwsim").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT / "firmware-sim").parts))
    return {p for p in found if "train" not in p.split(".") or p == "models.train"}


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    # An editable install finds unlisted folders; a wheel on a gateway would silently miss them.
    missing = package_folders() - listed_packages()
    assert not missing, f"add to setup.cfg [options] packages: {sorted(missing)}"


@pytest.mark.parametrize("kind", registry.known_kinds())
def test_every_declared_driver_loads_with_a_config_model(kind: str) -> None:
    factory = registry.load(kind)
    assert factory is not None
    fields = factory.config_model.model_fields
    assert "name" in fields
    assert "kind" in fields
