"""`score flow-leak` and `score burst` on exports as utilities write them: digit grouping of every
kind, header names with commas, offsets across the autumn clock change, nights with a lone reading,
units rows above ambiguous dates, a logger's "no value", and a column asked for twice. Each export is
compared with its plain twin (ISO times, '.' decimals, ',' separated) where there is one."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.cli import CliRun, edge_agent

START = datetime(2024, 3, 1)


def _flows(
    days: int = 21, step_min: int = 15, scale: float = 1.0, leak_day: int = 14
) -> list[tuple[datetime, float]]:
    """A district's inflow: 40 m3/h at night, about 100 by day, 8 more from day `leak_day` on (0:
    the first; a leak the step detector reports two nights later); deterministic meter noise."""
    out = []
    for i in range(days * 1440 // step_min):
        t = START + timedelta(minutes=step_min * i)
        h = t.hour + t.minute / 60
        q = 40 + (0 if 1 <= h < 5 else 60 + 20 * math.sin(h / 24 * 2 * math.pi))
        q += (8 if t >= START + timedelta(days=leak_day) else 0) + 0.5 * math.sin(i * 1.7)
        out.append((t, round(q * scale, 1)))
    return out


# Enough days for an export compared with its plain twin: the burst command prints every slot's
# flow (a row misread or skipped shows), armed by `--learn-days 7` for the last three days, and the
# night command judges three nights after `--calibrate-days 7`. (Numeric dates up to the 10th could
# be either way round: read day first, as these exports write them.)
TWIN_DAYS = 10


def _write(path: Path, header: str, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding=encoding)
    return path


def _plain(path: Path, flows: list[tuple[datetime, float]]) -> Path:
    return _write(path, "time,inflow", [f"{t:%Y-%m-%d %H:%M},{q:.1f}" for t, q in flows])


def _flow_leak(path: Path, *args: str) -> CliRun:
    return edge_agent("models", "score", "flow-leak", "--csv", str(path), *args)


def _burst(path: Path, *args: str) -> CliRun:
    return edge_agent("models", "score", "burst", "--csv", str(path), *args)


def _nights(run: CliRun) -> dict[str, str]:
    """night -> its night flow as printed ('' when not judged)."""
    assert run.returncode == 0, run.stderr
    return {line.split(",")[0]: line.split(",")[1] for line in run.stdout.splitlines()[1:]}


def test_a_us_unicode_text_export_with_thousands_grouping_reads_as_its_plain_twin(tmp_path: Path) -> None:
    # Excel's US "Unicode text": UTF-16, tabs, 3/1/2024 12:15 AM, and 1,185.8 m3/h. Its commas were
    # read as decimal commas: 1.185 m3/h, silently. A cell without decimals ('2,989': every 7th
    # here) could be either; the column's other cells say the comma groups thousands.
    # 14 days: 7 nights to calibrate, the leak of the 11th reported on the 13th's night, and
    # dates past the 12th to tell the month from the day by.
    leaking = _flows(days=14, scale=30.0, leak_day=10)
    flows = [(t, float(round(q)) if i % 7 == 0 else q) for i, (t, q) in enumerate(leaking)]

    def us(i: int, t: datetime, q: float) -> str:
        cell = f"{round(q):,}" if i % 7 == 0 else f"{q:,.1f}"
        return f"{t.month}/{t.day}/{t.year} {t:%I:%M %p}".replace(" 0", " ") + "\t" + cell

    export = _write(
        tmp_path / "us.txt", "Time\tInflow", [us(i, t, q) for i, (t, q) in enumerate(flows)], "utf-16"
    )
    plain = _plain(tmp_path / "plain.csv", flows)
    want = _flow_leak(plain, "--flow", "inflow", "--calibrate-days", "7")
    got = _flow_leak(export, "--flow", "Inflow", "--calibrate-days", "7")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert float(got.stdout.splitlines()[1].split(",")[1]) > 1000  # about 1,200 m3/h at night
    assert "leak" in got.stdout
    assert got.stderr == ""
    burst_want = _burst(plain, "--flow", "inflow", "--learn-days", "7")
    burst_got = _burst(export, "--flow", "Inflow", "--learn-days", "7")
    assert burst_got.stdout == burst_want.stdout


@pytest.mark.parametrize(
    ("sep", "cell"),
    [
        (";", lambda q: f"{q:,.1f}".replace(",", "\u202f").replace(".", ",")),  # French: 1 494,5
        (";", lambda q: f"{q:,.1f}".replace(",", "\u00a0").replace(".", ",")),  # no-break space
        ("\t", lambda q: f"{q:,.1f}".replace(",", " ").replace(".", ",")),  # a plain space
        (",", lambda q: f"{q:,.1f}".replace(",", "'")),  # Swiss: 1'494.5
        (";", lambda q: f"{q:,.1f}".replace(",", "X").replace(".", ",").replace("X", ".")),  # 1.494,5
    ],
    ids=["narrow-nbsp", "nbsp", "space", "apostrophe", "dot"],
)
def test_digits_grouped_by_spaces_or_apostrophes_read_as_meant(
    tmp_path: Path, sep: str, cell: Callable[[float], str]
) -> None:
    # Every such row was "unreadable" and skipped: 1680 of 2016 in a French export (all above 999).
    flows = _flows(days=TWIN_DAYS, scale=15.0)
    export = _write(
        tmp_path / "export.csv",
        f"Horodatage{sep}Debit",
        [f"{t:%d/%m/%Y %H:%M}{sep}{cell(q)}" for t, q in flows],
    )
    plain = _plain(tmp_path / "plain.csv", flows)
    for command in (_flow_leak, _burst):
        days = ("--calibrate-days", "7") if command is _flow_leak else ("--learn-days", "7")
        want = command(plain, "--flow", "inflow", *days)
        got = command(export, "--flow", "Debit", *days)
        assert got.returncode == 0, got.stderr
        assert got.stdout == want.stdout
        assert "unreadable" not in got.stderr


def test_a_column_with_decimal_commas_and_points_is_read_cell_by_cell_and_said(tmp_path: Path) -> None:
    # Two exports pasted together, one from a German PC: each cell says its own mark.
    flows = _flows(days=TWIN_DAYS)
    cells = [f"{q:.1f}" if i % 2 else f"{q:.1f}".replace(".", ",") for i, (_, q) in enumerate(flows)]
    export = _write(
        tmp_path / "mixed.csv",
        "Zeit;Zufluss",
        [f"{t:%d.%m.%Y %H:%M};{c}" for (t, _), c in zip(flows, cells, strict=True)],
    )
    got = _flow_leak(export, "--flow", "Zufluss", "--calibrate-days", "7")
    plain = _plain(tmp_path / "plain.csv", flows)
    assert got.stdout == _flow_leak(plain, "--flow", "inflow", "--calibrate-days", "7").stdout
    assert (
        f"column 'Zufluss' has decimal commas ({cells[0]!r}) and decimal points ({cells[1]!r}): each number "
        "is read by its own mark, and one that shows none, '1,234', as "
    ) in got.stderr


def test_header_names_with_commas_in_a_semicolon_export(tmp_path: Path) -> None:
    # 'Zeit;Zufluss, m3/h;Druck, bar' has as many commas as semicolons, and so have its rows
    # ('01.03.2024 00:00;99,6;3,1'): counted in the header, ',' won the tie.
    flows = _flows(days=TWIN_DAYS)
    lines = [f"{t:%d.%m.%Y %H:%M};{f'{q:.1f}'.replace('.', ',')};3,1" for t, q in flows]
    export = _write(tmp_path / "de.csv", "Zeit;Zufluss, m3/h;Druck, bar", lines)
    plain = _plain(tmp_path / "plain.csv", flows)
    got = _flow_leak(export, "--flow", "Zufluss, m3/h", "--calibrate-days", "7")
    assert got.returncode == 0, got.stderr
    assert got.stdout == _flow_leak(plain, "--flow", "inflow", "--calibrate-days", "7").stdout
    got = _burst(export, "--flow", "Zufluss, m3/h", "--pressure", "Druck, bar", "--learn-days", "7")
    assert got.returncode == 0, got.stderr
    assert got.stdout == _burst(plain, "--flow", "inflow", "--learn-days", "7").stdout


def _autumn(offsets: bool) -> list[str]:
    """15-min rows over the October change in Rome, 40 m3/h at night and 100 by day; the second
    pass of 02:00-02:45 on 27 October (after the clocks went back) holds 30."""
    rome = ZoneInfo("Europe/Rome")
    t = datetime(2024, 10, 15, tzinfo=rome).astimezone(UTC)
    lines = []
    while t < datetime(2024, 11, 4, tzinfo=UTC):
        local = t.astimezone(rome)
        q = 40.0 if 1 <= local.hour < 5 else 100.0
        if local.date() == datetime(2024, 10, 27).date() and local.hour == 2 and local.fold:
            q = 30.0
        stamp = local.isoformat(sep=" ", timespec="minutes") if offsets else f"{local:%Y-%m-%d %H:%M}"
        lines.append(f"{stamp},{q}")
        t += timedelta(minutes=15)
    return lines


def test_the_autumn_nights_repeated_hour_counts_twice_when_its_stamps_say_so(tmp_path: Path) -> None:
    # With offsets, 02:00+02:00 and 02:00+01:00 are two instants an hour apart: the second pass (30
    # m3/h) was dropped as "a time given twice", and the night read 40. Without offsets the two
    # passes cannot be told apart: the second is a repeat of the first and is taken once (the docs).
    args = ("--flow", "inflow", "--calibrate-days", "7", "--timezone", "Europe/Rome")
    offsets = _nights(_flow_leak(_write(tmp_path / "offsets.csv", "time,inflow", _autumn(True)), *args))
    assert offsets["2024-10-27"] == "30.000"
    assert {v for n, v in offsets.items() if n != "2024-10-27"} == {"40.000"}
    naive = _nights(_flow_leak(_write(tmp_path / "naive.csv", "time,inflow", _autumn(False)), *args))
    assert set(naive.values()) == {"40.000"}
    assert list(naive) == list(offsets)


def test_a_night_with_a_lone_reading_is_not_judged_unless_it_covers_its_hour(tmp_path: Path) -> None:
    # A lone sample counted as the whole window: a file's first row at 03:45 was its first night's
    # "minimum", and so was a night's only reading left by a gap. Two readings 105 minutes apart
    # in a 15-minute export counted for 210 minutes. Each covers the file's interval now.
    flows = _flows()
    gap = [(t, q) for t, q in flows if not (datetime(2024, 3, 5, 2, 15) <= t < datetime(2024, 3, 5, 4))]
    sparse = [
        (t, q) for t, q in flows if not (datetime(2024, 3, 6, 2, 15) <= t < datetime(2024, 3, 6, 3, 45))
    ]
    late = [(t, q) for t, q in flows if t >= datetime(2024, 3, 1, 3, 45)]
    args = ("--flow", "inflow", "--calibrate-days", "7")
    for name, rows, night in (
        ("gap", gap, "2024-03-05"),
        ("sparse", sparse, "2024-03-06"),
        ("late", late, "2024-03-01"),
    ):
        nights = _nights(_flow_leak(_plain(tmp_path / f"{name}.csv", rows), *args))
        assert nights[night] == "", name
        assert all(v for n, v in nights.items() if n != night), name
    # An hourly export's one reading in a one-hour window covers it: every night is judged.
    hourly = _plain(tmp_path / "hourly.csv", _flows(step_min=60))
    nights = _nights(_flow_leak(hourly, *args, "--night", "02:00-03:00"))
    assert len(nights) == 21
    assert all(nights.values())


def test_the_day_month_warning_looks_past_two_units_rows(tmp_path: Path) -> None:
    # Nine days at the start of a month: 03/04 could be either. The warning looked at the two lines
    # under the header, which here are units and tag rows.
    lines = [f"{t:%d/%m/%Y %H:%M},{q:.1f}" for t, q in _flows(days=9)]
    export = _write(tmp_path / "units.csv", "time,inflow", ["Unit,m3/h", "Tag,FT-101", *lines])
    got = _flow_leak(export, "--flow", "inflow", "--calibrate-days", "3")
    assert got.returncode == 0, got.stderr
    assert "skipping 2 row(s) under the header" in got.stderr
    assert "no date in the file has a day above 12: read as DD/MM/YYYY" in got.stderr
    assert got.stdout.splitlines()[1].startswith("2024-03-01,")


def test_a_loggers_largest_double_is_no_value_and_said_with_its_line(tmp_path: Path) -> None:
    flows = _flows()
    lines = [f"{t:%Y-%m-%d %H:%M},{'1e308' if i == 10 else q}" for i, (t, q) in enumerate(flows)]
    export = _write(tmp_path / "huge.csv", "time,inflow", lines)
    got = _flow_leak(export, "--flow", "inflow", "--calibrate-days", "7")
    assert got.returncode == 0, got.stderr
    assert (
        "1 row(s) with a value of 1e+150 or more skipped: a logger's mark of no value, not a flow "
        "(first: line 12, column 'inflow': '1e308')"
    ) in got.stderr
    every = _write(tmp_path / "every.csv", "time,inflow", [f"{t:%Y-%m-%d %H:%M},1.8e308" for t, _ in flows])
    got = _flow_leak(every, "--flow", "inflow", "--calibrate-days", "7")
    assert got.returncode == 2
    assert got.stdout == ""
    assert got.stderr.count("\n") == 1
    assert "2016 rows hold a value of 1e+150 or more" in got.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--flow", "inflow", "--flow", "inflow"), "--flow 'inflow' is given 2 times"),
        (
            ("--flow", "inflow", "--minus", "outflow", "--minus", "outflow"),
            "--minus 'outflow' is given 2 times",
        ),
        (("--flow", "inflow", "--minus", "inflow"), "column 'inflow' is given both as --flow and as --minus"),
        (
            ("--flow", "inflow", "--pressure", "inflow"),
            "column 'inflow' is given both as --flow and as --pressure",
        ),
        (
            ("--flow", "inflow", "--minus", "outflow", "--pressure", "outflow"),
            "column 'outflow' is given both as --minus and as --pressure",
        ),
    ],
    ids=["flow", "minus", "both", "flow-as-pressure", "minus-as-pressure"],
)
def test_a_column_given_twice_is_refused_not_summed_twice(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    path = _write(
        tmp_path / "q.csv", "time,inflow,outflow", [f"{t:%Y-%m-%d %H:%M},{q},1.0" for t, q in _flows()]
    )
    for got in (_flow_leak(path, *args, "--calibrate-days", "7"), _burst(path, *args)):
        assert got.returncode == 2
        assert got.stdout == ""
        assert said in got.stderr
        assert got.stderr.count("\n") == 1


def test_blank_lines_before_the_header_are_skipped(tmp_path: Path) -> None:
    # A blank first line (an export tool's, or a hand edit) was taken as the header: "the header ''
    # has no ',', ';' or tab separator".
    flows = _flows()
    plain = _plain(tmp_path / "plain.csv", flows)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n" + plain.read_text(encoding="utf-8"), encoding="utf-8")
    for run in (_flow_leak, _burst):
        args = ("--flow", "inflow", "--timezone", "UTC") + (
            ("--calibrate-days", "7") if run is _flow_leak else ()
        )
        want, got = run(plain, *args), run(blank, *args)
        assert got.returncode == 0, got.stderr
        assert got.stdout == want.stdout
