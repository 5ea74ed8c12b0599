"""Night-flow leak detection: the step detector and its reference, the CSV command on SCADA-like
exports, and the processor on meter readings (state kept over restarts, fused with acoustic evidence)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from tests.support.cli import CliRun, edge_agent
from water_edge.core.reading import Event, Reading
from water_edge.models.flow_leak.config import BurstSection, FlowLeakSection
from water_edge.models.flow_leak.detector import FixedThreshold, StepDetector, StepParams
from water_edge.models.flow_leak.glitch import night_glitches
from water_edge.models.flow_leak.processor import FlowLeakProcessor
from water_edge.models.leak.fusion import SiteEvidence
from water_edge.sim.district import District, DistrictLeak, write_csv

pytestmark = pytest.mark.slow

START = date(2024, 1, 1)
HOUR_NS = 3_600_000_000_000


def _series(n: int, steps: dict[int, float], odd: int | None = None, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    level = 100.0
    out = []
    for i in range(n):
        level += steps.get(i, 0.0)
        out.append(level * (1 + rng.normal(0, 0.01)) + (40.0 if i == odd else 0.0))
    return out


def test_each_new_rise_is_its_own_event_with_its_night_and_size_and_one_odd_night_is_not() -> None:
    values = _series(90, {30: 8.0, 60: 8.0}, odd=45)
    det = StepDetector(StepParams(baseline_nights=14))
    rows = [det.update(START + timedelta(days=i), v) for i, v in enumerate(values)]
    events = [r for r in rows if r.event == "leak"]
    assert len(events) == 2  # the second leak, on top of the first, is found too; night 45 is not
    for r, began in zip(events, (30, 60), strict=True):
        assert r.onset == START + timedelta(days=began)
        assert r.added == pytest.approx(8.0, abs=2.0)
        assert (r.night - r.onset).days <= 2  # declared within three nights
    assert all(r.event == "" for r in rows[:14])  # calibration nights only learn


def test_the_fixed_threshold_reference_stays_in_alarm_and_misses_the_second_leak() -> None:
    values = _series(90, {30: 25.0, 60: 25.0})
    rule = FixedThreshold(calibrate_nights=14, rise_pct=20.0)
    events = [r for i, v in enumerate(values) if (r := rule.update(START + timedelta(days=i), v)).event]
    assert [e.night for e in events] == [START + timedelta(days=30)]


def _cli(*args: str) -> CliRun:
    return edge_agent("models", "score", "flow-leak", *args)


def _assert_same_nights_and_leaks(want: CliRun, got: CliRun) -> None:
    """`got` prints the nights `want` does, each night flow within 5 %, and the same leak nights
    (at least one)."""
    want_rows = [line.split(",") for line in want.stdout.splitlines()[1:]]
    got_rows = [line.split(",") for line in got.stdout.splitlines()[1:]]
    assert [r[0] for r in got_rows] == [r[0] for r in want_rows]
    for w, g in zip(want_rows, got_rows, strict=True):
        assert float(g[1]) == pytest.approx(float(w[1]), rel=0.05), (w, g)
    assert [r[4] for r in got_rows] == [r[4] for r in want_rows]
    assert "leak" in [r[4] for r in got_rows]


def test_score_flow_leak_reads_a_european_export_and_prints_one_row_per_night(tmp_path: Path) -> None:
    district = District(3, mean_demand_m3h=300.0, leaks=[DistrictLeak(datetime(2024, 2, 20, 14), 8.0)])
    path = tmp_path / "dma.csv"
    write_csv(district.simulate(60), str(path), sep=";", decimal=",")
    res = _cli("--csv", str(path), "--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow",
               "--pressure", "pressure", "--calibrate-days", "14", "--timezone", "Europe/Rome")  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "date,night_flow,baseline,added,event"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [(START + timedelta(days=i)).isoformat() for i in range(60)]
    leaks = [r for r in rows if r[4] == "leak"]
    assert leaks
    first = date.fromisoformat(leaks[0][0])
    assert date(2024, 2, 21) <= first <= date(2024, 2, 24)
    assert 4.0 <= float(leaks[0][3]) <= 12.0
    assert all(r[4] == "" for r in rows if date.fromisoformat(r[0]) < date(2024, 2, 21))
    bad = _cli("--csv", str(path), "--flow", "inlet", "--calibrate-days", "14")
    assert bad.returncode == 2
    assert "no column(s) inlet" in bad.stderr


def test_score_flow_leak_and_burst_skip_an_exports_title_lines_and_units_row(tmp_path: Path) -> None:
    """SCADA exports often open with their title and the period asked for, and put each column's
    unit under its name: the nights come out as from the table alone, and the warnings say what was
    skipped. Before, the first was read as a one-column header, the second as a bad timestamp."""
    plain = tmp_path / "dma.csv"
    write_csv(District(3, mean_demand_m3h=300.0).simulate(20), str(plain), sep=";", decimal=",")
    header, *rows = plain.read_text().splitlines()
    exported = tmp_path / "exported.csv"
    exported.write_text(
        "\n".join(
            [
                "SCADA export;;",
                "DMA north;from 2024-01-01",
                "",
                header,
                ";" + ";".join(["m3/h"] * (header.count(";"))),
                *rows,
            ]
        )
        + "\n"
    )
    args = ["--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--timezone", "Europe/Rome"]
    want = _cli("--csv", str(plain), *args, "--calibrate-days", "7")
    got = _cli("--csv", str(exported), *args, "--calibrate-days", "7")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert "skipping 2 line(s) before the header" in got.stderr
    assert "skipping 1 row(s) under the header with no numbers in them (units?)" in got.stderr
    burst_want = edge_agent("models", "score", "burst", "--csv", str(plain), *args)
    burst_got = edge_agent("models", "score", "burst", "--csv", str(exported), *args)
    assert burst_got.returncode == 0, burst_got.stderr
    assert burst_got.stdout == burst_want.stdout
    assert "skipping 2 line(s) before the header" in burst_got.stderr


TWIN_ARGS = ("--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--calibrate-days", "14")


def _leak_from_16_january(seed: int) -> dict[str, Any]:
    # 20 days: 14 nights to calibrate, the leak of the 16th declared on the night of the 18th, and
    # eight dates past the 12th to tell the day from the month by.
    district = District(seed, mean_demand_m3h=200.0, leaks=[DistrictLeak(datetime(2024, 1, 16, 14), 8.0)])
    return district.simulate(20)


def _plain_twin(where: Path, columns: dict[str, Any]) -> CliRun:
    """What `score flow-leak` prints for `columns` written as a plain export (ISO times, ',' and '.')."""
    write_csv(columns, str(where / "plain.csv"))
    return _cli("--csv", str(where / "plain.csv"), *TWIN_ARGS)


@pytest.fixture(scope="module")
def district_5(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], CliRun]:
    """District 5 and its plain export's nights: the twin of each country's export below (computed
    once: the command's output is read-only)."""
    columns = _leak_from_16_january(5)
    return columns, _plain_twin(tmp_path_factory.mktemp("district_5"), columns)


@pytest.fixture(scope="module")
def district_9(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], CliRun]:
    """District 9 and its plain export's nights, the twin of each Unicode text export below."""
    columns = _leak_from_16_january(9)
    return columns, _plain_twin(tmp_path_factory.mktemp("district_9"), columns)


