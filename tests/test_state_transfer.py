"""A gateway's learnt state carried to a replacement card (`edge-agent state export` / `import`).

A real agent polls a firmware-sim PLC over Modbus TCP and calibrates its pump; its state is
exported while it runs; a fresh card (another state directory) takes the archive, and a new agent
on it starts with the pump armed on the old calibration, instead of learning again."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import running_agent
from tests.support.cli import edge_agent
from tests.support.plant import running_plant
from tests.support.pump_cards import pump1_health
from tests.support.testing import FAST_CALIBRATING_PUMP, agent_config, demo_devices
from water_edge.agent.state_transfer import export_state

pytestmark = pytest.mark.slow


@dataclass
class OldGateway:
    card: Path
    archive: Path
    calibration: dict[str, Any]
    devices: str


def card_config(card: Path, devices: str, gateway: str = "gw-test") -> Path:
    config = card / "agent.toml"
    text = agent_config(
        card / "state", status_socket=card / "status.sock", devices=devices, models=FAST_CALIBRATING_PUMP
    )
    config.write_text(text.replace('id = "gw-test"', f'id = "{gateway}"', 1))
    return config


@pytest.fixture(scope="module")
def old_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OldGateway]:
    """The gateway whose card is about to die: its pump calibrated, its state exported while it runs."""
    root = tmp_path_factory.mktemp("old-gateway")
    card = root / "card"
    card.mkdir()
    with running_plant(seed=5) as plant:
        devices = demo_devices(plant.port, poll_interval_ms=50)
        config = card_config(card, devices)
        with running_agent(config) as agent:
            armed = agent.wait_status(lambda s: pump1_health(s).get("state") == "armed", timeout=90)
            archive = root / "gw-test-state.tar.gz"
            run = edge_agent("state", "export", "-c", str(config), "--out", str(archive))
            assert run.returncode == 0, run.stderr
            assert run.stdout.startswith(f"{archive}: ")
            assert archive.stat().st_mode & 0o777 == 0o600
            # to stdout, for a central host: `ssh gw sudo -u edge-agent edge-agent state export --out -`
            piped = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "water_edge.agent.cli",
                    "state",
                    "export",
                    "-c",
                    str(config),
                    "--out",
                    "-",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert piped.returncode == 0, piped.stderr
            assert piped.stderr.decode().startswith("stdout: ")
            with tarfile.open(fileobj=io.BytesIO(piped.stdout), mode="r:gz") as tar:
                assert "manifest.json" in tar.getnames()
            assert agent.stop() == 0
        yield OldGateway(card, archive, pump1_health(armed)["calibration"], devices)


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_the_archive_holds_the_learnt_state_and_nothing_of_the_old_hardware_or_identity(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    files = members(old_gateway.archive)
    manifest = json.loads(files.pop("manifest.json"))
    assert (manifest["format"], manifest["site"], manifest["gateway"]) == (
        "edge-agent-state/1",
        "test-site",
        "gw-test",
    )
    names = sorted(files)
    assert any(n.startswith("state/pump/pump1/") for n in names), names
    assert not [
        n for n in names if not n.startswith(("state/pump/", "state/learnt_tags.json", "state/meter/"))
    ], names
    state = old_gateway.card / "state"
    assert (state / "outbox.sqlite").exists()  # on the old card, never in the archive
    for name in names:
        assert not name.endswith(
            ("outbox.sqlite", "nonces.sqlite", "board.json", "serial_ports.json", "-wal")
        )
        assert (
            hashlib.sha256(files[name]).hexdigest()
            == manifest["files"][name.removeprefix("state/")]["sha256"]
        )
    # A history copied while the agent wrote it is a whole database.
    (history,) = [n for n in names if n.endswith("history.sqlite")]
    copy = tmp_path / "history.sqlite"
    copy.write_bytes(files[history])
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_new_card_starts_with_the_pump_armed_on_the_old_calibration(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    card = tmp_path / "new-card"
    card.mkdir()
    with running_plant(seed=5) as plant:
        devices = demo_devices(plant.port, poll_interval_ms=50)
        config = card_config(card, devices)
        run = edge_agent("state", "import", str(old_gateway.archive), "-c", str(config))
        assert run.returncode == 0, run.stderr
        assert "of what gateway gw-test (site test-site) had learnt by" in run.stdout
        with running_agent(config) as agent:
            first = agent.wait_status(lambda s: bool(pump1_health(s)), timeout=30)
            assert pump1_health(first)["state"] == "armed", pump1_health(first)
            assert pump1_health(first)["calibration"] == old_gateway.calibration
            # and with the agent running, a second import is refused: it would overwrite its files
            again = edge_agent("state", "import", str(old_gateway.archive), "-c", str(config))
            assert again.returncode == 1
            assert "an agent is running" in again.stderr
            assert agent.stop() == 0
            assert "Traceback" not in agent.log()


def test_an_archive_of_another_gateway_is_refused_unless_forced(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    card = tmp_path / "card"
    card.mkdir()
    config = card_config(card, old_gateway.devices, gateway="gw-other")
    run = edge_agent("state", "import", str(old_gateway.archive), "-c", str(config))
    assert run.returncode == 1
    assert (
        "holds what gateway gw-test of site test-site learnt, and this config is gateway gw-other"
        in run.stderr
    )
    assert not (card / "state" / "pump").exists()
    forced = edge_agent("state", "import", str(old_gateway.archive), "-c", str(config), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (card / "state" / "pump" / "pump1").is_dir()


def rewritten(archive: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """`archive` with members replaced (`None`: removed) or added, the manifest left as it was."""
    files = members(archive)
    for name, data in change.items():
        if data is None:
            files.pop(name)
        else:
            files[name] = data
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_an_altered_damaged_or_hostile_archive_writes_nothing(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    card = tmp_path / "card"
    card.mkdir()
    config = card_config(card, old_gateway.devices)
    files = members(old_gateway.archive)
    some = next(n for n in files if n.startswith("state/pump/"))
    cases = {
        "altered": (
            rewritten(old_gateway.archive, tmp_path / "a.tgz", {some: b"{}"}),
            "does not match its checksum",
        ),
        "outside": (
            rewritten(
                old_gateway.archive, tmp_path / "b.tgz", {"state/../../etc/cron.d/x": b"* * * * * root sh"}
            ),
            "points outside the state directory",
        ),
        "not learnt": (
            rewritten(old_gateway.archive, tmp_path / "c.tgz", {"state/identity/current/key.pem": b"k"}),
            "is not learnt state",
        ),
        "a file missing": (
            rewritten(old_gateway.archive, tmp_path / "d.tgz", {some: None}),
            "not the ones its manifest lists",
        ),
    }
    (tmp_path / "e.tgz").write_bytes(old_gateway.archive.read_bytes()[:200])
    cases["cut short"] = (tmp_path / "e.tgz", "not an archive made by `edge-agent state export`")
    for case, (archive, said) in cases.items():
        run = edge_agent("state", "import", str(archive), "-c", str(config))
        assert run.returncode == 1, case
        assert said in run.stderr, (case, run.stderr)
        assert not (card / "state" / "pump").exists(), case
    assert not (tmp_path.parent / "etc").exists()


def test_a_link_planted_in_the_state_directory_is_not_followed(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    """The agent's user owns the state directory; an import run as root must not write through a
    link that user put there."""
    card = tmp_path / "card"
    (card / "state").mkdir(parents=True)
    elsewhere = tmp_path / "etc-cron.d"
    elsewhere.mkdir()
    (card / "state" / "pump").symlink_to(elsewhere)
    config = card_config(card, old_gateway.devices)
    run = edge_agent("state", "import", str(old_gateway.archive), "-c", str(config))
    assert run.returncode == 1
    assert f"{card / 'state' / 'pump'} is a symbolic link: refused" in run.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_config_that_does_not_load_is_named_and_nothing_is_done(tmp_path: Path) -> None:
    broken = tmp_path / "agent.toml"
    broken.write_text('schema_version = 1\n[gateway]\nsite = "north"\n')
    for args in (("export", "--out", str(tmp_path / "x.tgz")), ("import", str(tmp_path / "x.tgz"))):
        run = edge_agent("state", *args, "-c", str(broken))
        assert run.returncode == 2
        said = f"edge-agent state {args[0]}: invalid configuration:\n  {broken}: gateway"
        assert run.stderr.startswith(said), run.stderr
    assert not (tmp_path / "x.tgz").exists()


def test_an_archive_on_stdin_is_imported_as_the_agents_user_can_read_it(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    """`sudo -u edge-agent edge-agent state import - < FILE`: the technician's copy (0600, theirs)
    is read by their shell, and the agent's user writes its own files."""
    card = tmp_path / "card"
    card.mkdir()
    config = card_config(card, old_gateway.devices)
    run = subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "state", "import", "-", "-c", str(config)],
        input=old_gateway.archive.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (card / "state" / "pump" / "pump1").is_dir()
    cut = subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "state", "import", "-", "-c", str(config)],
        input=old_gateway.archive.read_bytes()[:300],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert cut.returncode == 1
    assert b"stdin: not an archive made by `edge-agent state export`" in cut.stderr


