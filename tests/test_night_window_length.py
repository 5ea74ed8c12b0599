"""A night window is at most 12 hours. A longer one is a night written the wrong way round
(night_start = "04:00", night_end = "02:00" is the 22 hours of day around 02:00-04:00): refused by
`check-config`, `run` and `score flow-leak --night` alike, with the window, its length and the way
round that is a night. A night across midnight (23:00-05:00) is a night."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import edge_agent
from tests.support.config_checks import refused_everywhere
from tests.support.testing import write_agent_config
from tests.test_config import GOOD
from tests.test_config import write as write_config
from tests.test_config_references import meter_group
from tests.test_flow_leak_exports import _flow_leak, _flows, _plain
from tests.test_processors import AUDIO, PLC, problems_for
from water_edge.agent.config import load_config
from water_edge.drivers.audio.config import AudioConfig
from water_edge.models.nightwindow import NightWindow

FIX = "a night window is at most 12 h (it may cross midnight, e.g. 23:00-05:00); "
KEYS_REVERSED = "night_start = '04:00', night_end = '02:00' is a 22 h night: " + FIX
KEYS_FIX = "did you mean night_start = '02:00', night_end = '04:00' (2 h)?"


@pytest.mark.parametrize(("text", "hours"), [("23:00-05:00", 6), ("18:00-06:00", 12), ("01:00-05:00", 4)])
def test_a_night_of_up_to_12_hours_is_a_night_across_midnight_too(text: str, hours: int) -> None:
    assert NightWindow.parse(text).length_min == hours * 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("04:00-02:00", "04:00-02:00 is a 22 h night: " + FIX + "did you mean 02:00-04:00 (2 h)?"),
        ("06:00-00:00", "06:00-00:00 is a 18 h night: " + FIX + "did you mean 00:00-06:00 (6 h)?"),
        # The other way round would be a day (06:00-17:30): no swap is offered.
        ("17:30-06:00", "17:30-06:00 is a 12 h 30 min night: " + FIX + "start it later or end it earlier"),
    ],
)
def test_a_night_longer_than_12_hours_is_refused_with_its_length_and_a_way_out(
    text: str, expected: str
) -> None:
    with pytest.raises(ValueError, match="night window is at most 12 h") as info:
        NightWindow.parse(text)
    assert str(info.value) == expected


def test_score_flow_leak_refuses_a_reversed_night_option(tmp_path: Path) -> None:
    # Before, exit 0: each "night" was the 22 hours of day flow from 04:00 to 02:00.
    csv = _plain(tmp_path / "flows.csv", _flows(days=14))
    run = _flow_leak(csv, "--flow", "inflow", "--calibrate-days", "7", "--night", "04:00-02:00")
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.endswith(
        "error: argument --night: 04:00-02:00 is a 22 h night: " + FIX + "did you mean 02:00-04:00 (2 h)?\n"
    )


def test_score_flow_leak_judges_a_night_across_midnight(tmp_path: Path) -> None:
    csv = _plain(tmp_path / "flows.csv", _flows(days=14))
    run = _flow_leak(csv, "--flow", "inflow", "--calibrate-days", "7", "--night", "23:00-05:00")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) > 10


def test_the_night_option_says_its_limit_in_help() -> None:
    run = edge_agent("models", "score", "flow-leak", "--help")
    assert "--night HH:MM-HH:MM" in run.stdout
    assert "at most 12 h" in " ".join(run.stdout.split())


FLOW_LEAK = '[[models.flow_leak]]\nname = "dma"\ninflow = ["plc/flow"]\ntimezone = "UTC"\n'
LEAK = '[[models.leak]]\ndevice = "hyd"\ntimezone = "UTC"\n'


@pytest.mark.parametrize(("table", "kind"), [(FLOW_LEAK, "flow_leak"), (LEAK, "leak")])
def test_check_config_refuses_reversed_night_keys(tmp_path: Path, table: str, kind: str) -> None:
    # Before, `check-config` said OK.
    models = table + 'night_start = "04:00"\nnight_end = "02:00"\n'
    assert problems_for(tmp_path, models) == [f"FILE: models.{kind}[0]: {KEYS_REVERSED}{KEYS_FIX}"]


@pytest.mark.parametrize(("table", "kind"), [(FLOW_LEAK, "flow_leak"), (LEAK, "leak")])
def test_night_keys_across_midnight_load(tmp_path: Path, table: str, kind: str) -> None:
    models = table + 'night_start = "23:00"\nnight_end = "05:00"\n'
    (section,) = load_config(write_agent_config(tmp_path, devices=AUDIO + PLC, models=models)).models[kind]
    assert (section.night_start, section.night_end) == ("23:00", "05:00")


def test_a_reversed_meter_night_is_refused_by_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, night_l = 20 litres was judged over the 22 hours from 04:00 to 02:00.
    path = write_config(tmp_path, meter_group('night = "04:00-02:00"'))
    assert refused_everywhere(path, capsys) == [
        f"{path}: models.meter[0].night: 04:00-02:00 is a 22 h night: {FIX}did you mean 02:00-04:00 (2 h)? "
        "(got '04:00-02:00')"
    ]


def test_a_meter_night_across_midnight_loads(tmp_path: Path) -> None:
    (group,) = load_config(write_config(tmp_path, meter_group('night = "22:00-06:00"'))).models["meter"]
    assert group.night == "22:00-06:00"


def test_a_reversed_night_in_a_flow_leak_table_is_refused_by_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD + FLOW_LEAK.replace("plc/flow", "sim/flow") + 'night_start = "04:00"\nnight_end = "02:00"\n'
    path = write_config(tmp_path, text)
    assert refused_everywhere(path, capsys) == [f"{path}: models.flow_leak[0]: {KEYS_REVERSED}{KEYS_FIX}"]


def test_an_audio_devices_reversed_night_is_refused_and_one_across_midnight_loads(tmp_path: Path) -> None:
    # The audio driver's own night (its quietest levels) had no length check: 04:00-02:00 loaded.
    reversed_night = AUDIO + 'night_start = "04:00"\nnight_end = "02:00"\n'
    (problem,) = problems_for(tmp_path, "", devices=reversed_night + PLC)
    assert problem.startswith("FILE: devices[0]")
    assert KEYS_REVERSED + KEYS_FIX in problem
    across = AUDIO + 'night_start = "23:00"\nnight_end = "05:00"\n'
    (tmp_path / "ok").mkdir()
    (audio, _) = load_config(write_agent_config(tmp_path / "ok", devices=across + PLC)).devices
    assert isinstance(audio, AudioConfig)
    assert (audio.night_start, audio.night_end) == ("23:00", "05:00")
