"""`edge-agent models score pump --csv` on exports as SCADA systems and spreadsheets write them: the
table around its title lines and units rows, its separator and its numbers read as the plain file's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import CliRun, edge_agent
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

CALIB = 600
NAMES = ["flow", "motor_current", "vibration_x", "speed"]
COLUMNS = [SIGNALS.index(n) for n in NAMES]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """20 min of a simulated pump (an imbalance from minute 13, so `--explain` has rows to name),
    its flow scaled to cross 1000 and a speed in the thousands: digit grouping shows in both."""
    x, _ = simulate(
        Scenario(seed=5, hours=1 / 3, fault="imbalance", onset_s=800, duration_s=400, ramp_s=30, severity=0.4)
    )
    out = x[:, COLUMNS].copy()
    out[:, 0] *= 9.0  # 927..1061 m3/h
    return out


def stamps(n: int, fmt: Callable[[int, int], str]) -> list[str]:
    return [fmt(i // 60, i % 60) for i in range(n)]


def german(m: int, s: int) -> str:
    return f"01.03.2024 10:{m:02d}:{s:02d}"


def cells(row: np.ndarray, fmt: Callable[[float], str]) -> list[str]:
    return ["" if np.isnan(v) else fmt(v) for v in row]


def table(ts: list[str], x: np.ndarray, fmt: Callable[[float], str]) -> list[list[str]]:
    return [[t, *cells(row, fmt)] for t, row in zip(ts, x, strict=True)]


def write(path: Path, lines: list[str], encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


def score(path: Path, *options: str) -> CliRun:
    return edge_agent("models", "score", "pump", "--csv", str(path), "--calibrate-rows", str(CALIB), *options)


def plain(tmp_path: Path, ts: list[str], x: np.ndarray, *options: str) -> CliRun:
    """What the plain comma file of the same readings prints."""
    rows = table(ts, x, lambda v: f"{v:.3f}")
    want = score(write(tmp_path / "plain.csv", [",".join(r) for r in [["time", *NAMES], *rows]]), *options)
    assert want.returncode == 0, want.stderr
    return want


def test_excels_german_unicode_text_with_title_lines_scores_as_the_plain_file(
    tmp_path: Path, x: np.ndarray
) -> None:
    """Tab-separated with decimal commas: a data line has as many commas as tabs, and the separator
    counted on a line was ',', so no data row was found, the title became the header, and the file
    was refused ("the header has no ',', ';' or tab separator")."""
    ts = stamps(len(x), german)
    x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)  # a blank cell leaves fewer commas than tabs
    want = plain(tmp_path, ts, x)
    rows = table(ts, x, lambda v: f"{v:.3f}".replace(".", ","))
    lines = ["Messstelle Pumpwerk Nord", "Zeitraum 01.03.2024 - 01.03.2024", "Export: Kurzzeitverlauf", ""]
    lines += ["\t".join(r) for r in [["time", *NAMES], *rows]]
    export = write(tmp_path / "export.txt", lines, "utf-16", "\r\n")
    got = score(export)
    assert got.returncode == 0, got.stderr
    assert "skipping 3 line(s) before the header" in got.stderr
    assert got.stdout == want.stdout


def test_us_digit_grouping_in_a_tab_file_reads_as_meant(tmp_path: Path, x: np.ndarray) -> None:
    """Excel's "Unicode text" in a US locale writes '1,001.5': every comma of a tab file was read as
    a decimal comma, so a flow crossing 1000 m3/h dropped to 1.0015, and a speed of '2,545' (whose
    comma alone cannot tell) to 2.545. The cells with both marks say the comma is grouping; the
    speed column, none of whose cells tells, takes the file's decimal point."""
    ts = stamps(len(x), lambda m, s: f"3/1/2024 10:{m:02d}:{s:02d} AM")
    formats = [lambda v: f"{v:.1f}", lambda v: f"{v:.1f}", lambda v: f"{v:.2f}", lambda v: f"{v:.0f}"]
    grouped = [lambda v: f"{v:,.1f}", lambda v: f"{v:,.1f}", lambda v: f"{v:,.2f}", lambda v: f"{v:,.0f}"]

    def lines(fmts: list[Callable[[float], str]], sep: str) -> list[str]:
        rows = [
            [t, *("" if np.isnan(v) else f(v) for f, v in zip(fmts, r, strict=True))]
            for t, r in zip(ts, x, strict=True)
        ]
        return [sep.join(r) for r in [["time", *NAMES], *rows]]

    want = score(write(tmp_path / "plain.csv", lines(formats, ",")), "--explain")
    assert want.returncode == 0, want.stderr
    export = write(tmp_path / "us.txt", lines(grouped, "\t"), "utf-16", "\r\n")
    written = export.read_text(encoding="utf-16")
    assert "\t1,0" in written  # a flow over 1000, grouped
    assert "\t2,5" in written  # a speed, grouped
    got = score(export, "--explain")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert got.stderr == want.stderr


