"""Bad files and options given to the offline commands (`models score|calibrate|locate`, `decode`,
`buffer stats`): one line on stderr naming the file and what is wrong, a non-zero exit, never a
traceback or output made of nonsense."""

from __future__ import annotations

import json
import sqlite3
import wave
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.cli import CliRun, edge_agent
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading


def one_line_error(run: CliRun, code: int = 2) -> str:
    assert run.returncode == code, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    return run.stderr


def write_wav(path: Path, x: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1 if x.ndim == 1 else x.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(x.astype("<i2").tobytes())
    return path


def noise(seconds: float, rate: int = 8000, channels: int = 1, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0.0, 2000.0, (round(seconds * rate), channels))
    return x[:, 0] if channels == 1 else x


# -- models score pump --------------------------------------------------------------------------


def pump_csv(path: Path, stamps: list[str], columns: dict[str, list[float]]) -> Path:
    rows = [",".join(["time", *columns])]
    rows += [",".join([t, *(f"{v[i]:.4f}" for v in columns.values())]) for i, t in enumerate(stamps)]
    path.write_text("\n".join(rows) + "\n")
    return path


def seconds(n: int) -> list[str]:
    start = datetime(2024, 3, 1, 10)
    return [(start + timedelta(seconds=i)).isoformat(sep=" ") for i in range(n)]


def test_pump_a_manifest_that_is_not_utf8_is_named_not_a_traceback(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    csv = pump_csv(tmp_path / "p.csv", seconds(100), {"a": list(rng.normal(size=100))})
    manifest = tmp_path / "m.json"
    manifest.write_bytes(b'{"\xff": 1}')
    err = one_line_error(edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "50",
                                    "--model", str(manifest)))  # fmt: skip
    assert f"{manifest}: not a manifest: not UTF-8 JSON" in err


def test_pump_content_errors_name_the_file_and_its_signals(tmp_path: Path) -> None:
    const = pump_csv(tmp_path / "const.csv", seconds(100), {"flow": [5.0] * 100, "rpm": [1450.0] * 100})
    err = one_line_error(edge_agent("models", "score", "pump", "--csv", str(const), "--calibrate-rows", "50"))
    assert f"{const}: no channel varies during calibration" in err
    assert "in its first 50 data rows (signals: flow, rpm)" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    err = one_line_error(edge_agent("models", "score", "pump", "--csv", str(empty), "--calibrate-rows", "50"))
    assert f"{empty}: the file is empty" in err


def test_pump_rows_out_of_time_order_are_warned_of(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stamps = seconds(200)
    order = rng.permutation(200)
    csv = pump_csv(tmp_path / "shuffled.csv", [stamps[i] for i in order], {"a": list(rng.normal(size=200))})
    run = edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "100")
    assert run.returncode == 0, run.stderr
    assert "the timestamps go back in time (first: data row " in run.stderr
    assert "sort the file by time" in run.stderr


def test_pump_one_step_back_of_the_autumn_clock_change_is_not_warned_of(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stamps = seconds(100) + [(datetime(2024, 3, 1, 9, 59) + timedelta(seconds=i)).isoformat(sep=" ")
                             for i in range(100)]  # fmt: skip
    csv = pump_csv(tmp_path / "dst.csv", stamps, {"a": list(rng.normal(size=200))})
    run = edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "100")
    assert run.returncode == 0, run.stderr
    assert "go back in time" not in run.stderr


def test_pump_a_stray_quote_spoils_its_own_row_not_the_rest_of_the_file(tmp_path: Path) -> None:
    # Read as standard CSV, the quote never closed took the 400 lines after it into one cell: the
    # output ended at that row, exit 0, and nothing said so.
    rng = np.random.default_rng(5)
    csv = pump_csv(tmp_path / "quote.csv", seconds(900), {"a": list(rng.normal(size=900)),
                                                         "b": list(rng.normal(size=900))})  # fmt: skip
    lines = csv.read_text().splitlines()
    lines[501] = '"' + lines[501]  # data row 501
    csv.write_text("\n".join(lines) + "\n")
    run = edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "400")
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert len(out) == 1 + 900
    assert out[-1].startswith(seconds(900)[-1] + ",")
    assert "1 row(s) have fewer cells than the header; the missing cells are read as missing " in run.stderr
    assert "(first: data row 501: " in run.stderr


