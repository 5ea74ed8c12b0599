"""`edge-agent models score pump --csv`: the output contract engineers script against."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from water_edge.agent.cli import main
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

CALIB = 600


@pytest.fixture(scope="module")
def sim() -> tuple[np.ndarray, np.ndarray]:
    """20 min of a simulated pump, a held-out fault (imbalance) from minute 13."""
    return simulate(
        Scenario(seed=5, hours=1 / 3, fault="imbalance", onset_s=800, duration_s=400, ramp_s=30, severity=0.4)
    )


def write(path: Path, header: list[str], rows: list[list[str]], sep: str) -> Path:
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], path: Path, calib: int) -> tuple[int, str, str]:
    code = main(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", str(calib)])
    out = capsys.readouterr()
    return code, out.out, out.err


def timestamps(n: int) -> list[str]:
    return [f"2024-03-01 10:{i // 60:02d}:{i % 60:02d}" for i in range(n)]


def test_one_output_row_per_input_row_in_order_and_the_fault_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = sim
    ts = timestamps(len(x))
    rows = [[t] + ["" if np.isnan(v) else f"{v:.4f}" for v in row] for t, row in zip(ts, x, strict=True)]
    code, out, err = run(capsys, write(tmp_path / "p.csv", ["time", *SIGNALS], rows, ","), CALIB)
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["timestamp", "score", "anomaly"]
    assert [r[0] for r in table[1:]] == ts
    anomaly = np.array([int(r[2]) for r in table[1:]])
    assert set(anomaly) <= {0, 1}
    assert not anomaly[:CALIB].any()
    assert all(float(r[1]) >= 0 for r in table[1:])
    assert anomaly[labels == 1].mean() > 0.5  # the imbalance is flagged for most of its duration
    assert anomaly[CALIB:][labels[CALIB:] == 0].mean() < 0.2


def test_semicolons_decimal_commas_text_blank_and_constant_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = sim
    n = 700
    rows = []
    for i, t in enumerate(timestamps(n)):
        cells = [f"{v:.3f}".replace(".", ",") for v in x[i, :4]]
        if i % 50 == 7:
            cells[1] = ""  # blank cell
        if i % 90 == 3:
            cells[2] = "NaN"
        rows.append([t, *cells, "running", "1,0"])
    path = write(tmp_path / "semi.csv", ["ts", "A", "B", "C", "D", "state", "const"], rows, ";")
    code, out, err = run(capsys, path, 300)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == n + 1
    assert "'state'" in err
    assert "'const'" in err
    assert all(line.endswith(",0") for line in lines[1:301])


@pytest.mark.parametrize(
    ("content", "calib", "message"),
    [
        ("", 10, "empty"),
        ("time,a\n", 10, "no data rows"),
        ("time,a\n" + "".join(f"t{i},x\n" for i in range(30)), 10, "no numeric"),
        ("time,a\n" + "".join(f"t{i},{i % 7}\n" for i in range(30)), 31, "exceeds"),
        ("time,a\n" + "".join(f"t{i},{i % 7}\n" for i in range(30)), 3, "at least"),
        ("time,a\n" + "".join(f"t{i},5\n" for i in range(30)), 20, "constant"),
        ("just one column\n1\n2\n", 1, "separator"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, calib: int, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, out, err = run(capsys, path, calib)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert message in err


def test_a_name_given_to_two_columns_keeps_both_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    # Both columns were scored before too, but under one name: a warning or an explanation naming
    # 'vibration_x' could mean either. Now the second is 'vibration_x (2)', and the file says so.
    x, _ = sim
    rows = [
        [t] + ["" if np.isnan(v) else f"{v:.4f}" for v in row]
        for t, row in zip(timestamps(len(x)), x, strict=True)
    ]
    twice = ["time", *SIGNALS]
    twice[SIGNALS.index("vibration_y") + 1] = "vibration_x"
    code, out, err = run(capsys, write(tmp_path / "twice.csv", twice, rows, ","), CALIB)
    assert code == 0, err
    assert "column 'vibration_x' appears 2 times: read as 'vibration_x', 'vibration_x (2)'" in err
    renamed = ["time", *SIGNALS]
    renamed[SIGNALS.index("vibration_y") + 1] = "vibration_x (2)"
    want, want_out, _ = run(capsys, write(tmp_path / "renamed.csv", renamed, rows, ","), CALIB)
    assert want == 0
    assert out == want_out


def test_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, tmp_path / "nope.csv", 10)
    assert code == 2
    assert out == ""
    assert "cannot read" in err


def test_a_newest_first_export_is_refused_not_calibrated_on_its_newest_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    # Read as it came, its first rows (the fault, the newest) calibrated and the normal hour was
    # marked anomalous; and the detector ran backwards in time.
    x, _ = sim
    rows = [[t, *(f"{v:.4f}" for v in row)] for t, row in zip(timestamps(len(x)), x, strict=True)]
    path = write(tmp_path / "desc.csv", ["time", *SIGNALS], rows[::-1], ",")
    code, out, err = run(capsys, path, CALIB)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "the rows run newest first (2024-03-01 10:19:59 ... 2024-03-01 10:00:00)" in err
    assert "sort the file oldest first" in err
    # the same export cut off in its last line (exported while the historian wrote): still refused
    cut = write(tmp_path / "cut.csv", ["time", *SIGNALS], [*rows[::-1], ["2024-03-0"]], ",")
    code, out, err = run(capsys, cut, CALIB)
    assert (code, out) == (2, "")
    assert "the rows run newest first (2024-03-01 10:19:59 ... 2024-03-01 10:00:00)" in err


def test_excels_unicode_text_export_scores_as_the_plain_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    # "Unicode text" is UTF-16 with a byte-order mark, tab-separated; read as UTF-8 it was
    # "no numeric signal column found".
    x, _ = sim
    rows = [[t, *(f"{v:.4f}" for v in row)] for t, row in zip(timestamps(len(x)), x, strict=True)]
    code, expected, err = run(capsys, write(tmp_path / "plain.csv", ["time", *SIGNALS], rows, ","), CALIB)
    assert code == 0, err
    unicode_text = tmp_path / "export.txt"
    unicode_text.write_text(
        "\n".join("\t".join(r) for r in [["time", *SIGNALS], *rows]) + "\n", encoding="utf-16"
    )
    assert unicode_text.read_bytes()[:2] == b"\xff\xfe"
    code, out, err = run(capsys, unicode_text, CALIB)
    assert code == 0, err
    assert out == expected


def test_few_rows_still_score_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = sim
    rows = [[t, *(f"{v:.3f}" for v in x[i, :3])] for i, t in enumerate(timestamps(14))]
    code, out, err = run(capsys, write(tmp_path / "few.csv", ["t", "a", "b", "c"], rows, ","), 12)
    assert code == 0, err
    assert len(out.splitlines()) == 15


def test_a_units_row_quoted_decimal_commas_and_digit_grouping_score_as_the_plain_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = sim
    x = x[:900, :4] * 1000.0  # values in the thousands, so grouping matters
    ts = timestamps(len(x))
    plain = [[t, *(f"{v:.2f}" for v in row)] for t, row in zip(ts, x, strict=True)]
    header = ["t", "a", "b", "c", "d"]
    code, expected, err = run(capsys, write(tmp_path / "plain.csv", header, plain, ","), 300)
    assert code == 0, err
    quoted = [[t, *(f'"{v:.2f}"'.replace(".", ",") for v in row)] for t, row in zip(ts, x, strict=True)]
    units = [["", "mm/s", "mm/s", "A", "bar"]]
    path = write(tmp_path / "quoted.csv", header, units + quoted, ",")
    code, out, err = run(capsys, path, 300)
    assert code == 0, err
    assert "under the header" in err
    assert out == expected  # the units row belongs to the header: neither data nor output
    grouped = [[t, *(f'"{v:,.2f}"' for v in row)] for t, row in zip(ts, x, strict=True)]
    code, out, err = run(capsys, write(tmp_path / "grouped.csv", header, grouped, ","), 300)
    assert code == 0, err
    assert out == expected


def test_an_error_code_for_three_rows_is_not_a_minute_of_alarm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = sim
    x = x.copy()
    x[700:703, 0] = -9999.0  # a transmitter's error code, well before the fault at row 800
    ts = timestamps(len(x))
    rows = [[t] + ["" if np.isnan(v) else f"{v:.4f}" for v in row] for t, row in zip(ts, x, strict=True)]
    code, out, err = run(capsys, write(tmp_path / "e.csv", ["time", *SIGNALS], rows, ","), CALIB)
    assert code == 0, err
    anomaly = np.array([int(r.split(",")[2]) for r in out.splitlines()[1:]])
    assert anomaly[690:790].sum() < 30  # the 15-row window sees it briefly; the 60-row one holds no alarm
    assert anomaly[labels == 1].mean() > 0.5  # and the real fault is still found


def test_a_float_max_sentinel_in_calibration_reads_as_missing_and_does_not_blind_the_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    # Some loggers write the largest double for "no value". Read as a number it overflowed every
    # square of the channel: its calibration spread became infinite and its faults invisible.
    x, labels = sim
    vibration = SIGNALS.index("vibration_x")

    def marked(sentinel: str) -> np.ndarray:
        stamps = timestamps(len(x))
        rows = [
            [t] + ["" if np.isnan(v) else f"{v:.4f}" for v in row] for t, row in zip(stamps, x, strict=True)
        ]
        rows[100][1 + vibration] = sentinel
        code, out, err = run(capsys, write(tmp_path / "s.csv", ["time", *SIGNALS], rows, ","), CALIB)
        assert code == 0, err
        assert "Warning" not in err
        return np.array([int(r.split(",")[2]) for r in out.splitlines()[1:]])

    assert np.array_equal(marked("1.7976931348623157e308"), marked(""))  # the same as a blank cell
    assert marked("1.7976931348623157e308")[labels == 1].mean() > 0.5


def _score(capsys: pytest.CaptureFixture[str], path: Path, *calibration: str) -> tuple[int, str, str]:
    code = main(["models", "score", "pump", "--csv", str(path), *calibration])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("stamp", "until"),
    [
        # ISO with an offset (a historian), until given in UTC
        (lambda i: f"2024-03-01T10:{i // 60:02d}:{i % 60:02d}+01:00", "2024-03-01T09:10:00Z"),
        # a US export: month first, 12-hour clock; until typed the same way
        (lambda i: f"03/01/2024 10:{i // 60:02d}:{i % 60:02d} AM", "03/01/2024 10:10:00 AM"),
        # a German export, until typed as ISO
        (lambda i: f"01.03.2024 10:{i // 60:02d}:{i % 60:02d}", "2024-03-01 10:10"),
    ],
)
def test_calibrate_until_a_time_is_calibrating_on_the_rows_before_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sim: tuple[np.ndarray, np.ndarray],
    stamp: Callable[[int], str],
    until: str,
) -> None:
    # "normal until 10:10" is what an engineer knows about a history, not a row count.
    x, _ = sim
    rows = [[stamp(i)] + [f"{v:.4f}" for v in row] for i, row in enumerate(np.nan_to_num(x))]
    path = write(tmp_path / "p.csv", ["time", *SIGNALS], rows, ";" if "." in stamp(0)[:6] else ",")
    code, by_time, err = _score(capsys, path, "--calibrate-until", until)
    assert code == 0, err
    assert "calibrating on the first 600 rows (stamped before" in err
    assert "of 600 rows after the 600 calibration rows marked anomalous" in err
    code, by_rows, _ = _score(capsys, path, "--calibrate-rows", "600")
    assert code == 0
    assert by_time == by_rows


def test_calibrate_until_refuses_what_it_cannot_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = sim
    ts = timestamps(len(x))
    rows = [[t] + [f"{v:.4f}" for v in row] for t, row in zip(ts, np.nan_to_num(x), strict=True)]
    path = write(tmp_path / "p.csv", ["time", *SIGNALS], rows, ",")
    code, _, err = _score(capsys, path, "--calibrate-until", "2024-03-01 10:00:05")
    assert code == 2
    assert "leaves 5 row(s) before it; calibration needs at least 10" in err
    code, _, err = _score(capsys, path, "--calibrate-until", "tomorrow")
    assert code == 2
    assert "--calibrate-until 'tomorrow' is not a timestamp" in err
    rows[3][0] = "n/a"  # a glitch in the column: taken where it stands
    code, _, err = _score(
        capsys,
        write(tmp_path / "q.csv", ["time", *SIGNALS], rows, ","),
        "--calibrate-until",
        "2024-03-01 10:10",
    )
    assert code == 0, err
    assert "calibrating on the first 600 rows (stamped before 2024-03-01 10:10)" in err
    rows[0][0] = "n/a"  # the first stamp: the column's format cannot be read
    code, _, err = _score(
        capsys,
        write(tmp_path / "r.csv", ["time", *SIGNALS], rows, ","),
        "--calibrate-until",
        "2024-03-01 10:10",
    )
    assert code == 2
    assert "data row 1: timestamp 'n/a' cannot be read" in err
    with pytest.raises(SystemExit):  # one or the other, not both
        main(
            [
                "models",
                "score",
                "pump",
                "--csv",
                str(path),
                "--calibrate-rows",
                "600",
                "--calibrate-until",
                "x",
            ]
        )


def test_a_file_or_a_pump_is_needed_and_not_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "score", "pump", "--calibrate-rows", "400"]) == 2
    assert (
        "give --csv FILE with --calibrate-rows N or --calibrate-until TIME, or --pump P"
        in capsys.readouterr().err
    )
    assert main(["models", "score", "pump", "--csv", "x.csv"]) == 2
    assert "give --csv FILE with" in capsys.readouterr().err
    assert main(["models", "score", "pump", "--csv", "x.csv", "--calibrate-rows", "400", "--pump", "P1"]) == 2
    assert "give either --csv" in capsys.readouterr().err
    config = tmp_path / "agent.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n\n[[models.pump]]\nname = "P1"\n'
                      '[models.pump.signals]\nflow = "plc/flow"\n')  # fmt: skip
    assert main(["models", "score", "pump", "--pump", "P2", "-c", str(config)]) == 2
    assert "no pump 'P2'" in capsys.readouterr().err
    assert main(["models", "score", "pump", "--pump", "P1", "-c", str(config)]) == 2
    assert "pump P1 has no calibration yet" in capsys.readouterr().err


@pytest.mark.parametrize("newline", ["\r\n", "\r"], ids=["windows", "classic-mac"])
def test_other_line_ends_a_bom_and_blank_lines_score_as_the_plain_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray], newline: str
) -> None:
    # The reader goes through the text a line at a time (a week at 1 s held as a list of lines,
    # and again as a copy, took 300 MB): what it sees must be what the plain file says.
    x, _ = sim
    rows = [[t, *(f"{v:.4f}" for v in row)] for t, row in zip(timestamps(len(x)), x, strict=True)]
    code, expected, err = run(capsys, write(tmp_path / "plain.csv", ["time", *SIGNALS], rows, ","), CALIB)
    assert code == 0, err
    lines = [",".join(r) for r in [["time", *SIGNALS], *rows]]
    lines[400:400] = ["", "  "]  # blank lines in the middle, and the file ends in two
    other = tmp_path / "other.csv"
    other.write_bytes(("\ufeff" + newline.join(lines) + newline * 2).encode("utf-8"))
    code, out, err = run(capsys, other, CALIB)
    assert code == 0, err
    assert out == expected


def test_an_exports_title_lines_before_the_header_are_skipped_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: tuple[np.ndarray, np.ndarray]
) -> None:
    """A historian's export that opens with its title, the station and the period asked for (and a
    blank line) scores as the table alone; before, the title was read as a header of one column."""
    x, _ = sim
    x = x[:900, :4]
    rows = [[t, *(f"{v:.4f}" for v in row)] for t, row in zip(timestamps(len(x)), x, strict=True)]
    header = ["time", "a", "b", "c", "d"]
    code, expected, err = run(capsys, write(tmp_path / "plain.csv", header, rows, ";"), 300)
    assert code == 0, err
    exported = tmp_path / "exported.csv"
    table = (tmp_path / "plain.csv").read_text()
    exported.write_text(
        "Historian export\nStation: North, pump 1\nPeriod: 2024-03-01 to 2024-03-02\n\n" + table
    )
    code, out, err = run(capsys, exported, 300)
    assert code == 0, err
    assert "skipping 3 line(s) before the header" in err
    assert out == expected
    # The same saved from a spreadsheet: every line padded to the table's width. Before, the
    # padded title was the header, the real header a "units" row, and the signals went unnamed.
    padded = tmp_path / "padded.csv"
    padded.write_text(
        "Historian export;;;;\nStation:;North, pump 1;;;\nPeriod:;2024-03-01;2024-03-02;;\n" + table
    )
    code, out, err = run(capsys, padded, 300)
    assert code == 0, err
    assert "skipping 3 line(s) before the header" in err
    assert "units" not in err
    assert out == expected