@pytest.mark.parametrize(
    ("time_format", "sep", "decimal"),
    [
        ("%d.%m.%Y %H:%M:%S", ";", ","),  # German
        ("%m/%d/%Y %I:%M %p", ",", "."),  # US, 12-hour clock
        ("%Y/%m/%d %H:%M", ",", "."),  # Japanese
        ("%d/%m/%Y %H:%M", ";", ","),  # French, British
        ("%d-%b-%y %H:%M:%S", ",", "."),  # OSIsoft PI: "16-Jan-24 02:15:00"
        ("%b %d, %Y %H:%M", ";", "."),  # "Jan 16, 2024 02:15"
        ("%d.%m.%Y %H:%M:%S,000", ";", ","),  # milliseconds after a decimal comma
        ("%d/%m/%Y %H:%M:%S.000", ",", "."),  # ... and after a point
    ],
    ids=["de", "us", "jp", "fr", "pi", "month-named", "de-ms", "fr-ms"],
)
def test_score_flow_leak_reads_each_countrys_date_order_alike(
    tmp_path: Path, time_format: str, sep: str, decimal: str, district_5: tuple[dict[str, Any], CliRun]
) -> None:
    # A month-first US export must not be read day first: 02/01 is the 1st of February in
    # Paris and the 2nd of January in Houston; the column's dates with a field above 12 tell.
    columns, want = district_5
    local = tmp_path / "local.csv"
    write_csv(columns, str(local), sep=sep, decimal=decimal, time_format=time_format)
    got = _cli("--csv", str(local), *TWIN_ARGS)
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert "warning" not in got.stderr
    assert any(line.endswith(",leak") for line in got.stdout.splitlines())


@pytest.mark.parametrize("decimal", [".", ","], ids=["en", "de"])
def test_score_flow_leak_reads_excels_unicode_text_export(
    tmp_path: Path, decimal: str, district_9: tuple[dict[str, Any], CliRun]
) -> None:
    # "Unicode text" is UTF-16 with a byte-order mark, tab-separated, numbers as the locale writes
    # them; it was "not a text file (invalid start byte)".
    columns, want = district_9
    export = tmp_path / "export.txt"
    write_csv(columns, str(export), sep="\t", decimal=decimal)
    export.write_text(export.read_text(), encoding="utf-16")
    got = _cli("--csv", str(export), *TWIN_ARGS)
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert any(line.endswith(",leak") for line in got.stdout.splitlines())


def test_score_flow_leak_says_when_nothing_tells_day_from_month(tmp_path: Path) -> None:
    # Nine days of early-month dates: 03/04 could be either; read day first, and said so.
    columns = District(6, mean_demand_m3h=100.0).simulate(9)
    path = tmp_path / "short.csv"
    write_csv(columns, str(path), time_format="%d/%m/%Y %H:%M")
    res = _cli("--csv", str(path), "--flow", "inflow_a", "--calibrate-days", "3")
    assert res.returncode == 0, res.stderr
    assert "read as DD/MM/YYYY" in res.stderr
    assert res.stdout.splitlines()[1].startswith(START.isoformat())


def test_score_flow_leak_takes_offset_timestamps_across_dst(tmp_path: Path) -> None:
    # Hourly UTC-offset stamps across the October change in Rome: nights stay one per date.
    lines = ["time,q"]
    t = datetime.fromisoformat("2024-10-10T00:00:00+00:00")
    for h in range(24 * 30):
        when = t + timedelta(hours=h)
        lines.append(f"{when.isoformat()},{50 + 10 * np.sin(h / 24 * 2 * np.pi):.2f}")
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    res = _cli("--csv", str(path), "--flow", "q", "--calibrate-days", "7", "--timezone", "Europe/Rome")
    assert res.returncode == 0, res.stderr
    dates = [line.split(",")[0] for line in res.stdout.splitlines()[1:]]
    assert "2024-10-27" in dates
    assert len(dates) == len(set(dates))


