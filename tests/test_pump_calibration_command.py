"""The `pump_calibration` command's target recalibrates a pump from its own feature history."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from water_edge.agent.assembly import pump_calibrator
from water_edge.agent.config import load_config
from water_edge.agent.remote.result import CommandFailedError
from water_edge.models.pump.store import FeatureHistory

SIGNALS = ["flow", "motor_current", "discharge_pressure", "speed"]


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""schema_version = 1
[gateway]
site = "s"
id = "g"
state_dir = "{tmp_path / "state"}"
[uplink]
host = "127.0.0.1"
[[models.pump]]
name = "pump1"
  [models.pump.signals]
  flow = "p1_flow"
  motor_current = "p1_current"
  discharge_pressure = "p1_pressure"
  speed = "p1_speed"
[[devices]]
name = "plc"
kind = "fake"
  [[devices.tags]]
  name = "p1_flow"
""")
    return path


async def test_calibration_command_writes_new_versions_from_history(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    calibrate = pump_calibrator(config)
    assert calibrate is not None
    with pytest.raises(CommandFailedError, match="no feature history"):
        await calibrate("pump1", {})

    rng = np.random.default_rng(3)
    start = time.time_ns() - 2000 * 10**9
    history = FeatureHistory.for_pump(config.gateway.state_dir, "pump1", SIGNALS, 14.0)
    base = np.array([120.0, 30.0, 4.5, 1450.0])
    history.append([(start + i * 10**9, base * (1 + 0.01 * rng.standard_normal(4))) for i in range(1500)])
    history.close()

    first = await calibrate("pump1", {})
    second = await calibrate("pump1", {"from": str((start + 500 * 10**9) / 1e9)})
    assert (first["version"], second["version"]) == (1, 2)
    assert first["rows"] == 1500
    assert 900 <= second["rows"] <= 1001
    assert first["threshold"] > 0
    with pytest.raises(CommandFailedError, match="no pump 'pump9'"):
        await calibrate("pump9", {})
    with pytest.raises(CommandFailedError, match="not a time"):
        await calibrate("pump1", {"from": "yesterday-ish"})
