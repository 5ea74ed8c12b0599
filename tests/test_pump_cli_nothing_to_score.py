"""`edge-agent models score pump --csv`: files and options that leave nothing to score or compare
say so — a units row with no data under it, a `--calibrate-until` past the file's end, a `--label`
column that holds a signal, figures of no rows — instead of a wrong reason or a 0 that reads as
measured (found by a user walkthrough)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np

from water_edge.agent.cli import main
from water_edge.models.pump.labelled import point_scores

ROWS, CALIB = 600, 300


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["models", "score", "pump", *argv])
    return code, out.getvalue(), err.getvalue()


def steady_pump(path: Path, labels: list[int] | None = None) -> Path:
    """A pump at one operating point, a row a second from 06:00 (UTC), with a 0/1 label column."""
    rng = np.random.default_rng(7)
    lines = ["time,flow,pressure,current" + (",anomaly" if labels is not None else "")]
    for i in range(ROWS):
        signals = rng.normal([50.0, 3.0, 10.0], 0.1)
        cells = [f"2026-03-04T06:{i // 60:02d}:{i % 60:02d}Z", *(f"{v:.4f}" for v in signals)]
        lines.append(",".join(cells + ([str(labels[i])] if labels is not None else [])))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_header_and_a_units_row_without_data_rows_says_it_has_no_data_rows(tmp_path: Path) -> None:
    path = tmp_path / "units.csv"
    path.write_text("time;flow;pressure\n;m3/h;bar\n")
    code, out, err = cli("--csv", str(path), "--calibrate-rows", "10")
    assert (code, out) == (2, "")
    assert err.startswith(f"edge-agent models: {path}: the file has a header but no data rows")
    assert "numeric" not in err  # it was "no numeric signal column found"


def test_calibrate_until_past_the_last_row_is_an_error_naming_the_last_timestamp(tmp_path: Path) -> None:
    path = steady_pump(tmp_path / "p.csv")
    code, out, err = cli("--csv", str(path), "--calibrate-until", "2030-01-01")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert "--calibrate-until 2030-01-01 leaves no row to score" in err
    assert f"the last row of {path} is stamped '2026-03-04T06:09:59Z'" in err
    code, out, err = cli("--csv", str(path), "--calibrate-until", "2026-03-04T06:09:59Z")
    assert code == 0, err  # the last row's own time leaves that row to score
    assert "0 of 1 rows after the 599 calibration rows" in err


def test_calibrate_rows_of_every_row_is_an_error_as_more_rows_are(tmp_path: Path) -> None:
    path = steady_pump(tmp_path / "p.csv")
    code, out, err = cli("--csv", str(path), "--calibrate-rows", str(ROWS))
    assert (code, out) == (2, "")
    assert f"--calibrate-rows {ROWS} is every data row of {path}: no row is left to score" in err


def test_a_label_column_of_other_numbers_than_0_and_1_is_refused_naming_it_and_a_value(
    tmp_path: Path,
) -> None:
    path = steady_pump(tmp_path / "p.csv")
    code, out, err = cli("--csv", str(path), "--calibrate-rows", str(CALIB), "--label", "flow")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    first = path.read_text().splitlines()[1].split(",")[1]
    assert f"column 'flow' given to --label 'flow' holds {ROWS} value(s) other than 0 and 1" in err
    assert f"(first: data row 1, {float(first):g})" in err
    assert "labels are 1 (anomalous) or 0 (normal), empty where unknown" in err


def test_labels_of_0_1_and_empty_are_taken(tmp_path: Path) -> None:
    labels = [0] * CALIB + [1] * (ROWS - CALIB)
    path = steady_pump(tmp_path / "p.csv", labels)
    lines = path.read_text().splitlines()
    lines[CALIB + 5] = lines[CALIB + 5].rsplit(",", 1)[0] + ","  # unknown
    path.write_text("\n".join(lines) + "\n")
    code, _, err = cli("--csv", str(path), "--calibrate-rows", str(CALIB), "--label", "anomaly")
    assert code == 0, err
    assert f"{ROWS - CALIB - 1} labelled rows, {ROWS - CALIB - 1} of them anomalous" in err


def test_figures_of_no_rows_are_na_with_the_reason_not_zero(tmp_path: Path) -> None:
    # every scored row labelled anomalous, and a steady pump: nothing marked, no normal rows
    path = steady_pump(tmp_path / "p.csv", [0] * CALIB + [1] * (ROWS - CALIB))
    code, _, err = cli("--csv", str(path), "--calibrate-rows", str(CALIB), "--label", "anomaly")
    assert code == 0, err
    assert "; 0 marked" in err
    assert "precision n/a (nothing marked)" in err
    assert "false alarms n/a (no normal rows)" in err
    assert "F1 0.000" in err  # every anomalous row missed: measured, 0
    assert "recall 0.000" in err
    assert "missed 100.0 % of anomalous rows" in err


def test_without_anomalous_rows_recall_missed_and_f1_are_na() -> None:
    line = point_scores([1, 0, 0], [0, 0, 0]).lines()[1]
    assert line == (
        "point-wise: F1 n/a (no anomalous rows), precision 0.000, recall n/a (no anomalous rows), "
        "false alarms 33.3 % of normal rows, missed n/a (no anomalous rows)"
    )
    measured = point_scores([1, 1, 0, 0], [0, 1, 0, 1]).lines()[1]
    assert measured == (
        "point-wise: F1 0.500, precision 0.500, recall 0.500, false alarms 50.0 % of normal rows, "
        "missed 50.0 % of anomalous rows"
    )
    all_anomalous = point_scores([1, 0], [1, math.nan]).lines()[1]  # the unknown row left out
    assert all_anomalous.startswith("point-wise: F1 1.000, precision 1.000, recall 1.000, ")
    assert "false alarms n/a (no normal rows)" in all_anomalous