def _readings(days: int, leak_day: int) -> list[Reading]:
    leak = DistrictLeak(datetime(2024, 1, 1) + timedelta(days=leak_day, hours=12), 12.0)
    d = District(5, mean_demand_m3h=400.0, prv_changes_per_year=0.0, leaks=[leak])
    cols = d.simulate(days)
    out = []
    for i, when in enumerate(cols["time"]):
        ts = int(when.replace(tzinfo=None).timestamp() * 1e9)  # naive local -> the test's zone: UTC
        for tag in ("inflow_a", "inflow_b", "outflow", "pressure"):
            out.append(Reading("plc", tag, ts, float(cast(npt.NDArray[np.float64], cols[tag])[i])))
    return out


def _north_district() -> tuple[FlowLeakSection, list[Reading], list[Reading]]:
    """A district with a 12 m3/h leak from day 25: its section, its readings before 21 January
    (learning, then armed) and after."""
    section = FlowLeakSection(
        name="dma-north", inflow=["plc/inflow_a", "inflow_b"], outflow=["outflow"], pressure="pressure",
        timezone="UTC", sample_s=900, stale_after_s=1800, baseline_nights=10,
    )  # fmt: skip
    readings = _readings(40, leak_day=25)
    split = next(i for i, r in enumerate(readings) if r.ts_ns >= int(datetime(2024, 1, 21).timestamp() * 1e9))
    return section, readings[:split], readings[split:]


async def _feed(readings: list[Reading]) -> AsyncIterator[tuple[str, list[Reading]]]:
    yield ("plc", readings)


async def test_the_processor_finds_a_rise_in_the_readings_keeps_state_and_fuses_acoustic_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    section, before, after = _north_district()
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    first = FlowLeakProcessor([section], tmp_path)
    await first.run(_feed(before), emit)
    assert first.health().districts["dma-north"].state == "armed"
    # The hydrophone at the same site raised a leak the night before the flow rose.
    SiteEvidence(tmp_path, "dma-north").record("acoustic", date(2024, 1, 26), {"sensor": "hyd.A"})
    again = FlowLeakProcessor([section], tmp_path)  # a restart keeps the baseline
    await again.run(_feed(after), emit)
    nights = [e for e in events if e.kind == "night_flow"]
    assert len(nights) >= 38
    rises = [e for e in events if e.kind == "flow_leak"]
    assert len(rises) == 1
    rise = rises[0]
    assert rise.detail["began_night"] in ("2024-01-27", "2024-01-28")
    assert rise.detail["added_m3h"] == pytest.approx(12.0, rel=0.35)
    assert rise.severity == "critical"
    assert rise.detail["acoustic"]["sensor"] == "hyd.A"
    line, noise_line = again.health().status_lines()[:2]
    assert line.startswith("dma-north: armed, baseline ")
    assert line.endswith("1 rise(s)")
    # What its noise lets it report, so an engineer knows what a quiet district can still hide.
    district = again.health().districts["dma-north"]
    assert district.night_noise_pct is not None
    assert district.smallest_rise_m3h is not None
    assert district.baseline_m3h is not None
    assert district.smallest_rise_m3h >= 0.04 * district.baseline_m3h  # min_added_pct, 4 %
    assert noise_line == (
        f"dma-north: night-to-night noise {district.night_noise_pct:.1f} %: set for rises of "
        f"{district.smallest_rise_m3h:.1f} m3/h and more"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("state.json", {"step": [1, 2]}),
        ("state.json", {"nights": "many"}),
        ("burst.json", {"format": "burst/1", "slot_minutes": 15, "alarm_since": "yesterday"}),
    ],
    ids=["step not an object", "nights not a number", "burst onset not a time"],
)
def test_a_stored_state_of_another_shape_is_named_and_learnt_again_not_a_crash(
    tmp_path: Path, name: str, content: dict[str, Any]
) -> None:
    # Before, JSON of another shape (a damaged card, a foreign file) raised as the processor was
    # built, at every start of the agent.
    section = FlowLeakSection(name="dma-north", inflow=["inflow"], burst=BurstSection(enabled=True))
    path = tmp_path / "flow_leak" / "dma-north" / name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    with capture_logs() as logs:
        district = FlowLeakProcessor([section], tmp_path).health().districts["dma-north"]
    assert (district.nights, district.baseline_m3h) == (0, None)
    assert district.last_error is not None
    assert district.last_error.endswith(f"({path})")
    assert [e["path"] for e in logs if e["event"].endswith("state_unusable")] == [str(path)]


async def test_a_card_that_refuses_writes_costs_the_stored_state_not_the_flow_leak_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the OSError of storing the district's state after a night (a full card) ended the
    # night before its events: the processor crashed and the rise was never reported. Here a
    # directory stands where the state and the site's evidence go (the same OSError path).
    monkeypatch.setenv("TZ", "UTC")
    section, before, after = _north_district()
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    proc = FlowLeakProcessor([section], tmp_path)
    await proc.run(_feed(before), emit)
    state = tmp_path / "flow_leak" / "dma-north" / "state.json"
    state.unlink()
    state.mkdir()
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "dma-north.json").mkdir()
    await proc.run(_feed(after), emit)
    rises = [e for e in events if e.kind == "flow_leak"]
    assert len(rises) == 1  # found and reported all the same
    assert rises[0].detail["added_m3h"] == pytest.approx(12.0, rel=0.35)
    district = proc.health().districts["dma-north"]
    assert district.last_error is not None
    assert district.last_error.startswith("state not stored: Is a directory")
    assert f"dma-north: {district.last_error}" in proc.health().status_lines()


