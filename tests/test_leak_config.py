"""`[[models.leak]]` tables written for the classifier-only detector still load and start: their
removed keys (`alpha`, `on_windows`, `off_windows`) are accepted, range-checked, ignored, and named
with what replaced them by `check-config` and in the agent's log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from tests.support.testing import write_agent_config
from water_edge.agent.assembly import build_processors
from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.core.errors import ConfigError
from water_edge.core.processor import AudioWindowLike
from water_edge.drivers.base import Driver
from water_edge.models.leak.processor import AudioLeakProcessor

AUDIO = '[[devices]]\nname = "hyd"\nkind = "audio"\nsource = "file"\npath = "/tmp/none.wav"\n'
# The `[[models.leak]]` table of deploy/samples/models.toml before the per-sensor baselines.
OLD_TABLE = '[[models.leak]]\ndevice = "hyd"\nalpha = 0.4\non_windows = 3\noff_windows = 5\n'


@pytest.fixture(autouse=True)
def _machine_in_a_daylight_saving_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tables set no `timezone`: on a machine that keeps UTC that is a warning of its own
    (tests/test_local_zone.py), not one of the warnings counted here."""
    monkeypatch.setenv("TZ", "Europe/Amsterdam")


class _Windows:
    """An audio device as the leak processor sees it (no audio needed to build one): only the part
    of a `Driver` the leak processor uses, hence the casts where it stands in for one."""

    def add_window_listener(self, callback: Callable[[AudioWindowLike], None]) -> Callable[[], None]:
        return lambda: None


def test_an_old_leak_table_loads_builds_and_each_removed_key_is_a_warning(tmp_path: Path) -> None:
    path = write_agent_config(tmp_path, devices=AUDIO, models=OLD_TABLE)
    config = load_config(path)
    assert [w.replace(str(path), "FILE") for w in config.warnings] == [
        "FILE: models.leak[0].alpha: deprecated: ignored since the per-sensor baseline detector "
        "(the classifier is no longer smoothed into alarms); remove it",
        "FILE: models.leak[0].on_windows: deprecated: ignored; confirmation now takes two positive "
        "checks (same or next night): see [models.leak.detection] confirm_next_night",
        "FILE: models.leak[0].off_windows: deprecated: ignored; a leak now clears after quiet "
        "nights: see [models.leak.detection] clear_nights",
    ]
    (processor,) = build_processors(config, {"hyd": cast(Driver, _Windows())}).processors
    assert isinstance(processor, AudioLeakProcessor)
    # Ignored means ignored: the judgement is the default one.
    (section,) = config.models["leak"]
    assert processor.params.min_bands == section.detection.min_bands


def test_check_config_accepts_an_old_table_and_prints_the_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_agent_config(tmp_path, devices=AUDIO, models=OLD_TABLE)
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out
    warnings = out.err.splitlines()
    assert len(warnings) == 3
    assert all(w.startswith(f"warning: {path}: models.leak[0].") for w in warnings)
    assert "on_windows: deprecated" in warnings[1]