def test_a_history_under_a_state_directory_named_with_uri_characters_is_copied_whole(tmp_path: Path) -> None:
    """SQLite opens the history by URI (read-only): `?`, `#` and `%` in the path must not make it
    open another, empty database."""
    state = tmp_path / "state #2?a%41"
    history = state / "pump" / "pump1" / "history.sqlite"
    history.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(history)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows (x)")
        db.executemany("INSERT INTO rows VALUES (?)", [(i,) for i in range(500)])
        db.commit()
    done = export_state(state, "test-site", "gw-test")
    with tarfile.open(fileobj=io.BytesIO(done.archive), mode="r:gz") as tar:
        member = tar.extractfile("state/pump/pump1/history.sqlite")
        assert member is not None
        copy = tmp_path / "copy.sqlite"
        copy.write_bytes(member.read())
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (500,)


def test_an_export_without_histories_keeps_the_calibrations_and_leaves_the_rolling_history(
    old_gateway: OldGateway, tmp_path: Path
) -> None:
    lean = tmp_path / "lean.tar.gz"
    config = old_gateway.card / "agent.toml"
    run = edge_agent("state", "export", "--no-histories", "-c", str(config), "--out", str(lean))
    assert run.returncode == 0, run.stderr
    whole = members(old_gateway.archive)
    kept = members(lean)
    assert any(n.endswith("/history.sqlite") for n in whole)
    assert sorted(kept) == sorted(n for n in whole if not n.endswith("/history.sqlite"))
    assert json.loads(kept["state/pump/pump1/calibration.json"]) == json.loads(
        whole["state/pump/pump1/calibration.json"]
    )