async def test_a_meters_volume_register_gives_the_same_nights_as_its_flow_and_survives_a_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bulk meter read over M-Bus gives its index (m3, 0.1 m3 steps), not a flow; on day 15 it is
    # replaced and its index starts again from 0. The nights must come out as from the flow itself.
    monkeypatch.setenv("TZ", "UTC")
    readings = _readings(40, leak_day=25)
    total, index, replaced = 54_321.0, [], False
    for r in readings:
        if r.tag == "inflow_a":
            if not replaced and r.ts_ns - readings[0].ts_ns >= 15 * 86_400 * 10**9:
                total, replaced = 0.0, True  # the new meter
            total += float(r.value) * 0.25  # type: ignore[arg-type]  # 15 min of flow
            index.append(dataclasses.replace(r, tag="inflow_a_index", value=round(total, 1)))
    common = {"name": "dma", "outflow": ["outflow"], "timezone": "UTC", "sample_s": 900,
              "stale_after_s": 1800, "baseline_nights": 10}  # fmt: skip
    by_flow = FlowLeakSection(inflow=["inflow_a", "inflow_b"], **common)  # type: ignore[arg-type]
    by_index = FlowLeakSection(inflow=["inflow_a_index", "inflow_b"], volume=["inflow_a_index"], **common)  # type: ignore[arg-type]

    async def run(
        section: FlowLeakSection, rs: list[Reading], where: Path
    ) -> tuple[list[Event], FlowLeakProcessor]:
        events: list[Event] = []

        async def emit(e: Event) -> None:
            events.append(e)

        async def feed() -> AsyncIterator[tuple[str, list[Reading]]]:
            yield ("plc", rs)

        proc = FlowLeakProcessor([section], where)
        await proc.run(feed(), emit)
        return events, proc

    flow_events, _ = await run(by_flow, readings, tmp_path / "flow")
    merged = sorted([*readings, *index], key=lambda r: r.ts_ns)  # as a poll of both devices delivers them
    index_events, proc = await run(by_index, merged, tmp_path / "index")
    want = {e.detail["night"]: e.detail["night_flow_m3h"] for e in flow_events if e.kind == "night_flow"}
    got = {e.detail["night"]: e.detail["night_flow_m3h"] for e in index_events if e.kind == "night_flow"}
    assert len(got) >= 38
    assert all(got[n] == pytest.approx(want[n], rel=0.02) for n in got)
    rises = [e.detail["began_night"] for e in index_events if e.kind == "flow_leak"]
    assert rises == [e.detail["began_night"] for e in flow_events if e.kind == "flow_leak"]
    assert proc.health().districts["dma"].volume_resets == 1


async def test_an_hourly_volume_register_gives_every_night_at_the_default_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A battery M-Bus bulk meter read once an hour, the district's only inlet, default sampling
    # (1 min, 5 min before stale): the hour's flow holds until the next reading is due.
    monkeypatch.setenv("TZ", "UTC")
    total, index = 0.0, []
    for r in _readings(30, leak_day=20):
        if r.tag == "inflow_a":
            total += float(r.value) * 0.25  # type: ignore[arg-type]  # 15 min of flow
            if r.ts_ns % (3600 * 10**9) == 0:
                index.append(dataclasses.replace(r, tag="index", value=round(total, 1)))
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    async def feed() -> AsyncIterator[tuple[str, list[Reading]]]:
        yield ("mbus", index)

    section = FlowLeakSection(
        name="dma", inflow=["index"], volume=["index"], timezone="UTC", baseline_nights=10
    )
    proc = FlowLeakProcessor([section], tmp_path)
    await proc.run(feed(), emit)
    nights = [e.detail["night_flow_m3h"] for e in events if e.kind == "night_flow"]
    assert len(nights) >= 28
    assert all(v is not None and v > 0 for v in nights)
    rises = [e.detail["began_night"] for e in events if e.kind == "flow_leak"]
    assert rises
    assert rises[0] in ("2024-01-21", "2024-01-22", "2024-01-23")


def test_config_refuses_a_volume_tag_that_is_neither_inflow_nor_outflow() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"volume tag.* not in inflow or outflow: b"):
        FlowLeakSection(name="d", inflow=["a"], volume=["b"])


def test_score_flow_leak_reads_flow_from_a_volume_column_and_refuses_one_given_as_flow(
    tmp_path: Path,
) -> None:
    district = District(7, mean_demand_m3h=150.0, leaks=[DistrictLeak(datetime(2024, 1, 25, 14), 8.0)])
    columns = district.simulate(40)
    flows, index = tmp_path / "flow.csv", tmp_path / "index.csv"
    write_csv(columns, str(flows))
    total = np.round(1e5 + np.cumsum(np.asarray(columns["inflow_a"]) * 0.25), 1)
    with_index = {**columns, "inflow_a": total}
    write_csv(with_index, str(index))
    args = ("--flow", "inflow_a", "--calibrate-days", "14")
    want = _cli("--csv", str(flows), *args)
    got = _cli("--csv", str(index), *args, "--volume")
    assert got.returncode == 0, got.stderr
    rows = {line.split(",")[0]: line.split(",") for line in got.stdout.splitlines()[1:]}
    for line in want.stdout.splitlines()[1:]:
        night, flow, *_ = line.split(",")
        assert float(rows[night][1]) == pytest.approx(float(flow), rel=0.02)
    assert [r[0] for r in rows.values() if r[4] == "leak"] == [
        line.split(",")[0] for line in want.stdout.splitlines()[1:] if line.endswith(",leak")
    ]
    refused = _cli("--csv", str(index), *args)
    assert refused.returncode == 2
    assert "volume totaliser" in refused.stderr
    assert "--volume" in refused.stderr


