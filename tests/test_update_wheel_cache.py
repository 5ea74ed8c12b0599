"""The gateway's wheel cache (`/opt/edge-agent/wheels`) holds what the current and the previous
release were built from: thin bundles rely on it, and a year of releases (a dependency bump brings
a new numpy or scipy, tens of MB) must not pile up on the card. The root updater runs for real in a
temporary A/B layout (tests/test_update_min_version.py's gateway)."""

from __future__ import annotations

from pathlib import Path

from tests.support.update_agents import release_agents
from tests.test_update_min_version import Gateway


def _wheel(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(f"the wheel {name}".encode() * 50)
    return path


def _apply(gateway: Gateway, version: str, carried: list[str], cached: list[str]) -> str:
    """A signed bundle of the agent `version` carrying `carried` dependency wheels and naming
    `cached` ones (a thin bundle), installed and committed; the wheel cache's names after it."""
    deps = gateway.tmp / "deps"
    gateway.bundle(version, carried=[deps / n for n in carried], cached=[deps / n for n in cached])
    with release_agents(gateway.root) as status:
        state = gateway.run(status)
    assert state.phase == "committed", state
    return " ".join(sorted(p.name for p in gateway.layout.wheels.iterdir()))


def test_the_wheel_cache_keeps_what_the_current_and_previous_releases_need(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.1.0")  # installed by install.sh: its wheels not listed
    (tmp_path / "deps").mkdir()
    for name in ("numpy-1.0-cp311-none-any.whl", "numpy-2.0-cp311-none-any.whl", "paho-2.0-py3-none-any.whl"):
        _wheel(tmp_path / "deps", name)
    agent = "water_edge_agent-{}-py3-none-any.whl"

    # The release before is not known to need nothing: everything stays.
    cache = _apply(gateway, "0.2.0", ["numpy-1.0-cp311-none-any.whl", "paho-2.0-py3-none-any.whl"], [])
    assert cache == f"numpy-1.0-cp311-none-any.whl paho-2.0-py3-none-any.whl {agent.format('0.2.0')}"
    # A dependency bump: the previous release (0.2.0) still needs numpy 1.0 to be rebuilt from.
    cache = _apply(gateway, "0.3.0", ["numpy-2.0-cp311-none-any.whl"], ["paho-2.0-py3-none-any.whl"])
    assert cache == (
        f"numpy-1.0-cp311-none-any.whl numpy-2.0-cp311-none-any.whl paho-2.0-py3-none-any.whl "
        f"{agent.format('0.2.0')} {agent.format('0.3.0')}"
    )
    # Thin, over the cache: 0.2.0 is no longer kept, nor what only it was built from.
    cache = _apply(gateway, "0.4.0", [], ["numpy-2.0-cp311-none-any.whl", "paho-2.0-py3-none-any.whl"])
    assert cache == (
        f"numpy-2.0-cp311-none-any.whl paho-2.0-py3-none-any.whl "
        f"{agent.format('0.3.0')} {agent.format('0.4.0')}"
    )
    releases = sorted(p.name.split("-")[0] for p in gateway.layout.releases.iterdir())
    assert releases == ["0.3.0", "0.4.0"]
