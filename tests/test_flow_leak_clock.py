"""The clock of a SCADA export. A district's demand follows its wall clock, daylight saving
included; a historian that exports UTC (or standard time) without an offset, read as local, moves
that demand an hour against the day profile at every change of clock: a leak-free district raised
28 false bursts in the fortnight after the spring change. Such a file has rows in the hour the
district's clocks skip; the commands say so, and `--timestamps-zone` reads it as it is."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from tests.support.cli import CliRun, edge_agent
from water_edge.core.timestamps import parse_time, skipped_hour
from water_edge.sim.district import District, write_csv

ROME = ZoneInfo("Europe/Rome")
SPRING = date(2024, 3, 31)  # Europe/Rome skips 02:00-03:00
COLUMNS = ["--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--timezone", "Europe/Rome"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A leak-free district from 1 February to mid-April, its demand on Rome's wall clock: exported
    as a local logger writes it (no 02:00-03:00 on 31 March), and in UTC without an offset."""
    cols: dict[str, Any] = District(33, start=datetime(2024, 2, 1)).simulate(75)
    kept = [i for i, t in enumerate(cols["time"]) if not (t.date() == SPRING and t.hour == 2)]
    local = {k: [v[i] for i in kept] if isinstance(v, list) else np.asarray(v)[kept] for k, v in cols.items()}
    utc = {
        **local,
        "time": [
            t.replace(tzinfo=ROME).astimezone(ZoneInfo("UTC")).replace(tzinfo=None) for t in local["time"]
        ],
    }
    out = tmp_path_factory.mktemp("clock")
    write_csv(local, str(out / "local.csv"))
    write_csv(utc, str(out / "utc.csv"))
    return {"local": out / "local.csv", "utc": out / "utc.csv"}


def _score(command: str, export: Path, *extra: str) -> CliRun:
    return edge_agent("models", "score", command, "--csv", str(export), *COLUMNS, *extra)


def _bursts(stdout: str) -> int:
    return sum(line.split(",")[4] == "burst" for line in stdout.splitlines()[1:])


def test_an_export_in_utc_is_named_and_read_as_utc_with_timestamps_zone(exports: dict[str, Path]) -> None:
    as_local = _score("burst", exports["utc"], "--events")
    assert as_local.returncode == 0, as_local.stderr
    assert "4 row(s) stamped in an hour the district's clocks skip" in as_local.stderr
    assert "(first: 2024-03-31 02:00)" in as_local.stderr
    assert "--timestamps-zone" in as_local.stderr
    assert _bursts(as_local.stdout) > 0  # the profile an hour off after the change: what it costs

    as_utc = _score("burst", exports["utc"], "--timestamps-zone", "UTC", "--events")
    assert as_utc.returncode == 0, as_utc.stderr
    assert "clocks skip" not in as_utc.stderr
    assert _bursts(as_utc.stdout) == 0


def test_a_local_export_is_not_warned_about_and_raises_nothing(exports: dict[str, Path]) -> None:
    run = _score("burst", exports["local"], "--events")
    assert run.returncode == 0, run.stderr
    assert "clocks skip" not in run.stderr
    assert _bursts(run.stdout) == 0


@pytest.mark.parametrize(
    "command", [["burst"], ["flow-leak", "--calibrate-days", "14"]], ids=["burst", "flow-leak"]
)
def test_the_utc_export_read_with_its_zone_is_judged_as_the_local_one(
    exports: dict[str, Path], command: list[str]
) -> None:
    """The same instants, the same flows: every slot and night alike, and the same summary."""
    utc = _score(command[0], exports["utc"], *command[1:], "--timestamps-zone", "UTC")
    local = _score(command[0], exports["local"], *command[1:])
    assert utc.returncode == local.returncode == 0, utc.stderr + local.stderr
    assert utc.stdout == local.stdout
    assert utc.stderr == local.stderr
    warned = _score(command[0], exports["utc"], *command[1:])
    assert "clocks skip" in warned.stderr


def test_an_unknown_timestamps_zone_names_the_option(exports: dict[str, Path]) -> None:
    run = _score("burst", exports["utc"], "--timestamps-zone", "Mars/Olympus")
    assert run.returncode == 2
    assert "--timestamps-zone: unknown time zone 'Mars/Olympus'" in run.stderr


def test_the_skipped_hour_is_told_from_the_repeated_one() -> None:
    assert skipped_hour(datetime(2024, 3, 31, 2, 30), ROME)
    assert not skipped_hour(datetime(2024, 3, 31, 3, 0), ROME)
    assert not skipped_hour(datetime(2024, 10, 27, 2, 30), ROME)  # repeated in autumn: it exists
    assert not skipped_hour(datetime(2024, 3, 31, 2, 30), ZoneInfo("UTC"))
    assert parse_time("2024-03-31 01:30", ROME, naive_tz=ZoneInfo("UTC")) == datetime(2024, 3, 31, 3, 30)
    assert parse_time("2024-03-31 01:30+00:00", ROME, naive_tz=ROME) == datetime(2024, 3, 31, 3, 30)
    assert parse_time("2024-03-31 01:30", ROME) == datetime(2024, 3, 31, 1, 30)
    assert parse_time("2024-03-31 01:30:00 UTC", ROME) == datetime(2024, 3, 31, 3, 30)  # said, not assumed
    assert parse_time("31-Mar-24 01:30:00 GMT", ROME) == datetime(2024, 3, 31, 3, 30)
