"""`edge-agent models score pump --explain`: a marked row names the signals it stands on and which
way they moved, and the explanation changes no decision."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from water_edge.agent.cli import main
from water_edge.models.pump import detector, explain
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate
from water_edge.sim.rig import simulate_run

RIG_NAMES = ["Accel 1", "Accel 2", "Current", "Pressure", "Motor temp", "Fluid temp", "Voltage", "Flow"]


def write(path: Path, names: list[str], x: np.ndarray) -> Path:
    lines = [";".join(["datetime", *names])]
    for i, row in enumerate(x):
        cells = ["" if np.isnan(v) else f"{v:.5f}".replace(".", ",") for v in row]
        lines.append(";".join([f"2024-05-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}", *cells]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def score(
    capsys: pytest.CaptureFixture[str], path: Path, calib: int, *extra: str
) -> tuple[list[list[str]], str]:
    assert main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", str(calib), *extra]) == 0
    out = capsys.readouterr()
    return list(csv.reader(io.StringIO(out.out))), out.err


def named(text: str) -> dict[str, str]:
    return dict(part.rsplit(" ", 1) for part in text.split("; ")) if text else {}


def test_a_closing_outlet_valve_is_explained_by_the_signals_it_moved_and_which_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outlet valve closing at row 520 for 4 min on a rig (seed 424218): less flow, more discharge
    pressure, less motor current."""
    onset, end = 520, 760
    x, _, _ = simulate_run(424218, 1100, "outlet_valve", onset_s=onset, ramp_s=5, duration_s=end - onset)
    path = write(tmp_path / "rig.csv", RIG_NAMES, x)
    plain, _ = score(capsys, path, 400)
    table, err = score(capsys, path, 400, "--explain")

    assert table[0] == ["timestamp", "score", "anomaly", "signals"]
    assert [r[:3] for r in table] == plain  # the explanation changes no score and no mark
    rows = table[1:]
    assert all((r[3] != "") == (r[2] == "1") for r in rows)  # every marked row, and only those
    closure = [named(r[3]) for r in rows[onset + 30 : end] if r[2] == "1"]
    assert len(closure) > 0.9 * (end - onset - 30)
    physics = {"Flow": "below", "Pressure": "above", "Current": "below"}
    said = [(name, way) for row in closure for name, way in row.items() if name in physics]
    assert sum(1 for row in closure if set(row) & set(physics)) > 0.9 * len(closure)
    assert sum(way == physics[name] for name, way in said) > 0.95 * len(said)
    assert "signals behind the marked rows:" in err


def test_a_noisier_channel_is_called_noisier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 1.0, (1100, 4)) + np.arange(4) * 10.0
    x[700:, 2] = 20.0 + rng.normal(0.0, 6.0, 400)  # same level, six times the noise
    table, _ = score(capsys, write(tmp_path / "noisy.csv", ["a", "b", "c", "d"], x), 400, "--explain")
    marked = [named(r[3]) for r in table[1:] if r[2] == "1"]
    assert len(marked) > 300
    assert all("c" in row for row in marked)  # the noisy channel carries every marked row
    # mostly by its noise; where its 15-row mean strayed further (a symptom), by that
    assert sum(row["c"] == "noisier" for row in marked) > 0.6 * len(marked)
    assert not any(row["c"] == "steadier" for row in marked)


def test_the_gateway_detector_names_a_drifting_transmitter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An hour of calibration (the gateway's detector), then the discharge-pressure transmitter
    drifts up: the strongest signal named is that transmitter, above its relation to the others."""
    x, labels = simulate(
        Scenario(
            seed=7, hours=1.5, fault="sensor_drift", onset_s=4000, duration_s=1400, ramp_s=60, severity=0.3
        )
    )
    table, _ = score(capsys, write(tmp_path / "station.csv", list(SIGNALS), x), 3600, "--explain")
    rows = table[1:]
    drift = [r[3] for r, label in zip(rows, labels, strict=True) if label and r[2] == "1"]
    assert len(drift) > 0.8 * labels.sum()
    assert sum(text.startswith("discharge_pressure above") for text in drift) > 0.95 * len(drift)
    assert not any(r[3] for r in rows[:3600])


def test_the_summary_counts_each_signal_once_per_row_most_named_first() -> None:
    texts = ["", "Flow below; Pressure above", "Volume Flow RateRMS below", "Flow below", ""]
    assert explain.summary(texts) == "Flow 2, Pressure 1, Volume Flow RateRMS 1"


def test_a_long_file_explained_a_piece_and_a_block_at_a_time_says_what_the_whole_file_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A week at 1 s is explained from its marked rows only: the gateway detector scores again just
    the pieces that hold them, and both detectors word them a block at a time. Pieces of 500 rows
    and blocks of 7 (boundaries all through the marked stretches) must say what one piece says."""
    x, _ = simulate(
        Scenario(
            seed=7, hours=1.5, fault="sensor_drift", onset_s=4000, duration_s=1400, ramp_s=60, severity=0.3
        )
    )
    station = write(tmp_path / "station.csv", list(SIGNALS), x)
    rig_x, _, _ = simulate_run(424218, 1100, "outlet_valve", onset_s=520, ramp_s=5, duration_s=240)
    rig = write(tmp_path / "rig.csv", RIG_NAMES, rig_x)
    whole = [score(capsys, station, 3600, "--explain")[0], score(capsys, rig, 400, "--explain")[0]]
    monkeypatch.setattr(detector, "SCORE_CHUNK_ROWS", 500)
    monkeypatch.setattr(explain, "BLOCK_ROWS", 7)
    cut = [score(capsys, station, 3600, "--explain")[0], score(capsys, rig, 400, "--explain")[0]]
    for one, pieces in zip(whole, cut, strict=True):
        assert sum(r[2] == "1" for r in one[1:]) > 200
        assert [(r[2], r[3]) for r in pieces] == [(r[2], r[3]) for r in one]
