"""State a gateway keeps across an update and a rollback, read by this release's own readers.

An update keeps the state directory; a self-update that fails its health check rolls back to the
previous release, which then reads what the new one wrote (docs/updates.md, "State across updates
and rollbacks"). The old formats are written here from a minimal description, not from copies of
old code:

- pump calibration, format 2, as every release up to 425a758 (2026-12-03) wrote it: today's keys
  without `frozen_limit`, `repeat_share`, `longest_run` (added by b5e524d, 2026-12-04, without a
  format change);
- the nonce store before dc42bb0 (2026-12-02): one table, `nonces (nonce TEXT PRIMARY KEY, expires_at
  INTEGER NOT NULL)`, WAL, no `meta` table;
- the Sparkplug bdSeq file: the last bdSeq given, in ASCII, and a newline (unchanged since it was
  added by 4d3c830, 2026-12-01).

A "later release" is played by adding a key this release does not know to a file of the same
format: what a release that adds a field without changing the format writes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from water_edge.agent.config.load import load_config
from water_edge.agent.learnt_tags import LearntTags
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.uplink.sparkplug.bdseq import BdSeqStore
from water_edge.core.reading import Event, Reading
from water_edge.drivers.wmbus.config import WmbusConfig
from water_edge.models.machine_sound.detector import CALIBRATION_FORMAT as SOUND_FORMAT
from water_edge.models.machine_sound.detector import GroupModel, SoundCalibration
from water_edge.models.machine_sound.store import SoundCalibrationStore
from water_edge.models.manifest import ModelError
from water_edge.models.pump.config import PumpModelConfig
from water_edge.models.pump.detector import CALIBRATION_FORMAT, Calibration, calibrate
from water_edge.models.pump.processor import DEFAULT_MANIFEST, PumpProcessor
from water_edge.models.pump.store import CalibrationStore
from water_edge.models.runtime import Model, load_model

ROLES = ["flow", "motor_current", "discharge_pressure", "vibration_x"]
FROZEN_KEYS = {"frozen_limit", "repeat_share", "longest_run"}


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(DEFAULT_MANIFEST)


@pytest.fixture(scope="module")
def calibration(model: Model) -> Calibration:
    """A pump's calibration as this release makes it, from 3000 rows of one pump's relations."""
    rng = np.random.default_rng(1)
    n = 3000
    flow = 50 + 5 * np.sin(np.arange(n) / 300) + rng.normal(0, 0.3, n)
    x = np.column_stack(
        [
            flow,
            0.4 * flow + rng.normal(0, 0.1, n),
            6 - 0.01 * flow + rng.normal(0, 0.01, n),
            1 + 0.01 * flow + rng.normal(0, 0.02, n),
        ]
    )
    return calibrate(x, ROLES, model, window=32, model_version=model.version)


def _start_pump(state_dir: Path, model: Model) -> PumpProcessor:
    """A gateway's pump processor started on `state_dir` (no readings yet): what it loaded."""
    cfg = PumpModelConfig.model_validate({"name": "P1", "signals": {r: f"plc1/{r}" for r in ROLES}})
    proc = PumpProcessor([cfg], state_dir, model=model, model_version=model.version)

    async def emit(event: Event) -> None:
        raise AssertionError(f"no event expected at start: {event}")

    async def nothing() -> AsyncIterator[tuple[str, list[Reading]]]:
        return
        yield  # an async generator that ends at once

    asyncio.run(proc.run(nothing(), emit))
    return proc


def _stored(state_dir: Path, doc: dict[str, object]) -> CalibrationStore:
    """`doc` in service as version 1, as the release that wrote it left it."""
    store = CalibrationStore(state_dir, "P1")
    store.dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**doc, "version": 1}, indent=1)
    for path in (store.path, store.dir / "calibration.v1.json"):
        path.write_text(text)
    return store


@pytest.mark.parametrize("written_by", ["an older release", "a later release"])
def test_a_pump_calibration_another_release_wrote_stays_in_service(
    tmp_path: Path, model: Model, calibration: Calibration, written_by: str
) -> None:
    """After an update (older file) or a rollback (later file) the pump is armed on the
    calibration in service, version 1, and learns nothing again. A later release's file was
    refused as "malformed" and the pump learnt again from its last `auto_hours` of history."""
    doc = calibration.to_dict()
    if written_by == "an older release":
        doc = {k: v for k, v in doc.items() if k not in FROZEN_KEYS}
    else:
        doc["a_later_field"] = [1.5, 2.5]
    store = _stored(tmp_path, doc)

    proc = _start_pump(tmp_path, model)

    pump = proc.health().pumps["P1"]
    assert pump.last_error is None
    assert pump.state == "armed"
    assert pump.calibration is not None
    assert pump.calibration["version"] == 1
    assert store.versions() == [1]  # nothing learnt again
    cal = proc.pumps["P1"].cal
    assert cal is not None
    assert cal.coef == calibration.coef
    assert cal.threshold == calibration.threshold


def test_a_pump_calibration_of_a_later_format_is_said_to_be_a_later_releases(
    tmp_path: Path, calibration: Calibration
) -> None:
    store = _stored(tmp_path, {**calibration.to_dict(), "format": CALIBRATION_FORMAT + 1})
    with pytest.raises(ModelError, match="written by a later release") as got:
        store.load()
    assert "older" not in str(got.value)


