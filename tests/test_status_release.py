"""The retained status topic names the release a gateway runs (agent/release_name.py).

Every build says version 0.1.0 until releases are numbered; the centre tells a fleet's builds apart
by the release directory the agent's virtualenv is, as install.sh and the updater name it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from water_edge.agent.release_name import running_release

SCRIPT = (
    "from water_edge.agent.uplink import presence; from water_edge.agent.uplink.topics import Topics;"
    "import sys; sys.stdout.buffer.write(presence.online(Topics('water', 'plant-north', 'gw-03')))"
)


def test_the_release_is_the_virtualenvs_directory_under_releases() -> None:
    assert running_release("/opt/edge-agent/releases/0.2.0-1a2b3c4d") == "0.2.0-1a2b3c4d"
    assert running_release("/opt/edge-agent/releases/0.1.0-install-20261207T041700Z") == (
        "0.1.0-install-20261207T041700Z"
    )
    assert running_release("/work/water-edge-agent/.venv") is None  # a checkout: no release
    assert running_release("/usr") is None


def test_an_agent_run_from_a_release_says_which_in_its_online_status(tmp_path: Path) -> None:
    """A real virtualenv at releases/<name> (its packages those of this one, by a .pth file)."""
    release = tmp_path / "opt" / "releases" / "0.2.0-1a2b3c4d"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(release)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = subprocess.run(
        [str(release / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "this-checkout.pth").write_text(f"{purelib}\n")
    out = subprocess.run(
        [str(release / "bin" / "python"), "-c", SCRIPT], check=True, capture_output=True
    ).stdout
    doc = json.loads(out)
    assert (doc["state"], doc["release"]) == ("online", "0.2.0-1a2b3c4d")

    from_checkout = json.loads(
        subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True).stdout
    )
    assert "release" not in from_checkout
    assert from_checkout["agent"] == doc["agent"]