def test_a_current_table_has_no_warnings_and_a_removed_key_is_still_range_checked(tmp_path: Path) -> None:
    assert (
        load_config(
            write_agent_config(tmp_path, devices=AUDIO, models='[[models.leak]]\ndevice = "hyd"\n')
        ).warnings
        == ()
    )
    bad = write_agent_config(
        tmp_path, devices=AUDIO, models=OLD_TABLE.replace("on_windows = 3", "on_windows = 0")
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems == [
        f"{bad}: models.leak[0].on_windows: Input should be greater than or equal to 1 (got 0)"
    ]


@pytest.mark.parametrize(
    "switch",
    [
        "extend_patterns",
        "plastic_common_mode",
        "metal_witness",
        "disturbed_confirms",
        "plastic_demand",
        "plastic_rain_opens",
        "plastic_rain_second_bar",
        "plastic_rain_same_bands",
        "metal_matched",
        "metal_common_mode",
        "metal_below_rain",
    ],
)
def test_a_detection_switch_reaches_the_judgement_and_a_wrong_value_names_the_key(
    tmp_path: Path, switch: str
) -> None:
    """Each on/off rule of `[models.leak.detection]` is on by default, `false` reaches the
    judgement's parameters, and a value that is not a boolean names the key."""
    table = f'[[models.leak]]\ndevice = "hyd"\n[models.leak.detection]\n{switch} = false\n'
    config = load_config(write_agent_config(tmp_path, devices=AUDIO, models=table))
    (processor,) = build_processors(config, {"hyd": cast(Driver, _Windows())}).processors
    assert isinstance(processor, AudioLeakProcessor)
    assert getattr(processor.params, switch) is False
    default = load_config(
        write_agent_config(tmp_path, devices=AUDIO, models='[[models.leak]]\ndevice = "hyd"\n')
    )
    (on,) = build_processors(default, {"hyd": cast(Driver, _Windows())}).processors
    assert isinstance(on, AudioLeakProcessor)
    assert getattr(on.params, switch) is True
    bad = write_agent_config(tmp_path, devices=AUDIO, models=table.replace("false", '"sometimes"'))
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert any(f"models.leak[0].detection.{switch}" in p for p in info.value.problems)


def test_joint_z_reaches_the_judgement_and_a_wrong_value_names_the_key(tmp_path: Path) -> None:
    table = '[[models.leak]]\ndevice = "hyd"\n[models.leak.detection]\njoint_z = 0\njoint_k = 4.5\n'
    config = load_config(write_agent_config(tmp_path, devices=AUDIO, models=table))
    (processor,) = build_processors(config, {"hyd": cast(Driver, _Windows())}).processors
    assert isinstance(processor, AudioLeakProcessor)
    assert (processor.params.joint_z, processor.params.joint_k) == (0.0, 4.5)
    bad = write_agent_config(tmp_path, devices=AUDIO, models=table.replace("joint_z = 0", "joint_z = -1"))
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert any("models.leak[0].detection.joint_z" in p for p in info.value.problems)


def test_accumulation_keys_reach_each_sensors_confirmation_and_a_wrong_value_names_the_key(
    tmp_path: Path,
) -> None:
    table = (
        '[[models.leak]]\ndevice = "hyd"\n[models.leak.detection]\n'
        "accumulate_k = 1.5\naccumulate_h = 3\naccumulate_nights = 3\n"
    )
    config = load_config(write_agent_config(tmp_path, devices=AUDIO, models=table))
    (processor,) = build_processors(config, {"hyd": cast(Driver, _Windows())}).processors
    assert isinstance(processor, AudioLeakProcessor)
    acc = processor.new_confirmation().accumulation
    assert (acc.k, acc.h, acc.nights) == (1.5, 3.0, 3)
    bad = write_agent_config(
        tmp_path, devices=AUDIO, models=table.replace("accumulate_h = 3", "accumulate_h = -1")
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert any("models.leak[0].detection.accumulate_h" in p for p in info.value.problems)


def test_rain_spread_db_reaches_the_judgement_and_a_wrong_value_names_the_key(tmp_path: Path) -> None:
    table = '[[models.leak]]\ndevice = "hyd"\n[models.leak.detection]\nrain_spread_db = 0\n'
    config = load_config(write_agent_config(tmp_path, devices=AUDIO, models=table))
    (processor,) = build_processors(config, {"hyd": cast(Driver, _Windows())}).processors
    assert isinstance(processor, AudioLeakProcessor)
    assert processor.params.rain_spread_db == 0.0
    bad = write_agent_config(tmp_path, devices=AUDIO, models=table.replace("= 0", "= -1"))
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert any("models.leak[0].detection.rain_spread_db" in p for p in info.value.problems)
