"""The README's offline model checks, run as a user runs them, show what the README says they show.

(The demo, `edge-agent status` without -c and the `tail` example: tests/test_demo.py.)
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def normal_hour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edge-sim dataset pump --hours 1`: a fault-free simulated hour whose demand falls."""
    out = tmp_path_factory.mktemp("pump")
    done = run(
        BIN / "edge-sim",
        "dataset",
        "pump",
        "--out",
        out,
        "--hours",
        "1",
        "--seed",
        "1",
        "--fault",
        "sensor_stuck",
    )
    assert done.returncode == 0, done.stderr
    return out / "pump_normal.csv"


def anomalous(stdout: str) -> int:
    rows = list(csv.DictReader(io.StringIO(stdout)))
    return sum(int(r["anomaly"]) for r in rows)


def test_a_short_calibration_that_misses_the_operating_range_is_called_out(normal_hour: Path) -> None:
    """README: `--calibrate-rows 400` on an hour whose flow moves warns that the calibration does
    not cover what it scores, and names the calibration that would."""
    done = run(BIN / "edge-agent", "models", "score", "pump", "--csv", normal_hour, "--calibrate-rows", "400")
    assert done.returncode == 0, done.stderr
    assert "operating point the first 400 rows did not cover" in done.stderr
    assert "may be duty the calibration did not see, or the fault itself" in done.stderr
    marked = re.search(r"([\d,]+) of 3,200 rows after the 400 calibration rows marked anomalous", done.stderr)
    assert marked, done.stderr
    assert int(marked.group(1).replace(",", "")) == anomalous(done.stdout) > 0
    suggested = re.search(r"--calibrate-rows (\d+) would cover that range \(flow and speed only", done.stderr)
    assert suggested, done.stderr

    # The suggestion holds: calibrated as it says, the fault-free rest is (nearly) all normal.
    rows = int(suggested.group(1))
    again = run(BIN / "edge-agent", "models", "score", "pump", "--csv", normal_hour, "--calibrate-rows", rows)
    assert again.returncode == 0, again.stderr
    assert "did not cover" not in again.stderr
    assert anomalous(again.stdout) <= 0.01 * (3600 - rows)


def test_simulated_no_leak_audio_and_the_classifier_alone(tmp_path: Path) -> None:
    """README: `edge-sim hydrophones --wav pair.wav --seconds 30` has no leak by default; scored
    without a baseline the classifier alone is said to be only that, with its measured false-alarm
    rate; against a baseline of the same site's quiet nights (--site-seed) the quiet night is no
    leak and a night with a leak is one."""
    quiet = []
    for seed in (0, 1, 2):
        wav = tmp_path / f"quiet{seed}.wav"
        made = run(
            BIN / "edge-sim", "hydrophones", "--wav", wav, "--seconds", "30", "--seed", seed, "--site-seed", 5
        )
        assert made.returncode == 0, made.stderr
        quiet.append(wav)
    pair = tmp_path / "pair.wav"
    made = run(
        BIN / "edge-sim", "hydrophones", "--wav", pair, "--seconds", "30", "--seed", 7, "--site-seed", 5
    )
    assert "no leak" in made.stdout
    leaking = tmp_path / "leak.wav"
    site = ("--seconds", "30", "--seed", 7, "--site-seed", 5)
    made = run(BIN / "edge-sim", "hydrophones", "--wav", leaking, *site, "--leak-position-m", 40)
    assert made.returncode == 0, made.stderr

    alone = run(BIN / "edge-agent", "models", "score", "leak", pair)
    assert alone.returncode in (0, 1), alone.stderr
    assert "classifier alone" in alone.stderr
    assert re.search(r"no-leak audio it gives false alarms on \d+ % of files", alone.stderr), alone.stderr

    baseline = tmp_path / "B.json"
    cal = run(BIN / "edge-agent", "models", "calibrate", "leak", *quiet, "--out", baseline)
    assert cal.returncode == 0, cal.stderr
    judged = run(BIN / "edge-agent", "models", "score", "leak", pair, leaking, "--baseline", baseline)
    quiet_line, leak_line = (json.loads(line) for line in judged.stdout.splitlines())
    assert quiet_line["decision"] == "against baseline"
    assert quiet_line["leak"] is False
    assert leak_line["leak"] is True