def test_score_flow_leak_reads_a_newest_first_or_overlapping_export_as_the_oldest_first_one(
    tmp_path: Path,
) -> None:
    # Historians often export newest first; read as it came, every night's MNF averaged samples
    # running backwards and was left blank (and with --volume no interval was read at all).
    district = District(8, mean_demand_m3h=120.0, leaks=[DistrictLeak(datetime(2024, 1, 22, 14), 8.0)])
    columns = district.simulate(30)
    total = np.round(1e5 + np.cumsum(np.asarray(columns["inflow_a"]) * 0.25), 1)
    args = ("--flow", "inflow_a", "--calibrate-days", "14")
    for name, cols, extra in (
        ("flow", columns, ()),
        ("index", {**columns, "inflow_a": total}, ("--volume",)),
    ):
        path = tmp_path / f"{name}.csv"
        write_csv(cols, str(path))
        header, *rows = path.read_text().splitlines()
        newest_first, overlapping = tmp_path / f"{name}-desc.csv", tmp_path / f"{name}-twice.csv"
        newest_first.write_text("\n".join([header, *reversed(rows)]) + "\n")
        overlapping.write_text(
            "\n".join([header, *rows[: len(rows) // 2 + 500], *rows[len(rows) // 2 :]]) + "\n"
        )
        want = _cli("--csv", str(path), *args, *extra)
        assert want.returncode == 0, want.stderr
        assert any(line.endswith(",leak") for line in want.stdout.splitlines())
        for other in (newest_first, overlapping):
            got = _cli("--csv", str(other), *args, *extra)
            assert (got.returncode, got.stdout) == (0, want.stdout), (other.name, got.stderr)
    refused = _cli("--csv", str(tmp_path / "index-desc.csv"), *args)  # a totaliser, given as flow
    assert refused.returncode == 2
    assert "volume totaliser" in refused.stderr


def test_config_names_the_time_zone_and_refuses_a_tag_both_in_and_out() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Base'"):
        FlowLeakSection(name="d", inflow=["a"], timezone="Mars/Base")
    with pytest.raises(ValidationError, match="both inflow and outflow: a"):
        FlowLeakSection(name="d", inflow=["a"], outflow=["a"])


@pytest.mark.parametrize("scale", [0.2, 1.0, 20.0])
def test_a_rise_of_a_share_of_the_night_flow_is_found_alike_in_small_and_big_districts(scale: float) -> None:
    # The detector works on log flow with the district's own noise: 20 m3/h or 2000, same answer.
    values = [v * scale for v in _series(60, {30: 8.0})]
    det = StepDetector(StepParams(baseline_nights=14))
    events = [r for i, v in enumerate(values) if (r := det.update(START + timedelta(days=i), v)).event]
    assert [e.onset for e in events] == [START + timedelta(days=30)]
    assert events[0].added == pytest.approx(8.0 * scale, rel=0.25)


def test_a_state_saved_by_the_previous_detector_keeps_its_baseline() -> None:
    old = {"learning": [], "baseline": 100.0, "sigma": 2.0, "weekend_offset": 5.0, "s_up": 1.0,
           "s_down": 0.0, "onset": None, "since_onset": [], "rises": 2}  # fmt: skip
    det = StepDetector.from_dict(old, StepParams(baseline_nights=14))
    assert det.state == "armed"
    assert det.baseline == pytest.approx(100.0)
    assert det.rises == 2
    weekday = date(2024, 3, 4)  # a Monday night: no weekend offset
    assert det.update(weekday, 101.0).baseline == pytest.approx(100.0, abs=0.2)
    again = StepDetector.from_dict(det.to_dict(), StepParams(baseline_nights=14))
    assert again.baseline == pytest.approx(det.baseline)


def test_score_flow_leak_refuses_a_column_name_given_twice(tmp_path: Path) -> None:
    # Before, the first of the two was read, silently: the other meter never counted.
    path = tmp_path / "twice.csv"
    path.write_text("time;inflow;inflow\n2024-01-01T00:00;1,5;2,5\n", encoding="utf-8")
    got = _cli("--csv", str(path), "--flow", "inflow", "--calibrate-days", "7")
    assert got.returncode == 2
    assert got.stderr.strip().endswith(
        "column 'inflow' appears 2 times (columns 2, 3): rename them in the header so that each "
        "name says which meter it is"
    )


def test_score_flow_leak_skips_a_meters_error_codes_instead_of_taking_them_for_the_night_flow(
    tmp_path: Path,
) -> None:
    # Before, one -9999 in a night window was that night's minimum: printed as its night flow,
    # and the night went unjudged without a word.
    district = District(4, mean_demand_m3h=300.0, leaks=[DistrictLeak(datetime(2024, 1, 20, 14), 10.0)])
    clean, coded = tmp_path / "clean.csv", tmp_path / "coded.csv"
    write_csv(district.simulate(30), str(clean), sep=";", decimal=",")
    lines = clean.read_text(encoding="utf-8").splitlines()
    marked = 0
    for i, line in enumerate(lines):
        cells = line.split(";")
        if cells[0].startswith(("2024-01-12 03:00", "2024-01-23 02:30")):
            cells[1] = "-9999"
            marked += 1
        elif cells[0].startswith("2024-01-16 03:30"):
            cells[4] = "-999,0"  # the pressure's error code
            marked += 1
        lines[i] = ";".join(cells)
    coded.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert marked == 3
    args = ("--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--pressure", "pressure",
            "--calibrate-days", "10")  # fmt: skip
    want, got = _cli("--csv", str(clean), *args), _cli("--csv", str(coded), *args)
    assert want.returncode == got.returncode == 0, got.stderr
    assert "3 row(s) holding a meter error code (-999, -9999, -99999) skipped" in got.stderr
    assert "error code" not in want.stderr
    _assert_same_nights_and_leaks(want, got)


def test_score_flow_leak_warns_of_nights_with_no_positive_night_flow(tmp_path: Path) -> None:
    district = District(4, mean_demand_m3h=300.0)
    path = tmp_path / "dma.csv"
    write_csv(district.simulate(14), str(path))
    # The district's outflow given as its inflow: a net flow below zero every night.
    got = _cli("--csv", str(path), "--flow", "outflow", "--minus", "inflow_a", "--calibrate-days", "5")
    assert got.returncode == 0, got.stderr
    assert "14 night(s) with a night flow of zero or less, not judged (first 2024-01-01)" in got.stderr


async def test_the_processor_takes_a_meters_error_code_as_missing_and_counts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    section, before, _ = _north_district()
    night = int(datetime(2024, 1, 8, 3).timestamp() * 1e9)
    coded = [
        dataclasses.replace(r, value=-9999.0)
        if r.tag == "inflow_a" and night <= r.ts_ns < night + HOUR_NS
        else r
        for r in before
    ]
    replaced = sum(1 for a, b in zip(before, coded, strict=True) if a is not b)
    assert replaced >= 2

    async def night_flows(readings: list[Reading], state: Path) -> tuple[dict[str, float], FlowLeakProcessor]:
        events: list[Event] = []

        async def emit(e: Event) -> None:
            events.append(e)

        proc = FlowLeakProcessor([section], state)
        await proc.run(_feed(readings), emit)
        return {e.detail["night"]: e.detail["night_flow_m3h"] for e in events if e.kind == "night_flow"}, proc

    want, _ = await night_flows(before, tmp_path / "clean")
    got, proc = await night_flows(coded, tmp_path / "coded")
    assert got.keys() == want.keys()
    assert got["2024-01-08"] == pytest.approx(want["2024-01-08"], rel=0.05)
    assert all(v > 0 for v in got.values())
    assert proc.health().districts["dma-north"].error_codes == replaced


async def _run(
    section: FlowLeakSection, readings: list[Reading], state: Path
) -> tuple[list[Event], FlowLeakProcessor]:
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    proc = FlowLeakProcessor([section], state)
    await proc.run(_feed(readings), emit)
    return events, proc


def _nights(events: list[Event]) -> dict[str, dict[str, Any]]:
    return {e.detail["night"]: e.detail for e in events if e.kind == "night_flow"}


def _rises(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.detail["night"], e.detail["began_night"]) for e in events if e.kind == "flow_leak"]


@dataclasses.dataclass(frozen=True)
class _North:
    """The north district's section, its readings (TZ=UTC) and what a processor made of them."""

    section: FlowLeakSection
    readings: list[Reading]
    events: list[Event]
    samples: int


@pytest.fixture(scope="module")
def north(tmp_path_factory: pytest.TempPathFactory) -> _North:
    """The north district processed as simulated: the clean twin each changed run below is
    compared with, processed once (its events and figures are read-only)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "UTC")
        section, before, after = _north_district()
        events, proc = asyncio.run(_run(section, before + after, tmp_path_factory.mktemp("north")))
    return _North(section, before + after, events, proc.health().districts["dma-north"].samples)


async def _north_with_one_reading_changed(
    north: _North, tmp_path: Path, tag: str, at: datetime, change: Callable[[float], float]
) -> tuple[list[Event], FlowLeakProcessor]:
    """The north district's events with the one `tag` reading at `at` changed, and its processor."""
    ts = int(at.timestamp() * 1e9)
    changed = [
        dataclasses.replace(r, value=change(float(r.value))) if r.tag == tag and r.ts_ns == ts else r  # type: ignore[arg-type]
        for r in north.readings
    ]
    return await _run(north.section, changed, tmp_path / "changed")


@pytest.mark.parametrize("factor", [1000.0, -1000.0], ids=["spike", "negative"])
async def test_one_glitched_night_reading_changes_no_night_and_no_event_without_burst_detection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factor: float, north: _North
) -> None:
    # Before, the glitch rule needed the armed burst detector's mean flow: with burst detection off,
    # one inflow reading of -1000x at 03:00 on the night the leak began made that night's flow
    # -83,191 m3/h; the night went unjudged and the rise was declared a night late, dated a night
    # late. One of +1000x left the minimum alone but was not counted.
    monkeypatch.setenv("TZ", "UTC")
    want = north.events
    got, proc = await _north_with_one_reading_changed(
        north, tmp_path, "inflow_a", datetime(2024, 1, 27, 3), lambda v: v * factor
    )
    want_nights, got_nights = _nights(want), _nights(got)
    assert got_nights.keys() == want_nights.keys()
    for night, w in want_nights.items():
        g = got_nights[night]
        assert g["night_flow_m3h"] == pytest.approx(w["night_flow_m3h"], rel=0.05), night
    assert _rises(got) == _rises(want) == [("2024-01-28", "2024-01-27")]
    district = proc.health().districts["dma-north"]
    assert district.spikes == 1
    assert "dma-north: 1 glitched sample(s) skipped" in proc.health().status_lines()


async def test_a_sustained_rise_of_many_times_the_night_flow_is_not_skipped_as_a_glitch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A main bursting at 03:15: three samples of 15 times the night flow before the window ends,
    # more than the two in a row a glitch may last. The night keeps them, and the next nights
    # report the rise.
    monkeypatch.setenv("TZ", "UTC")
    section, _, _ = _north_district()
    burst = DistrictLeak(datetime(2024, 1, 27, 3, 15), 850.0)
    cols = District(5, mean_demand_m3h=400.0, prv_changes_per_year=0.0, leaks=[burst]).simulate(32)
    times = cols["time"]
    assert isinstance(times, list)
    readings = [
        Reading("plc", tag, int(when.timestamp() * 1e9), float(np.asarray(cols[tag])[i]))
        for i, when in enumerate(times)
        for tag in ("inflow_a", "inflow_b", "outflow", "pressure")
    ]
    events, proc = await _run(section, readings, tmp_path)
    nights = _nights(events)
    assert nights["2024-01-26"]["night_flow_m3h"] < 100
    assert nights["2024-01-28"]["night_flow_m3h"] > 700
    rises = [e for e in events if e.kind == "flow_leak"]
    assert [(e.detail["night"], e.detail["began_night"]) for e in rises] == [("2024-01-29", "2024-01-28")]
    assert rises[0].detail["added_m3h"] == pytest.approx(850.0, rel=0.3)
    assert proc.health().districts["dma-north"].spikes == 0


@pytest.mark.parametrize("change", [1000.0, 0.0], ids=["spike", "zero"])
async def test_one_glitched_pressure_reading_does_not_distort_the_corrected_night_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: float, north: _North
) -> None:
    # Before, a night's pressure was the mean of its samples: one pressure reading of 1000x at
    # 03:00 on an armed night made its pressure 504 bar and its corrected flow 0.56 m3/h against
    # 70.6, and the leak was dated two nights late; one of 0 (a transmitter's dropout) gave a
    # corrected flow 14 % high and a rise of 18.1 m3/h against 13.4.
    monkeypatch.setenv("TZ", "UTC")
    want = north.events
    got, _ = await _north_with_one_reading_changed(
        north, tmp_path, "pressure", datetime(2024, 1, 28, 3), lambda v: v * change
    )
    w, g = _nights(want)["2024-01-28"], _nights(got)["2024-01-28"]
    assert g["pressure"] == pytest.approx(w["pressure"], rel=0.01)
    assert g["night_flow_corrected_m3h"] == pytest.approx(w["night_flow_corrected_m3h"], rel=0.02)
    assert _rises(got) == _rises(want)
    added = [e.detail["added_m3h"] for e in got if e.kind == "flow_leak"]
    assert added == pytest.approx([e.detail["added_m3h"] for e in want if e.kind == "flow_leak"], rel=0.05)