def test_a_column_with_both_decimal_marks_reads_each_number_by_its_own_and_says_so(
    tmp_path: Path, x: np.ndarray
) -> None:
    """A German ';' file whose flow column was pasted into from a US sheet: '1.001,5' and '1,001.5'
    are both 1001.5 (the last mark is the decimal one); '1,001.5' was read as 1.0015."""
    ts = stamps(len(x), german)
    want = plain(tmp_path, ts, x)
    rows = table(ts, x, lambda v: f"{v:,.3f}".replace(",", " ").replace(".", ",").replace(" ", "."))
    for row, v in zip(rows[300:400], x[300:400, 0], strict=True):
        row[1] = "" if np.isnan(v) else f"{v:,.3f}"  # the pasted rows: US marks
    got = score(write(tmp_path / "mixed.csv", [";".join(r) for r in [["time", *NAMES], *rows]]))
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert "column 'flow' has decimal commas" in got.stderr
    assert "each number is read by its own mark" in got.stderr


@pytest.mark.parametrize("status", [["Err"], ["Offline", "Offline"]], ids=["one", "two"])
def test_leading_rows_of_status_text_are_missing_readings_not_a_units_row(
    tmp_path: Path, x: np.ndarray, status: list[str]
) -> None:
    """A logger that was offline when the export starts writes its status in every signal cell. Those
    rows were skipped as units under the header: one output row fewer per row, and the calibration
    window shifted by as many rows."""
    ts = stamps(len(x), lambda m, s: f"2024-03-01 10:{m:02d}:{s:02d}")
    blank = x.copy()
    blank[: len(status)] = np.nan
    want = plain(tmp_path, ts, blank)
    rows = table(ts, x, lambda v: f"{v:.3f}")
    for row, text in zip(rows, status, strict=False):
        row[1:] = [text] * len(NAMES)
    got = score(write(tmp_path / "status.csv", [",".join(r) for r in [["time", *NAMES], *rows]]))
    assert got.returncode == 0, got.stderr
    assert len(got.stdout.splitlines()) == len(x) + 1  # one output row per data row
    assert got.stdout == want.stdout
    assert "units" not in got.stderr
    assert (
        f"not numbers and are read as missing (first: data row 1, column 'flow': {status[0]!r})" in got.stderr
    )


TITLE = "Pumpwerk Nord;Pumpe 1;Export;von 01.03.2024;bis 01.03.2024"  # as wide as the table


@pytest.mark.parametrize(
    ("under", "unit_rows"),
    [
        ([], 0),
        ([";m3/h;A;mm/s;rpm"], 1),
        (["Einheit;m3/h;A;mm/s;1/min"], 1),
        (["Unit;m3/h;A;mm/s;rpm", "Tag;FT101;IT101;VT101;ST101"], 2),
    ],
    ids=["header", "units", "labelled-units", "units-and-tags"],
)
def test_a_title_line_as_wide_as_the_table_is_skipped_not_taken_for_the_header(
    tmp_path: Path, x: np.ndarray, under: list[str], unit_rows: int
) -> None:
    """A title with a cell per column was the first line with every cell filled, so it was read as
    the header, the real header skipped as a units row, and `--explain` named 'von 01.03.2024'. The
    header is the line right above the data, past the rows that describe its columns."""
    ts = stamps(len(x), german)
    want = plain(tmp_path, ts, x, "--explain")
    rows = table(ts, x, lambda v: f"{v:.3f}".replace(".", ","))
    lines = [TITLE, ";".join(["time", *NAMES]), *under, *(";".join(r) for r in rows)]
    got = score(write(tmp_path / "titled.csv", lines, newline="\r\n"), "--explain")
    assert got.returncode == 0, got.stderr
    assert "skipping 1 line(s) before the header" in got.stderr
    assert got.stdout == want.stdout
    assert "vibration_x" in got.stdout  # the explanations name the header's columns
    assert "von 01.03.2024" not in got.stdout + got.stderr
    if unit_rows:
        assert f"skipping {unit_rows} row(s) under the header" in got.stderr
    else:
        assert "under the header" not in got.stderr
