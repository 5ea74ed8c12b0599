"""`edge-agent models score pump --label COL`: an engineer's labelled history compared row by row
with what the detector marks, as a test-rig benchmark scores it (firmware-sim's `fwsim.rig` runs,
written the way SKAB's files are: `;`, a datetime first, the label columns last)."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from water_edge.agent.cli import main
from water_edge.models.pump.labelled import as_labels, point_scores
from water_edge.sim.rig import RIG_SIGNALS, simulate_run

ROWS, CALIB = 1150, 400


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["models", "score", "pump", *argv])
    return code, out.getvalue(), err.getvalue()


def skab_like(path: Path, x: npt.NDArray[np.float64], labels: npt.NDArray[np.int8]) -> Path:
    """Signals, then `anomaly` (0/1) and `changepoint` (1 where an anomaly begins)."""
    changepoint = np.diff(labels, prepend=0) == 1
    lines = [";".join(["datetime", *RIG_SIGNALS, "anomaly", "changepoint"])]
    for i, row in enumerate(x):
        stamp = f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d}" if i < 3600 else str(i)
        cells = [f"{v:.5f}" for v in row]
        lines.append(";".join([stamp, *cells, str(int(labels[i])), str(int(changepoint[i]))]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, npt.NDArray[np.int8]]:
    x, labels, _ = simulate_run(4801, ROWS, "outlet_valve", onset_s=700.0, ramp_s=20.0, duration_s=300.0)
    return skab_like(tmp_path_factory.mktemp("label") / "run.csv", x, labels), labels


def figures(err: str) -> dict[str, float]:
    pairs = re.findall(r"(F1|precision|recall) (\d\.\d+)|false alarms ([\d.]+) %|missed ([\d.]+) %", err)
    out: dict[str, float] = {}
    for name, value, far, mar in pairs:
        if name:
            out[name] = float(value)
        elif far:
            out["far"] = float(far)
        else:
            out["mar"] = float(mar)
    return out


def test_a_labelled_run_is_compared_row_by_row_with_what_the_detector_marked(
    labelled_run: tuple[Path, npt.NDArray[np.int8]],
) -> None:
    path, labels = labelled_run
    code, out, err = cli("--csv", str(path), "--calibrate-rows", str(CALIB), "--label", "anomaly")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == ROWS  # every data row gets its output row, the label column is not echoed
    marked = np.array([int(r["anomaly"]) for r in rows])[CALIB:]
    truth = labels[CALIB:].astype(bool)
    hits = int((marked.astype(bool) & truth).sum())
    assert hits > 0, err  # the valve closing is found: the comparison below compares something
    precision, recall = hits / marked.sum(), hits / truth.sum()
    got = figures(err)
    assert got["F1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=5e-4)
    assert got["precision"] == pytest.approx(precision, abs=5e-4)
    assert got["recall"] == pytest.approx(recall, abs=5e-4)
    assert got["far"] == pytest.approx(100 * marked[~truth].mean(), abs=0.05)
    assert got["mar"] == pytest.approx(100 * (1 - recall), abs=0.05)
    assert f"{ROWS - CALIB:,} labelled rows, {int(truth.sum())} of them anomalous" in err
    first = int(np.flatnonzero(marked.astype(bool) & truth)[0]) - int(np.flatnonzero(truth)[0])
    assert f"anomalous episodes: 1 of 1 found; median delay {first} rows" in err
    # neither label column is read as a signal: the scores are those of the file without them
    bare = path.with_name("bare.csv")
    lines = path.read_text().splitlines()
    bare.write_text("\n".join(";".join(line.split(";")[:-2]) for line in lines) + "\n")
    code, bare_out, bare_err = cli("--csv", str(bare), "--calibrate-rows", str(CALIB))
    assert code == 0, bare_err
    assert bare_out == out
    assert "'anomaly'" not in err


def test_a_missing_or_textual_label_column_is_a_clear_error(
    labelled_run: tuple[Path, npt.NDArray[np.int8]], tmp_path: Path
) -> None:
    path, _ = labelled_run
    code, out, err = cli("--csv", str(path), "--calibrate-rows", str(CALIB), "--label", "Anomalies")
    assert code == 2
    assert out == ""
    assert "--label 'Anomalies': no numeric column of that name" in err
    assert "accelerometer_1" in err  # says what there is
    text = path.read_text().splitlines()
    worded = tmp_path / "worded.csv"
    worded.write_text("\n".join([text[0]] + [line.rsplit(";", 2)[0] + ";no;0" for line in text[1:]]) + "\n")
    code, _, err = cli("--csv", str(worded), "--calibrate-rows", str(CALIB), "--label", "anomaly")
    assert code == 2
    assert "--label 'anomaly': the column holds text" in err
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join([text[0].replace("anomaly;changepoint", "Anomaly;ANOMALY"), *text[1:]]) + "\n")
    code, _, err = cli("--csv", str(twice), "--calibrate-rows", str(CALIB), "--label", "anomaly")
    assert code == 2
    assert "--label 'anomaly' matches 2 columns but for case: give the exact name" in err
    code, _, err = cli("--csv", str(twice), "--calibrate-rows", str(CALIB), "--label", "ANOMALY")
    assert code == 0, err  # the exact name picks one
    code, _, err = cli("--pump", "P1", "--label", "anomaly")
    assert code == 2
    assert "give either --csv with --calibrate-rows/--calibrate-until (and --label), or --pump" in err


def test_labels_in_the_calibration_rows_are_warned_about(
    labelled_run: tuple[Path, npt.NDArray[np.int8]], tmp_path: Path
) -> None:
    path, _ = labelled_run
    lines = path.read_text().splitlines()
    lines[101] = lines[101].rsplit(";", 2)[0] + ";1;1"  # data row 100 labelled anomalous
    early = tmp_path / "early.csv"
    early.write_text("\n".join(lines) + "\n")
    code, _, err = cli("--csv", str(early), "--calibrate-rows", str(CALIB), "--label", "anomaly")
    assert code == 0, err
    assert "warning: --label marks 1 of the 400 calibration rows anomalous" in err


def test_point_scores_count_hits_false_alarms_misses_and_episodes_leaving_unknown_rows_out() -> None:
    nan = math.nan
    labels = as_labels(np.array([0, 0, 1, 1, 2, 0, nan, 1, 1, 0, 0, 1]))
    alarm = np.array([0, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1])
    s = point_scores(alarm, labels)
    assert (s.rows, s.anomalous, s.marked) == (11, 6, 4)  # the unknown row 6 is left out
    assert (s.hits, s.false_alarms, s.misses) == (3, 1, 3)
    assert (s.episodes, s.found, s.delays) == (3, 2, (1, 0))  # rows 2-4, 7-8 and 11
    assert s.precision == pytest.approx(3 / 4)
    assert s.recall == pytest.approx(3 / 6)
    assert s.f1 == pytest.approx(0.6)
    assert s.false_alarm_rate == pytest.approx(1 / 5)
    assert s.missed_rate == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="3 alarm rows against 2 labels"):
        point_scores(np.zeros(3), np.zeros(2))