def _district_export_and_edited(
    tmp_path: Path, edits: dict[str, Callable[[list[str]], None]]
) -> tuple[Path, Path]:
    """A district's 30 days with a leak from 20 January as CSV, and a copy whose rows stamped as
    `edits`' keys have their cells changed by their functions."""
    district = District(4, mean_demand_m3h=300.0, leaks=[DistrictLeak(datetime(2024, 1, 20, 14), 10.0)])
    clean, edited = tmp_path / "clean.csv", tmp_path / "edited.csv"
    write_csv(district.simulate(30), str(clean))
    lines = clean.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        cells = line.split(",")
        if cells[0] in edits:
            edits[cells[0]](cells)
            lines[i] = ",".join(cells)
    edited.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return clean, edited


def test_score_flow_leak_skips_an_isolated_glitch_in_a_nights_flow_and_pressure(tmp_path: Path) -> None:
    # Before, one flow cell of -1000x in a night window was that night's "night flow" (-70,000
    # m3/h, the night unjudged), and one pressure cell of 1000x made that night's pressure-corrected
    # flow a hundredth of itself.
    def flow_glitch(cells: list[str]) -> None:
        cells[1] = f"{float(cells[1]) * -1000:.3f}"

    def pressure_glitch(cells: list[str]) -> None:
        cells[4] = f"{float(cells[4]) * 1000:.3f}"

    clean, glitched = _district_export_and_edited(
        tmp_path, {"2024-01-21 03:00": flow_glitch, "2024-01-22 02:30": pressure_glitch}
    )
    args = ("--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--pressure", "pressure",
            "--calibrate-days", "10")  # fmt: skip
    want, got = _cli("--csv", str(clean), *args), _cli("--csv", str(glitched), *args)
    assert want.returncode == got.returncode == 0, got.stderr
    assert "1 night sample(s) beyond 10x the night's median flow, or below minus half of it" in got.stderr
    assert "glitch" not in want.stderr
    _assert_same_nights_and_leaks(want, got)


