"""The `pump_calibration` command's target, the pump factory's `Calibratable` capability,
recalibrates a pump from its own feature history."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.testing import write_agent_config
from water_edge.agent.assembly import build_processors, calibration_targets
from water_edge.agent.config import load_config
from water_edge.core.processor import Calibratable, CalibrationFailedError
from water_edge.models.pump.store import FeatureHistory

SIGNALS = ["flow", "motor_current", "discharge_pressure", "speed"]


def config_file(tmp_path: Path) -> Path:
    signals = {"flow": "p1_flow", "motor_current": "p1_current", "discharge_pressure": "p1_pressure"}
    return write_agent_config(
        tmp_path,
        models={"pump": [{"name": "pump1", "signals": {**signals, "speed": "p1_speed"}}]},
        devices=[{"name": "plc", "kind": "fake", "tags": [{"name": "p1_flow"}]}],
    )


async def test_calibration_command_writes_new_versions_from_history(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    analytics = build_processors(config, {})
    targets = calibration_targets([*analytics.factories, *analytics.processors])
    assert set(targets) == {"pump_calibration"}
    target = targets["pump_calibration"]
    assert isinstance(target, Calibratable)
    assert target.calibration_target == "pump"
    with pytest.raises(CalibrationFailedError, match="no feature history"):
        await target.calibrate("pump1", {})

    rng = np.random.default_rng(3)
    start = time.time_ns() - 2000 * 10**9
    history = FeatureHistory.for_pump(config.gateway.state_dir, "pump1", SIGNALS, 14.0)
    base = np.array([120.0, 30.0, 4.5, 1450.0])
    history.append([(start + i * 10**9, base * (1 + 0.01 * rng.standard_normal(4))) for i in range(1500)])
    history.close()

    first = await target.calibrate("pump1", {})
    second = await target.calibrate("pump1", {"from": str((start + 500 * 10**9) / 1e9)})
    assert (first["version"], second["version"]) == (1, 2)
    assert first["rows"] == 1500
    assert 900 <= second["rows"] <= 1001
    assert first["threshold"] > 0
    with pytest.raises(CalibrationFailedError, match="no pump 'pump9'"):
        await target.calibrate("pump9", {})
    with pytest.raises(CalibrationFailedError, match="not a time"):
        await target.calibrate("pump1", {"from": "yesterday-ish"})
