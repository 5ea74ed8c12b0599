"""Burst detection when one reading in the first hours is absurd: a logger's "largest double" for no
value, or a register misread as a million m3/h. Before a half-day of slots was learnt there was no
reference to call it a glitch, so it went into the profile and the district's mean flow: the
smallest burst reported rose a hundredfold, and the burst in the file was never found."""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.support.cli import CliRun, edge_agent
from water_edge.models.flow_leak.burst import BurstDetector, BurstParams

START = datetime(2024, 3, 1)
BURST = START + timedelta(days=15)  # 8 m3/h more from here on: 10 % of the mean flow


def _flows() -> list[tuple[datetime, float]]:
    out = []
    for i in range(21 * 96):
        t = START + timedelta(minutes=15 * i)
        h = t.hour + t.minute / 60
        q = 40 + (0 if 1 <= h < 5 else 60 + 20 * math.sin(h / 24 * 2 * math.pi)) + 0.5 * math.sin(i * 1.7)
        out.append((t, round(q + (8 if t >= BURST else 0), 3)))
    return out


def _burst(tmp_path: Path, name: str, row_10: str | None) -> CliRun:
    """`score burst --events` on the flows, the 11th data row's value replaced by `row_10`; a
    numpy RuntimeWarning fails the test (it reached the user's terminal)."""
    lines = [f"{t:%Y-%m-%d %H:%M},{row_10 if i == 10 and row_10 else q}" for i, (t, q) in enumerate(_flows())]
    path = tmp_path / name
    path.write_text("time,inflow\n" + "\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return edge_agent(
            "models",
            "score",
            "burst",
            "--csv",
            str(path),
            "--flow",
            "inflow",
            "--learn-days",
            "7",
            "--events",
        )


def _events(run: CliRun) -> list[tuple[str, str]]:
    assert run.returncode == 0, run.stderr
    return [(c[0], c[4]) for c in (line.split(",") for line in run.stdout.splitlines()[1:])]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (
            "1000000",
            "1 slot(s) of the first half-day beyond 10x its median slot flow left out of what is learnt as a "
            "glitch (first: the row stamped 2024-03-01 02:30:00, 1e+06 m3/h; slot 1e+06 m3/h)",
        ),
        (
            "1e308",
            "1 row(s) with a value of 1e+150 or more skipped: a logger's mark of no value, not a flow "
            "(first: line 12, column 'inflow': '1e308')",
        ),
    ],
    ids=["1e6", "1e308"],
)
def test_one_absurd_reading_in_the_first_hours_leaves_the_burst_found(
    tmp_path: Path, value: str, said: str
) -> None:
    clean = _events(_burst(tmp_path, "clean.csv", None))
    assert clean[0] == ("2024-03-16 01:00", "burst")
    got = _burst(tmp_path, "spiked.csv", value)
    assert _events(got) == clean
    assert said in got.stderr
    assert "RuntimeWarning" not in got.stderr


def test_the_detector_learns_the_same_district_with_one_absurd_slot_in_its_first_half_day() -> None:
    # What the gateway runs too: its first half-day of samples is judged once it has a reference.
    clean, spiked = BurstDetector(BurstParams(learn_days=7)), BurstDetector(BurstParams(learn_days=7))
    for i, (t, q) in enumerate(_flows()[: 8 * 96 + 1]):
        clean.add(t, q)
        spiked.add(t, 1e6 if i == 10 else q)
    assert clean.min_burst is not None
    assert spiked.min_burst == pytest.approx(clean.min_burst, rel=0.01)
    assert spiked.unlearnt == [(START + timedelta(hours=2, minutes=30), 1e6)]
    assert clean.unlearnt == []