def _clock_ahead_until(readings: list[Reading], ahead_ns: int, corrected_ns: int) -> list[Reading]:
    """`readings` as a gateway stamps them whose clock runs `ahead_ns` fast until it is corrected."""
    return [
        dataclasses.replace(r, ts_ns=r.ts_ns + ahead_ns) if r.ts_ns < corrected_ns else r for r in readings
    ]


async def test_a_clock_stepped_back_restarts_sampling_at_the_readings_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, north: _North
) -> None:
    # A gateway without a real-time clock ran 25 h 7 min ahead until NTP corrected it at noon on
    # 15 January. Before, sampling waited for reading time to catch up with the next sample due:
    # 25 hours without a sample, and a night lost, without a word.
    monkeypatch.setenv("TZ", "UTC")
    ahead, corrected = (25 * 3600 + 7 * 60) * 10**9, int(datetime(2024, 1, 15, 12).timestamp() * 1e9)
    stepped = _clock_ahead_until(north.readings, ahead, corrected)
    want = north.events
    with capture_logs() as logs:
        got, proc = await _run(north.section, stepped, tmp_path / "stepped")
    # Every night of the district is judged once; the nights after the step are named by the
    # corrected clock (so the night of 16 January, named ahead before, is named again).
    got_nights = [e.detail["night"] for e in got if e.kind == "night_flow"]
    assert len(got_nights) == len([e for e in want if e.kind == "night_flow"])
    assert got_nights.count("2024-01-16") == 2
    assert _nights(got)["2024-01-20"]["night_flow_m3h"] == _nights(want)["2024-01-20"]["night_flow_m3h"]
    assert _rises(got) == _rises(want)
    district = proc.health().districts["dma-north"]
    assert district.clock_steps_back == 1
    assert "dma-north: clock stepped back 1 time(s): sampling went on from the readings' time" in (
        proc.health().status_lines()
    )
    steps = [e for e in logs if e["event"] == "flow_leak.clock_stepped_back"]
    assert len(steps) == 1
    assert steps[0]["log_level"] == "warning"
    assert steps[0]["step_s"] == pytest.approx(ahead / 1e9, abs=900)
    assert district.samples == north.samples  # before: a night's fewer