def test_pump_text_in_a_signal_column_is_counted_and_the_first_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    values = [f"{v:.4f}" for v in rng.normal(size=300)]
    values[210] = values[299] = "Err"  # data rows 211 and 300
    stamps = seconds(300)
    lines = ["time,flow,rpm", *(f"{stamps[i]},{v},{i % 7}" for i, v in enumerate(values))]
    csv = tmp_path / "err.csv"
    csv.write_text("\n".join(lines) + "\n")
    run = edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "100")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 1 + 300
    assert ("2 cell(s) in signal columns are not numbers and are read as missing "
            "(first: data row 211, column 'flow': 'Err')") in run.stderr  # fmt: skip
    assert "fewer cells" not in run.stderr


def test_pump_timestamps_in_a_later_column_are_named_when_the_first_is_numbers(tmp_path: Path) -> None:
    # A rising totaliser first and the times second: the totaliser was taken as the timestamp and
    # never scored, and nothing said so (the warning for a first column that goes down stays quiet).
    stamps = seconds(300)
    lines = [
        "volume,time,flow",
        *(f"{1000 + i * 0.5:.1f},{t},{5 + (i % 7) / 10}" for i, t in enumerate(stamps)),
    ]
    csv = tmp_path / "order.csv"
    csv.write_text("\n".join(lines) + "\n")
    run = edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "100")
    assert run.returncode == 0, run.stderr
    assert (f"column 'time' holds timestamps ('{stamps[0]}') and is not read; the first column 'volume' "
            "holds numbers and is read as the timestamp (echoed, not scored): put the timestamp column first"
            ) in run.stderr  # fmt: skip
    assert "numbers go down" not in run.stderr


# -- models score flow-leak / burst -------------------------------------------------------------


def flow_csv(path: Path, days: int, value: str | None = None, hours: range = range(24)) -> Path:
    start = datetime(2024, 1, 1)
    lines = ["time,flow"]
    for i in range(days * 96):
        t = start + timedelta(minutes=15 * i)
        if t.hour in hours:
            lines.append(f"{t:%Y-%m-%d %H:%M},{value if value is not None else 10 + (i % 7) / 10}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("model", ["flow-leak", "burst"])
def test_flow_a_column_of_no_numbers_is_named_not_scored_as_no_nights(tmp_path: Path, model: str) -> None:
    # flow-leak printed a header and exit 0 ("0 night(s) in the file, all used to calibrate").
    csv = flow_csv(tmp_path / "text.csv", 10, value="abc")
    extra = ["--calibrate-days", "3"] if model == "flow-leak" else []
    err = one_line_error(edge_agent("models", "score", model, "--csv", str(csv), "--flow", "flow", *extra))
    assert f"{csv}: none of its 960 data rows is usable: column 'flow' holds no number (e.g. 'abc')" in err


def test_flow_a_header_without_a_known_separator_says_so(tmp_path: Path) -> None:
    csv = tmp_path / "pipes.csv"
    csv.write_text("time|flow\n2024-01-01 00:00|5\n")
    err = one_line_error(edge_agent("models", "score", "burst", "--csv", str(csv), "--flow", "flow"))
    assert f"{csv}: the header 'time|flow' has no ',', ';' or tab separator" in err


def test_flow_leak_with_no_reading_in_the_night_window_is_an_error(tmp_path: Path) -> None:
    csv = flow_csv(tmp_path / "daytime.csv", 10, hours=range(8, 18))
    err = one_line_error(edge_agent("models", "score", "flow-leak", "--csv", str(csv), "--flow", "flow",
                                    "--calibrate-days", "3"))  # fmt: skip
    assert f"{csv}: no usable reading falls in the night window 02:00-04:00" in err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--slot-minutes", "0"], "argument --slot-minutes: expected a whole number from 5 to 240, got '0'"),
        (["--slot-minutes", "1440"], "expected a whole number from 5 to 240, got '1440'"),
        (["--learn-days", "100"], "argument --learn-days: expected a whole number from 7 to 90, got '100'"),
    ],
)
def test_burst_refuses_out_of_range_options(tmp_path: Path, option: list[str], message: str) -> None:
    # --slot-minutes 0 fell back to the default silently; 1440 warned "Mean of empty slice".
    csv = flow_csv(tmp_path / "flow.csv", 2)
    run = edge_agent("models", "score", "burst", "--csv", str(csv), "--flow", "flow", *option)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_burst_warns_when_the_file_is_no_longer_than_the_learning(tmp_path: Path) -> None:
    csv = flow_csv(tmp_path / "flow.csv", 3)
    run = edge_agent("models", "score", "burst", "--csv", str(csv), "--flow", "flow")
    assert run.returncode == 0, run.stderr
    assert "no more than --learn-days 14: every slot is learnt from, none is judged" in run.stderr


