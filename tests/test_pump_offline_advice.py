"""What `edge-agent models score pump --csv` and `models calibrate pump` tell an engineer about
their calibration: the coverage warning and its advice, a file that is no text, a day's span."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from water_edge.agent.cli import main
from water_edge.models.pump.store import NS, FeatureHistory, pump_dir
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

BIN = Path(sys.executable).parent
ADVICE = re.compile(
    r"--calibrate-rows (\d+) would cover that range \(flow and speed only: the other signals are not "
    r"checked\) by taking data rows ([\d,]+)\.\.([\d,]+) \((\S+) to (\S+)\) into the calibration: only if "
    r"those were normal duty"
)


@pytest.fixture(scope="module")
def hour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edge-sim dataset pump --hours 1 --seed 1 --fault outlet_valve`: a fault-free hour whose
    demand falls (pump_normal.csv) and an outlet valve closing, healthy for its first 1,200 rows
    (pump_outlet_valve.csv, labels beside it)."""
    out = tmp_path_factory.mktemp("pump")
    argv = ["dataset", "pump", "--out", str(out), "--hours", "1", "--seed", "1", "--fault", "outlet_valve"]
    done = subprocess.run(
        [str(BIN / "edge-sim"), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out


def score(capsys: pytest.CaptureFixture[str], path: Path, rows: int) -> tuple[int, str]:
    code = main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", str(rows)])
    return code, capsys.readouterr().err


def coverage_warning(err: str) -> str:
    lines = [line for line in err.splitlines() if "did not cover" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_on_a_valve_closure_the_warning_does_not_dismiss_the_fault_nor_hide_what_its_advice_takes_in(
    hour: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The flow drop to 38 m3/h is the fault. The warning said marks there mean "'unlike the
    # calibration', not a fault" and "--calibrate-rows 2399 would cover this file": followed, the
    # closure is calibrated in and nothing is marked.
    valve = hour / "pump_outlet_valve.csv"
    code, err = score(capsys, valve, 1199)
    assert code == 0, err
    warning = coverage_warning(err)
    assert "not a fault" not in warning
    assert "or the fault itself (a closing valve or a leak on the discharge moves flow or speed)" in warning
    advice = ADVICE.search(warning)
    assert advice, warning
    rows = int(advice.group(1))
    # The rows the advice takes in are named by number and by time, as in the file.
    with valve.open() as fh:
        stamps = [r["timestamp"] for r in csv.DictReader(fh)]
    assert advice.group(2, 3) == ("1,200", f"{rows:,}")
    assert advice.group(4, 5) == (stamps[1199], stamps[rows - 1])
    # ... which is why it must say so: those rows hold the closure.
    with (hour / "pump_outlet_valve.labels.csv").open() as fh:
        labels = [r["label"] for r in csv.DictReader(fh)]
    assert labels[1199:rows].count("outlet_valve") > 0.5 * (rows - 1199)


@pytest.mark.parametrize("given", [400, 450, 1200, 1234])
def test_the_suggested_calibration_is_the_files_whatever_count_was_given(
    hour: Path, capsys: pytest.CaptureFixture[str], given: int
) -> None:
    # The search started at the count given plus a step: 400 suggested 2600, 450 2650, 1234 2634.
    code, err = score(capsys, hour / "pump_normal.csv", given)
    assert code == 0, err
    advice = ADVICE.search(coverage_warning(err))
    assert advice, err
    assert int(advice.group(1)) == 2600
    assert advice.group(2) == f"{given + 1:,}"


def test_a_binary_file_is_said_to_be_no_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # It was "no numeric signal column found"; `score flow-leak` says "not a text file (...)".
    path = tmp_path / "normal.npy"
    np.save(path, np.random.default_rng(0).normal(size=(500, 136)))
    code, err = score(capsys, path, 400)
    assert code == 2
    assert err.strip().splitlines() == [f"edge-agent models: {path}: not a text file (invalid start byte)"]


def test_a_text_export_with_a_legacy_encoded_unit_is_still_scored(
    hour: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Windows-1252 "m³/h" in a header is not UTF-8 but is text: read, not refused.
    lines = (hour / "pump_normal.csv").read_text().splitlines()
    header = lines[0].replace("flow", "flow m\xb3/h")
    path = tmp_path / "legacy.csv"
    path.write_bytes("\n".join([header, *lines[1:]]).encode("cp1252") + b"\n")
    code = main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", "2600"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(out.out.splitlines()) == len(lines)


# -- models calibrate pump: the span of a day ---------------------------------------------------


DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def _gateway(tmp_path: Path, stamps: list[datetime]) -> Path:
    """A config with pump P1 sampled every minute, and its history holding a simulated pump at
    `stamps`."""
    signals = "\n".join(f'{r} = "plc1/p1_{r}"' for r in SIGNALS)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{tmp_path}"\n\n[[models.pump]]\nname = "P1"\nsample_interval_s = 60\n'
        f"[models.pump.signals]\n{signals}\n"
    )
    x, _ = simulate(Scenario(seed=7, hours=0.5))
    with FeatureHistory(pump_dir(tmp_path, "P1") / "history.sqlite", list(SIGNALS), 14.0) as history:
        history.append([(int(t.timestamp()) * NS, x[i]) for i, t in enumerate(stamps)])
    return config


def calibrate(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    argv = ["models", "calibrate", "pump", "--pump", "P1", "-c", str(config)]
    code = main([*argv, "--from", "2024-01-01T00:00Z", "--to", "2024-01-02T00:00Z"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.err


def test_a_whole_day_of_rows_is_a_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Rows stamped at the end of each minute, 00:01 to 00:00: a day. It warned "the calibration
    # covers 24.0 h: ... needs a day of normal duty".
    day = [DAY0 + timedelta(minutes=m) for m in range(1, 1441)]
    assert "needs a day" not in calibrate(tmp_path, _gateway(tmp_path, day), capsys)


def test_a_span_short_of_a_day_is_never_said_as_a_day(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One row fewer: a minute short, said as such (it read "covers 24.0 h").
    day = [DAY0 + timedelta(minutes=m) for m in range(2, 1441)]
    err = calibrate(tmp_path, _gateway(tmp_path, day), capsys)
    assert "the calibration covers 23 h 59 min: a pump that follows daily demand needs a day" in err