async def test_a_clock_stepped_back_inside_a_night_keeps_its_samples_in_time_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, north: _North
) -> None:
    # 40 minutes ahead, corrected at 03:00 on the night of 20 January: the samples the night took
    # stamped after the corrected time are dropped (they would come again, out of order), the
    # earlier ones kept; the night is judged once, with the samples it has.
    monkeypatch.setenv("TZ", "UTC")
    ahead, corrected = 40 * 60 * 10**9, int(datetime(2024, 1, 20, 3).timestamp() * 1e9)
    stepped = _clock_ahead_until(north.readings, ahead, corrected)
    want = north.events
    with capture_logs() as logs:
        got, proc = await _run(north.section, stepped, tmp_path / "stepped")
    # Readings every 15 min: the last one stamped ahead says 03:25 (a step back of 25 min), and the
    # two samples the night took at 03:00 or later by the clock running ahead are dropped.
    (step,) = [e for e in logs if e["event"] == "flow_leak.clock_stepped_back"]
    assert (step["step_s"], step["night_samples_dropped"]) == (1500.0, 2)
    got_nights = [e.detail["night"] for e in got if e.kind == "night_flow"]
    assert got_nights == [e.detail["night"] for e in want if e.kind == "night_flow"]
    assert _nights(got)["2024-01-20"]["night_flow_m3h"] == pytest.approx(
        _nights(want)["2024-01-20"]["night_flow_m3h"], rel=0.05
    )
    assert proc.health().districts["dma-north"].clock_steps_back == 1


def test_a_glitch_is_at_most_two_samples_in_a_row_beyond_ten_times_the_nights_median() -> None:
    q = 50.0
    assert night_glitches([q, q, -1000 * q, q, q]) == [False, False, True, False, False]
    assert night_glitches([q, q, q, 20 * q, 20 * q, q]) == [False, False, False, True, True, False]
    assert not any(night_glitches([q] * 5 + [20 * q] * 3))  # three in a row: flow (a burst)
    assert not any(night_glitches([q, -1000 * q]))  # two samples have no median to go by
    assert not any(night_glitches([-q, -q, 1000 * q]))  # a night's median at or below zero: none


def test_a_nights_sample_with_its_sign_flipped_is_a_glitch_and_a_net_flows_noise_below_zero_is_not() -> None:
    # A register read as signed, or a poll scaled wrong, gives the night's own flow negated: before,
    # that one sample was the night's minimum and left the night unjudged ("night flow of zero or
    # less").
    q = 40.0
    assert night_glitches([q, 41.0, -41.0, q, 39.0]) == [False, False, True, False, False]
    assert night_glitches([q, -q, -q, q, q, q]) == [False, True, True, False, False, False]
    assert not any(night_glitches([q, -q, -q, -q, q, q, q]))  # three in a row: flow (outflow meter?)
    # Two meters' noise around a small net flow dips below zero: flow, not glitches.
    assert not any(night_glitches([2.0, 1.5, -0.8, 2.5, 2.2, -0.5]))


def test_score_flow_leak_judges_a_night_with_one_sign_flipped_sample(tmp_path: Path) -> None:
    def net_flow_flipped(cells: list[str]) -> None:  # through inflow_b's cell: inflows less the outflow
        cells[2] = f"{-float(cells[1]) - float(cells[2]) + float(cells[3]):.3f}"

    clean, flipped = _district_export_and_edited(tmp_path, {"2024-01-21 03:00": net_flow_flipped})
    args = ("--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--calibrate-days", "10")
    want, got = _cli("--csv", str(clean), *args), _cli("--csv", str(flipped), *args)
    assert want.returncode == got.returncode == 0, got.stderr
    assert "zero or less" not in got.stderr
    assert "1 night sample(s) beyond 10x the night's median flow, or below minus half of it" in got.stderr
    _assert_same_nights_and_leaks(want, got)