def _peak_rss_kib(*argv: str) -> int:
    """`edge-agent ARGV...` in a process of its own; its peak RSS."""
    report = (
        "import resource, runpy, sys\n"
        f"sys.argv = ['edge-agent', *{list(argv)!r}]\n"
        "try:\n    runpy.run_module('water_edge.agent.cli', run_name='__main__')\n"
        "finally:\n    print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", report], capture_output=True, text=True, timeout=300, check=False
    )
    assert "peak" in run.stderr, run.stderr
    assert run.stderr.startswith("peak") or run.returncode == 0, run.stderr
    return int(run.stderr.rsplit("peak", 1)[1].split()[0])


def test_export_and_import_stream_a_large_history_instead_of_holding_it_in_memory(tmp_path: Path) -> None:
    """Two pumps' 14 days of history are ~110 MiB: on a Pi beside the running agent, an export
    must not hold them (and the archive) in memory, nor an import (a restore is put in place inside
    the agent's own process, at its start)."""
    small, large = tmp_path / "small", tmp_path / "large"
    for card in (small, large):
        (card / "state" / "pump" / "pump1").mkdir(parents=True)
        (card / "state" / "pump" / "pump1" / "calibration.json").write_text('{"version": 1}')
    history = large / "state" / "pump" / "pump1" / "history.sqlite"
    rng = random.Random(3)
    with contextlib.closing(sqlite3.connect(history)) as db:
        db.execute("CREATE TABLE rows (sample BLOB)")
        db.executemany("INSERT INTO rows VALUES (?)", ((rng.randbytes(4096),) for _ in range(12_000)))
        db.commit()
    size = history.stat().st_size
    assert size > 45 * 2**20
    peaks: dict[tuple[str, str], int] = {}
    for card in (small, large):
        config = card / "agent.toml"
        config.write_text(agent_config(card / "state", status_socket=card / "status.sock"))
        archive = card / "export.tar.gz"
        peaks["export", card.name] = _peak_rss_kib(
            "state", "export", "-c", str(config), "--out", str(archive)
        )
        new = card / "new-card.toml"
        new.write_text(agent_config(card / "new-state", status_socket=card / "new.sock"))
        peaks["import", card.name] = _peak_rss_kib("state", "import", str(archive), "-c", str(new))
    for command in ("export", "import"):
        grew = (peaks[command, "large"] - peaks[command, "small"]) * 1024
        assert grew < size / 4, (
            f"{command}: peak RSS grew by {grew / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB history"
        )
    with contextlib.closing(sqlite3.connect(large / "new-state" / "pump" / "pump1" / "history.sqlite")) as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (12_000,)
    # ... and the archive holds it whole.
    with tarfile.open(large / "export.tar.gz", mode="r:gz") as tar:
        member = tar.getmember("state/pump/pump1/history.sqlite")
    assert member.size == size
    assert not list(large.glob(".edge-agent-export-*")), "the export's scratch copies were left behind"