@pytest.mark.parametrize("model", ["flow-leak", "burst"])
def test_flow_a_stray_quote_spoils_its_own_row_not_the_rest_of_the_file(tmp_path: Path, model: str) -> None:
    # Read as standard CSV, the quote took every later line into one cell; on a long file csv raised
    # "field larger than field limit" (a traceback), on a short one the later nights were gone.
    csv = flow_csv(tmp_path / "quote.csv", 20)
    lines = csv.read_text().splitlines()
    lines[100] = '"' + lines[100]
    csv.write_text("\n".join(lines) + "\n")
    extra = ["--calibrate-days", "7"] if model == "flow-leak" else ["--learn-days", "7"]
    run = edge_agent("models", "score", model, "--csv", str(csv), "--flow", "flow", *extra)
    assert run.returncode == 0, run.stderr
    assert "warning: 1 row(s) with unreadable values skipped" in run.stderr
    if model == "flow-leak":
        assert run.stdout.splitlines()[-1].startswith("2024-01-20,")  # the last night is there
    else:
        assert "2024-01-20 23:45" in run.stdout.splitlines()[-1]


# -- models score machine-sound ------------------------------------------------------------------


def test_machine_sound_a_calibration_file_of_no_usable_clips_is_named(tmp_path: Path) -> None:
    good = tmp_path / "clips.npy"
    np.save(good, np.random.default_rng(4).normal(size=(20, 136)).astype(np.float32))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((30, 136), np.nan, dtype=np.float32))
    err = one_line_error(
        edge_agent("models", "score", "machine-sound", "--features", str(good), "--calibrate", str(nan))
    )
    expected = "need at least 10 calibration clips with finite features within ±1e+15, got 0"
    assert f"--calibrate {nan}: {expected}" in err


# -- models score|calibrate leak, locate ---------------------------------------------------------


@pytest.fixture(scope="module")
def leak_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("leak")
    quiet = write_wav(d / "quiet.wav", noise(12.0, seed=5))
    run = edge_agent("models", "calibrate", "leak", str(quiet), "--out", str(d / "base.json"))
    assert run.returncode == 0, run.stderr
    return {"quiet": quiet, "baseline": d / "base.json", "dir": d}


def baseline_with(leak_files: dict[str, Path], name: str, content: Any) -> Path:
    path = leak_files["dir"] / name
    path.write_text(json.dumps(content))
    return path


def score_leak(leak_files: dict[str, Path], baseline: Path, *more: str) -> CliRun:
    return edge_agent("models", "score", "leak", str(leak_files["quiet"]), "--baseline", str(baseline), *more)


@pytest.mark.parametrize("command", ["score", "calibrate"])
def test_leak_a_wav_header_of_zero_channels_is_named_not_a_traceback(tmp_path: Path, command: str) -> None:
    # scipy's reader divides by the header's channel count and bytes per frame: ZeroDivisionError.
    import struct

    fmt = struct.pack("<HHIIHH", 1, 0, 8000, 0, 0, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 4) + b"\0" * 4
    wav = tmp_path / "zero.wav"
    wav.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    extra = ["--out", str(tmp_path / "b.json")] if command == "calibrate" else []
    run = edge_agent("models", command, "leak", str(wav), *extra)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert f"{wav}: not a readable WAV file (its header says 0 channels or 0 bytes per frame)" in run.stderr


@pytest.mark.parametrize("content", [[1, 2, 3], None, "hello", 42])
def test_leak_a_baseline_not_a_json_object_is_named(leak_files: dict[str, Path], content: Any) -> None:
    # AttributeError: 'list' object has no attribute 'get'
    path = baseline_with(leak_files, "not-object.json", content)
    err = one_line_error(score_leak(leak_files, path))
    assert f"{path}: not a leak baseline (a JSON {type(content).__name__}, expected an object)" in err


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("material", 5, "'material' must be a pipe material's name, got 5"),
        ("material", "unobtainium", "unknown pipe material 'unobtainium'"),
        ("version", 1e308, "'version' must be a whole number from 0"),
        ("version", -1, "'version' must be a whole number from 0, got -1"),
        ("level_sigma_db", [-1.0] * 20, "'level_sigma_db' holds a negative spread"),
    ],
)
def test_leak_a_baseline_field_of_the_wrong_kind_is_named(
    leak_files: dict[str, Path], key: str, value: object, message: str
) -> None:
    # material 5: AttributeError in pipes.material; version 1e308: orjson "Integer exceeds 64-bit range"
    content = json.loads(leak_files["baseline"].read_text())
    path = baseline_with(leak_files, f"bad-{key}.json", {**content, key: value})
    err = one_line_error(score_leak(leak_files, path))
    assert f"{path}: " in err
    assert message in err