@pytest.mark.parametrize("text", ["[]", "null", '"calibration"', "42"])
def test_a_calibration_file_holding_json_that_is_not_an_object_is_unreadable_not_a_crash(
    tmp_path: Path, calibration: Calibration, text: str
) -> None:
    pump = _stored(tmp_path, calibration.to_dict())
    pump.path.write_text(text)
    with pytest.raises(ModelError, match=f"{pump.path}: calibration file is malformed"):
        pump.load()
    sound = SoundCalibrationStore(tmp_path, "M1")
    sound.dir.mkdir(parents=True, exist_ok=True)
    sound.path.write_text(text)
    with pytest.raises(ModelError, match="machine-sound calibration file is malformed"):
        sound.load()


def test_a_machine_sound_calibration_with_fields_of_a_later_release_loads(tmp_path: Path) -> None:
    cal = SoundCalibration(
        mean=[0.0, 1.0],
        scale=[1.0, 2.0],
        precision=[[1.0, 0.0], [0.0, 1.0]],
        threshold=3.0,
        groups={"low": GroupModel(columns=[0], precision=[[1.0]], threshold=2.0)},
        clips=40,
        shrinkage=0.1,
        quantile=0.99,
        margin=1.2,
        oof_scores=[0.5, 0.7],
    )
    store = SoundCalibrationStore(tmp_path, "M1")
    store.save(cal)
    doc = json.loads(store.path.read_text())
    doc["a_later_field"] = {"x": 1}
    doc["groups"]["low"]["a_later_group_field"] = 3
    store.path.write_text(json.dumps(doc))

    loaded = store.load()

    assert loaded is not None
    assert loaded.version == 1
    assert loaded.format == SOUND_FORMAT
    assert loaded.groups == cal.groups
    assert loaded.threshold == cal.threshold


def test_the_nonce_store_an_older_release_wrote_still_refuses_its_replays(tmp_path: Path) -> None:
    """A signed command run by the older release is refused as a replay by this one, and the
    store this one leaves is still the older release's `nonces` table (a rollback reads it)."""
    path = tmp_path / "commands" / "nonces.sqlite"
    path.parent.mkdir()
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)")
    old.execute("INSERT INTO nonces VALUES ('run-by-the-old-release', 2000)")
    old.close()

    store = NonceStore(path, now_s=1000)
    assert store.quarantined is None
    assert store.seen("run-by-the-old-release")
    assert store.claim("run-by-the-old-release", 2000, now=1000) is False
    assert store.claim("run-by-this-release", 2000, now=1000) is True
    store.close()

    back = sqlite3.connect(path, isolation_level=None)  # the older release's own statements
    back.execute("DELETE FROM nonces WHERE expires_at < ?", (1000,))
    replay = back.execute("INSERT OR IGNORE INTO nonces VALUES ('run-by-this-release', 2000)")
    assert replay.rowcount == 0  # a replay for the older release too
    back.close()


def test_the_bdseq_goes_on_from_the_file_an_older_release_wrote(tmp_path: Path) -> None:
    path = tmp_path / "sparkplug-bdseq"
    path.write_text("41\n", encoding="ascii")
    assert BdSeqStore(path).next() == 42
    assert path.read_text(encoding="ascii") == "42\n"  # what the older release reads back


class _LaterWmbusConfig(WmbusConfig):
    """The wM-Bus driver's config in a later release: one setting more, at its default (as 48e57d6
    added `listen_max_meters` on 2026-12-05)."""

    a_later_setting: int = 7


GATEWAY_TOML = """
schema_version = 1
[gateway]
site = "s"
id = "g"
state_dir = "{state}"
[uplink]
host = "127.0.0.1"
[[devices]]
name = "flats"
kind = "wmbus"
receiver = "im871a"
port = "/dev/ttyUSB0"
[[devices.meters]]
name = "flat2"
id = "30000002"
"""


def test_learnt_tags_survive_an_update_whose_driver_has_a_new_setting(tmp_path: Path) -> None:
    """A wM-Bus meter's tags learnt under one release stand in for it under the next, whose driver
    has one setting more (not in the config file). They were dropped as "config changed": an
    update from 8e4a016 (2026-12-05) lost every wM-Bus device's learnt tags that way."""
    toml = tmp_path / "agent.toml"
    toml.write_text(GATEWAY_TOML.format(state=tmp_path / "state"))
    (device,) = load_config(toml).devices
    record = tmp_path / "learnt_tags.json"
    before = LearntTags(record, [device])
    before.note("flats", [Reading("flats", "flat2.volume", 1, 12.5, unit="m3")])
    before.save(before.snapshot())

    raw = tomllib.loads(toml.read_text())["devices"][0]
    later = _LaterWmbusConfig.model_validate(raw)

    assert [(t.name, t.unit) for t in LearntTags(record, [later]).of("flats")] == [("flat2.volume", "m3")]
    removed = _LaterWmbusConfig.model_validate({**raw, "meters": [{"name": "flat4", "id": "30000004"}]})
    assert LearntTags(record, [removed]).of("flats") == []  # a changed config still starts afresh
