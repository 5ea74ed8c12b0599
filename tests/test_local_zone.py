"""Local time is read in the machine's zone *with its daylight-saving rules*. The zone used to be
`datetime.now().astimezone().tzinfo`, a fixed offset: an agent started in winter read summer
instants an hour early until restarted, so a night window and the burst detector's 15-minute slots
left their hours at every change (a simulated district: 55-64 burst alarms a year against 5-12)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.testing import write_agent_config
from water_edge.agent.cli import main
from water_edge.core.local_zone import keeps_utc, system_zone, zone
from water_edge.models.nightwindow import NightWindow

SUMMER_NOON_UTC = datetime(2026, 7, 15, 12, tzinfo=UTC)
WINTER_NOON_UTC = datetime(2026, 1, 15, 12, tzinfo=UTC)
ROME = Path("/usr/share/zoneinfo/Europe/Rome")


def hours(tz: object) -> tuple[int, int]:
    assert isinstance(tz, (ZoneInfo, type(UTC)))
    return WINTER_NOON_UTC.astimezone(tz).hour, SUMMER_NOON_UTC.astimezone(tz).hour


def test_the_zone_of_tz_keeps_daylight_saving() -> None:
    tz, source = system_zone({"TZ": "Europe/Rome"})
    assert hours(tz) == (13, 14)
    assert source == "TZ=Europe/Rome"
    assert hours(system_zone({"TZ": ":Europe/Rome"})[0]) == (13, 14)


@pytest.mark.skipif(not ROME.exists(), reason="no system zoneinfo tree")
def test_etc_localtime_as_a_link_or_a_copy(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to(ROME)
    tz, source = system_zone({}, link)
    assert hours(tz) == (13, 14)
    assert source.endswith("-> Europe/Rome")
    copy = tmp_path / "copied"
    shutil.copyfile(ROME, copy)  # some images copy the file instead of linking it
    tz, source = system_zone({}, copy)
    assert hours(tz) == (13, 14)
    assert source == str(copy)


def test_no_zone_anywhere_falls_back_to_todays_offset_and_says_so(tmp_path: Path) -> None:
    tz, source = system_zone({"TZ": "CET-1CEST,M3.5.0,M10.5.0/3"}, tmp_path / "missing")
    assert source.startswith("a fixed offset (")
    assert keeps_utc(tz)  # no daylight saving known: treated as such by the warning


def test_night_windows_without_a_timezone_follow_the_summer_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Rome")
    window = NightWindow("02:00", "04:00", zone(None))
    summer_3am_local = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)  # 03:00 CEST
    assert window.local(int(summer_3am_local.timestamp() * 1e9)).hour == 3
    assert window.night_of_local(window.local(int(summer_3am_local.timestamp() * 1e9))) is not None
    assert window.local(int(datetime(2026, 7, 15, 2, 30, tzinfo=UTC).timestamp() * 1e9)).hour == 4


def test_keeps_utc() -> None:
    assert keeps_utc(ZoneInfo("Etc/UTC"))
    assert keeps_utc(ZoneInfo("UTC"))
    assert keeps_utc(UTC)
    assert not keeps_utc(ZoneInfo("Europe/Rome"))
    assert not keeps_utc(ZoneInfo("Asia/Tokyo"))  # no daylight saving, but a local clock


DISTRICT = """
[[models.flow_leak]]
name = "north"
inflow = ["flow"]
"""
DEVICES = """
[[devices]]
name = "plc1"
kind = "modbus_tcp"
host = "127.0.0.1"
tags = [{ name = "flow", address = 0, type = "float32", unit = "m3/h" }]
"""


def test_check_config_warns_of_nights_read_in_utc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway image set to UTC (common) with a district that names no zone: its nights and
    day profile would be read in UTC, an hour off local demand for half the year."""
    path = write_agent_config(tmp_path, devices=DEVICES, models=DISTRICT)
    monkeypatch.setenv("TZ", "UTC")
    assert main(["check-config", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: models.flow_leak[0].timezone: not set, and this machine's zone is TZ=UTC" in err
    assert "(e.g. 'Europe/Rome')" in err
    monkeypatch.setenv("TZ", "Europe/Rome")
    assert main(["check-config", "-c", str(path)]) == 0
    assert "timezone" not in capsys.readouterr().err
    monkeypatch.setenv("TZ", "UTC")
    named = write_agent_config(tmp_path, devices=DEVICES, models=DISTRICT + 'timezone = "Europe/Rome"\n')
    assert main(["check-config", "-c", str(named)]) == 0
    assert "timezone" not in capsys.readouterr().err