def test_leak_an_unknown_material_is_refused_once_before_any_file(leak_files: dict[str, Path]) -> None:
    # It was one error per file with --baseline, and exit 0 without one.
    for baseline in ([], ["--baseline", str(leak_files["baseline"])]):
        run = edge_agent("models", "score", "leak", str(leak_files["quiet"]), str(leak_files["quiet"]),
                         "--material", "unobtainium", *baseline)  # fmt: skip
        err = one_line_error(run)
        assert "--material: unknown pipe material 'unobtainium'; expected one of:" in err


def test_locate_a_distance_the_recording_cannot_span_is_refused(tmp_path: Path) -> None:
    pair = write_wav(tmp_path / "pair.wav", noise(4.0, channels=2, seed=6))
    err = one_line_error(edge_agent("models", "locate", str(pair), "--distance", "5000", "--material", "pvc"))
    assert "sensors 5000 m apart" in err
    assert "4.00 s of recording cannot tell where between them" in err


def test_locate_an_offset_past_the_recordings_names_it(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", noise(3.0, seed=7))
    b = write_wav(tmp_path / "b.wav", noise(3.0, seed=8))
    run = edge_agent("models", "locate", str(a), str(b), "--distance", "50", "--material", "pvc",
                     "--offset-s", "10")  # fmt: skip
    err = one_line_error(run)
    assert "--offset-s 10 leaves 0.00 s in which both recordings run (A 3.00 s, B 3.00 s)" in err


@pytest.mark.parametrize("dead", ["A", "B"])
def test_locate_a_sensor_of_digital_silence_is_named_not_placed_at_its_end(tmp_path: Path, dead: str) -> None:
    # It gave position 0.0 m +- 6 m, "the source is likely at or beyond sensor A", exit 0.
    live = write_wav(tmp_path / "live.wav", noise(4.0, seed=9))
    silent = write_wav(tmp_path / "silent.wav", np.zeros(32000))
    files = [silent, live] if dead == "A" else [live, silent]
    run = edge_agent("models", "locate", *map(str, files), "--distance", "50", "--material", "pvc")
    err = one_line_error(run)
    assert f"{silent}: sensor {dead} holds one constant value (digital silence or a dead input)" in err
    pair = write_wav(tmp_path / "pair.wav", np.stack([noise(4.0, seed=10), np.zeros(32000)], axis=1))
    err = one_line_error(edge_agent("models", "locate", str(pair), "--distance", "50", "--material", "pvc"))
    assert f"{pair}: sensor B holds one constant value" in err


# -- decode, buffer stats ------------------------------------------------------------------------


def test_decode_a_character_that_is_no_hex_digit_is_named_before_the_count() -> None:
    err = one_line_error(edge_agent("decode", "mbus", "é"))
    assert "not a hex digit: 'é'" in err


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_bytes=1 << 20) as box:
        box.append([Batch("a", readings=[Reading("plc1", f"t{i}", i, i) for i in range(3)])])
    return path


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE counters SET value = 'abc' WHERE name = 'evicted_rows'", "damaged: evicted_rows is 'abc'"),
        ("UPDATE counters SET value = x'00ff' WHERE name = 'evicted_rows'", "damaged: evicted_rows is b'"),
        ("UPDATE meta SET value = 'abc' WHERE key = 'max_bytes'", "damaged: 'meta' max_bytes is not a whole"),
        ("UPDATE outbox SET created_ns = 'abc'", "damaged: oldest_created_ns is 'abc'"),
    ],
)
def test_buffer_stats_on_damaged_values_names_them(outbox: Path, sql: str, message: str) -> None:
    # ValueError "Cannot specify ',' with 's'.", TypeError in _age_s or in orjson, int('abc')
    conn = sqlite3.connect(outbox)
    conn.execute(sql)
    conn.commit()
    conn.close()
    err = one_line_error(edge_agent("buffer", "stats", "--db", str(outbox)), code=1)
    assert f"outbox {outbox}: {message}" in err
    as_json = edge_agent("buffer", "stats", "--db", str(outbox), "--json")
    assert (as_json.returncode, as_json.stderr) == (1, err)
    assert json.loads(as_json.stdout) == {"error": err.strip().removeprefix("edge-agent: ")}


def test_buffer_stats_on_a_directory_says_so(tmp_path: Path) -> None:
    err = one_line_error(edge_agent("buffer", "stats", "--db", str(tmp_path)), code=1)
    assert f"outbox {tmp_path}: a directory, not an outbox file" in err
