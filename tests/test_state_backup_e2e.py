"""A dead card's learning, back from the centre (docs/fleet.md, "State backups").

The whole path a utility relies on when a gateway's SD card dies: a real agent polls a firmware-sim
PLC and calibrates its pump; it sends its learnt state over its own uplink through a real Mosquitto
to a real `edge-centre ingest` and PostgreSQL; the old card is then gone. A technician fetches the
newest backup with `edge-centre state-backup`, imports it on a new card with `edge-agent state
import`, and the new agent starts with the pump armed on the old calibration instead of a day of
learning (without the pump's rolling feature history, which the backup leaves on the card)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.centre import ingest_process, query
from tests.support.cli import edge_agent
from tests.support.plant import running_plant
from tests.support.pump_cards import pump1_health, pump_card
from tests.support.testing import demo_devices, wait_until

pytestmark = pytest.mark.slow

BACKUP = """
[state_backup]
first_after = 1
interval = "1h"
"""


def stored_backups(dsn: str) -> dict[str, int]:
    """Backup id -> learnt files, of the test gateway's backups the centre keeps."""
    sql = "SELECT backup, files FROM state_backups WHERE site = 'test-site' AND gateway = 'gw-test'"
    return {str(backup): int(files) for backup, files in query(dsn, sql)}


def edge_centre(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.centre.cli", *args], capture_output=True, timeout=60, check=False
    )


def test_a_new_card_is_armed_from_the_backup_its_dead_predecessor_sent_the_centre(
    centre_db: str, tmp_path: Path
) -> None:
    with Mosquitto() as broker, running_plant(seed=5) as plant:
        ingest = ingest_process(tmp_path, "c1", centre_db, [f"mqtt://{broker.host}:{broker.port}"])
        ingest.start()
        try:
            ingest.wait_subscribed()
            devices = demo_devices(plant.port, poll_interval_ms=50)
            old = pump_card(tmp_path, "old-card", devices, broker.port, extra=BACKUP)
            with running_agent(old) as agent:
                armed = agent.wait_status(lambda s: pump1_health(s).get("state") == "armed", timeout=90)
                calibration = pump1_health(armed)["calibration"]
                assert agent.stop() == 0
            # Its next start sends what it learnt since its first backup (within `first_after`).
            with running_agent(old) as agent:
                started_ns = time.time_ns()
                sent = agent.wait_status(
                    lambda s: (s["state_backup"]["sent_ns"] or 0) > started_ns, timeout=60
                )["state_backup"]
                assert agent.stop() == 0
            wait_until(
                lambda: sent["backup"] in stored_backups(centre_db),
                30,
                what=lambda: f"backup {sent['backup']} stored\n{ingest.log()[-3000:]}",
            )
            assert stored_backups(centre_db)[sent["backup"]] == sent["files"]
        finally:
            ingest.stop()
        # The old card is dead: only the centre has its learning.
        fetched = tmp_path / "gw-test-state.tar.gz"
        got = edge_centre(
            "--dsn", centre_db, "state-backup", "--site", "test-site", "--gateway", "gw-test",
            "--out", str(fetched),
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert fetched.stat().st_mode & 0o777 == 0o600
        with tarfile.open(fetched, "r:gz") as archive:
            names = archive.getnames()
        # The calibration, not the rolling feature history (its day of samples stays on the card).
        assert "state/pump/pump1/calibration.json" in names, names
        assert not [n for n in names if n.endswith("history.sqlite")], names
        new = pump_card(tmp_path, "new-card", devices, broker.port, extra=BACKUP)
        imported = edge_agent("state", "import", str(fetched), "-c", str(new))
        assert imported.returncode == 0, imported.stderr
        assert "of what gateway gw-test (site test-site) had learnt by" in imported.stdout
        with running_agent(new) as agent:
            first = agent.wait_status(lambda s: bool(pump1_health(s)), timeout=30)
            assert pump1_health(first)["state"] == "armed", pump1_health(first)
            assert pump1_health(first)["calibration"] == calibration
            assert agent.stop() == 0
