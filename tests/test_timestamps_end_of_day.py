"""ISO 8601's end of a day, '24:00': German and Austrian SCADA exports stamp the interval that ends
at midnight '29.02.2024 24:00'. It is the next day's 00:00, in every date layout the offline
commands read; past it ('24:01', '25:00') is no time of day."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.cli import edge_agent
from tests.test_flow_leak_exports import _burst, _flow_leak, _flows, _write
from water_edge.agent.cli import main
from water_edge.core import timestamps
from water_edge.core.timestamps import parse_time
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
LEAP_MIDNIGHT = datetime(2024, 3, 1)


@pytest.mark.parametrize(
    ("text", "day_first"),
    [
        ("29.02.2024 24:00", True),
        ("29.02.2024 24:00:00", True),
        ("29/02/2024 24:00", True),
        ("02/29/2024 24:00", False),
        ("2024-02-29 24:00", True),
        ("2024-02-29T24:00:00", True),
        ("2024/02/29 24:00:00.000", True),
        ("29-Feb-24 24:00", True),
        ("Feb 29, 2024 24:00:00", True),
    ],
)
def test_24_00_is_the_next_days_midnight_in_every_date_layout(text: str, day_first: bool) -> None:
    assert parse_time(text, UTC, day_first) == LEAP_MIDNIGHT


def test_a_time_holding_24_00_that_is_not_midnight_is_read_as_written() -> None:
    assert parse_time("29.02.2024 12:24:00", UTC) == datetime(2024, 2, 29, 12, 24)
    assert parse_time("2024-02-29T00:24:00Z", UTC) == datetime(2024, 2, 29, 0, 24)


def test_24_00_ends_the_year_and_keeps_a_stated_zone() -> None:
    assert parse_time("31.12.2024 24:00", UTC) == datetime(2025, 1, 1)
    assert parse_time("2024-02-29T24:00:00Z", BERLIN) == datetime(2024, 3, 1, 1, 0)
    assert parse_time("2024-02-29T24:00+01:00", UTC) == datetime(2024, 2, 29, 23, 0)
    assert parse_time("29.02.2024 24:00 UTC", BERLIN) == datetime(2024, 3, 1, 1, 0)


def test_24_00_of_a_utc_export_is_midnight_utc_on_the_day_the_clocks_change() -> None:
    # 31 March 2024 24:00 UTC is 1 April 00:00 UTC, 02:00 in Berlin (summer time since that morning).
    assert parse_time("31.03.2024 24:00", BERLIN, naive_tz=UTC) == datetime(2024, 4, 1, 2, 0)


@pytest.mark.parametrize(
    "text",
    [
        "29.02.2024 24:01",
        "29.02.2024 25:00",
        "29.02.2024 24:00:01",
        "2024-02-29T24:00:00.5",
        "30.02.2024 24:00",
    ],
)
def test_past_the_end_of_a_day_is_no_timestamp(text: str) -> None:
    with pytest.raises(ValueError, match=f"^'{text}' is not a timestamp$"):
        parse_time(text, UTC)


def test_a_24_00_row_leaves_the_next_rows_read_with_the_exports_format() -> None:
    # The format the last row fitted is tried first (a year of minute rows: 525,600 of them); the
    # midnight row must not leave another one behind.
    parse_time("29.02.2024 23:45", UTC)
    before = list(timestamps._last_format)
    assert parse_time("29.02.2024 24:00", UTC) == LEAP_MIDNIGHT
    assert timestamps._last_format == before


def _scada(flows: list[tuple[datetime, float]], *, end_of_day: bool) -> list[str]:
    """Rows as a German SCADA export writes them; midnight as '24:00' of the day before if asked."""

    def stamp(t: datetime) -> str:
        if end_of_day and t.hour == 0 and t.minute == 0:
            return f"{t - timedelta(days=1):%d.%m.%Y} 24:00"
        return f"{t:%d.%m.%Y %H:%M}"

    return [f"{stamp(t)};{f'{q:.1f}'.replace('.', ',')}" for t, q in flows]


def test_an_export_stamping_midnight_24_00_scores_as_its_00_00_twin(tmp_path: Path) -> None:
    # Before, "line 2: '29.02.2024 24:00' is not a timestamp", exit 2 (the first row; a later one
    # was skipped, and its night's reading lost). 14 days: dates past the 12th say day first in both.
    flows = _flows(days=14)
    midnights = _write(tmp_path / "24.csv", "Zeit;Zufluss", _scada(flows, end_of_day=True))
    zeros = _write(tmp_path / "00.csv", "Zeit;Zufluss", _scada(flows, end_of_day=False))
    assert "29.02.2024 24:00" in midnights.read_text()
    for score, args in ((_flow_leak, ("--calibrate-days", "7")), (_burst, ("--learn-days", "7"))):
        got = score(midnights, "--flow", "Zufluss", "--timezone", "UTC", *args)
        want = score(zeros, "--flow", "Zufluss", "--timezone", "UTC", *args)
        assert got.returncode == 0, got.stderr
        assert (got.stdout, got.stderr) == (want.stdout, want.stderr)


def test_score_pump_calibrates_until_a_24_00_stamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--calibrate-until` reads the stamps. Before, a first row stamped 24:00 said "timestamp
    # '29.02.2024 24:00:00' cannot be read", and a 24:00 --calibrate-until was "not a timestamp".
    x, _ = simulate(Scenario(seed=5, hours=1 / 30))  # 2 minutes, a second apart, from midnight
    stamps = [LEAP_MIDNIGHT + timedelta(seconds=i) for i in range(len(x))]

    def write(name: str, end_of_day: bool) -> Path:
        def stamp(t: datetime) -> str:
            return "29.02.2024 24:00:00" if end_of_day and t == LEAP_MIDNIGHT else f"{t:%d.%m.%Y %H:%M:%S}"

        rows = [[stamp(t)] + [f"{v:.4f}" for v in row] for t, row in zip(stamps, x, strict=True)]
        path = tmp_path / name
        path.write_text("\n".join(";".join(r) for r in [["Zeit", *SIGNALS], *rows]) + "\n", encoding="utf-8")
        return path

    def score(path: Path, until: str) -> tuple[int, list[list[str]], str]:
        code = main(["models", "score", "pump", "--csv", str(path), "--calibrate-until", until])
        out = capsys.readouterr()
        return code, [row[1:] for row in csv.reader(io.StringIO(out.out))], out.err

    code, got, said = score(write("24.csv", True), "01.03.2024 00:01:00")
    assert code == 0, said
    assert "calibrating on the first 60 rows" in said
    assert got == score(write("00.csv", False), "01.03.2024 00:01:00")[1]
    # The limit is read alike: 24:00 of the 29th is the first row's time, no row is before it.
    assert (
        "--calibrate-until 29.02.2024 24:00 leaves 0 row(s)"
        in score(write("00.csv", False), "29.02.2024 24:00")[2]
    )


def test_the_cli_names_a_time_past_24_00(tmp_path: Path) -> None:
    lines = [f"{t:%d.%m.%Y %H:%M};40,0" for t, _ in _flows(days=1)]
    export = _write(tmp_path / "25.csv", "Zeit;Zufluss", ["29.02.2024 25:00;40,0", *lines])
    run = edge_agent(
        "models", "score", "flow-leak", "--csv", str(export), "--flow", "Zufluss", "--calibrate-days", "3"
    )
    assert run.returncode == 2
    assert f"{export}: line 2: '29.02.2024 25:00' is not a timestamp" in run.stderr
