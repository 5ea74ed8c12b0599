"""What `[[devices]]` and `[[models.*]]` tables name must be one thing each: a meter's tag, a serial
stick, a district's flow tag, a meter group's meters and windows, a hydrophone's channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import GOOD, problems_for, write
from water_edge.agent.config import load_config
from water_edge.core.errors import ConfigError

MBUS = """
[[devices]]
name = "meters"
kind = "mbus"
port = "/dev/ttyUSB0"

  [[devices.meters]]
  name = "m1"
  address = 1
"""

WMBUS = """
[[devices]]
name = "wm"
kind = "wmbus"
receiver = "im871a"
port = "/dev/ttyUSB1"

  [[devices.meters]]
  name = "flat1"
  id = "30000000"

  [[devices.meters]]
  name = "flat2"
  id = "30000007"
"""

AUDIO = """
[[devices]]
name = "hyd"
kind = "audio"
source = "stream"
stream_url = "tcp://127.0.0.1:36403"
channel_names = ["A", "B"]
"""

RECORDS = """
    [[devices.meters.records]]
    quantity = "volume"
    tag = "v"

    [[devices.meters.records]]
    quantity = "volume_flow"
    tag = "{second}"
"""


def source(tmp_path: Path) -> Path:
    return tmp_path / "agent.toml"


# -- meter records ---------------------------------------------------------------------------------


def test_two_records_of_an_mbus_meter_may_not_make_one_tag(tmp_path: Path) -> None:
    # Before, m1.v was read as 100.607 m3 and 31.034 m3/h in turn: one series, two quantities.
    assert problems_for(tmp_path, GOOD + MBUS + RECORDS.replace("{second}", "v")) == [
        f"{source(tmp_path)}: devices[1] (meters).meters[0]: meter 'm1': records[0] and records[1] both "
        "make tag m1.v; give one of them another 'tag'"
    ]
    assert problems_for(tmp_path, GOOD + MBUS + RECORDS.replace("{second}", "status")) == [
        f"{source(tmp_path)}: devices[1] (meters).meters[0]: meter 'm1': records[1] makes tag m1.status, "
        "which the driver gives every meter; give it another 'tag'"
    ]
    # The scheme's own names count too: two selectors of one record without a `tag`.
    twice = '\n    [[devices.meters.records]]\n    quantity = "volume"\n' * 2
    (problem,) = problems_for(tmp_path, GOOD + MBUS + twice)
    assert problem.endswith(
        "records[0] and records[1] both make tag m1.volume; give one of them another 'tag'"
    )
    assert load_config(write(tmp_path, GOOD + MBUS + RECORDS.replace("{second}", "q"))).devices[1]


def test_two_records_of_a_wmbus_meter_may_not_make_one_tag(tmp_path: Path) -> None:
    records = RECORDS.replace("{second}", "v")
    text = GOOD + WMBUS.replace('  id = "30000000"\n', '  id = "30000000"\n' + records)
    assert problems_for(tmp_path, text) == [
        f"{source(tmp_path)}: devices[1] (wm).meters[0]: meter 'flat1': records[0] and records[1] both "
        "make tag flat1.v; give one of them another 'tag'"
    ]
    for built_in in ("rssi", "telegrams_lost", "alarm.leak"):
        records = RECORDS.replace("{second}", built_in)
        text = GOOD + WMBUS.replace('  id = "30000000"\n', '  id = "30000000"\n' + records)
        (problem,) = problems_for(tmp_path, text)
        assert f"makes tag flat1.{built_in}, which the driver gives every meter" in problem


@pytest.mark.parametrize(
    ("first", "second"),
    [("12345678", "12345678"), ("12345678", "12345678A5110107"), ("12345678FFFF1107", "12345678a511ff07")],
)
def test_two_mbus_meters_may_not_select_one_meter_by_secondary_address(
    tmp_path: Path, first: str, second: str
) -> None:
    meters = MBUS.replace("address = 1", f'secondary = "{first}"')
    meters += f'\n  [[devices.meters]]\n  name = "m2"\n  secondary = "{second}"\n'
    assert problems_for(tmp_path, GOOD + meters) == [
        f"{source(tmp_path)}: devices[1] (meters): meters 'm1' ({first}) and 'm2' ({second}) select the "
        "same meter by secondary address: it would be read twice, under two names"
    ]


def test_mbus_meters_of_other_secondary_addresses_load(tmp_path: Path) -> None:
    meters = MBUS.replace("address = 1", 'secondary = "12345678A5110107"')
    meters += '\n  [[devices.meters]]\n  name = "m2"\n  secondary = "12345678A5110207"\n'
    meters += '\n  [[devices.meters]]\n  name = "m3"\n  secondary = "12345679"\n'
    # A wildcard ID selects whichever meter answers: not judged.
    meters += '\n  [[devices.meters]]\n  name = "m4"\n  secondary = "1234567F"\n'
    assert load_config(write(tmp_path, GOOD + meters)).devices[1].point_count() == 4


# -- a wM-Bus stick is one device's ----------------------------------------------------------------


def test_a_wmbus_stick_has_one_user(tmp_path: Path) -> None:
    second = WMBUS.replace('name = "wm"', 'name = "wm2"').replace(
        '"/dev/ttyUSB1"', '"/dev/ttyUSB1"\nbaudrate = 57600'
    )
    second = second.replace('"flat1"', '"flat3"').replace('"flat2"', '"flat4"').replace("3000000", "4000000")
    # Before, both loaded and at run one of them never opened, saying nothing.
    assert problems_for(tmp_path, GOOD + WMBUS + second) == [
        f"{source(tmp_path)}: devices[2] (wm2).port: /dev/ttyUSB1 is also wm's, at wM-Bus im871a stick, "
        "for wm only; devices on one port share its protocol and line settings (got wM-Bus im871a "
        "stick, for wm2 only)"
    ]
    rtu = '\n[[devices]]\nname = "plc"\nkind = "modbus_rtu"\nport = "/dev/ttyUSB1"\n'
    rtu += '\n  [[devices.tags]]\n  name = "flow"\n  address = 0\n  type = "float32"\n'
    (problem,) = problems_for(tmp_path, GOOD.replace('name = "flow"', 'name = "q"') + WMBUS + rtu)
    assert "devices[2] (plc).port: /dev/ttyUSB1 is also wm's, at wM-Bus im871a stick, for wm only" in problem


def test_a_stick_among_several_receivers_is_seen(tmp_path: Path) -> None:
    several = WMBUS.replace('receiver = "im871a"\nport = "/dev/ttyUSB1"\n', "")
    several += '\n  [[devices.receivers]]\n  receiver = "rtlwmbus"\n  host = "127.0.0.1"\n  tcp_port = 7000\n'
    several += '\n  [[devices.receivers]]\n  receiver = "amb8465"\n  port = "/dev/ttyUSB0"\n'
    (problem,) = problems_for(tmp_path, GOOD + several + MBUS)
    assert (
        "devices[2] (meters).port: /dev/ttyUSB0 is also wm's, at wM-Bus amb8465 stick, for wm only" in problem
    )
    # not only the first stick: a second one, on the M-Bus line's port
    two_sticks = several.replace(
        '\n  [[devices.receivers]]\n  receiver = "amb8465"\n  port = "/dev/ttyUSB0"\n',
        '\n  [[devices.receivers]]\n  receiver = "amb8465"\n  port = "/dev/ttyUSB2"\n'
        '\n  [[devices.receivers]]\n  receiver = "im871a"\n  port = "/dev/ttyUSB0"\n',
    )
    (problem,) = problems_for(tmp_path, GOOD + two_sticks + MBUS)
    assert (
        "devices[2] (meters).port: /dev/ttyUSB0 is also wm's, at wM-Bus im871a stick, for wm only" in problem
    )


# -- flow_leak: one tag, written one way -----------------------------------------------------------


def flow_leak(inflow: str, outflow: str = "[]", more: str = "") -> str:
    return (
        GOOD
        + f'\n[[models.flow_leak]]\nname = "dma"\ntimezone = "UTC"\ninflow = {inflow}\noutflow = {outflow}\n'
        + more
    )


def test_a_district_counts_a_flow_tag_once(tmp_path: Path) -> None:
    assert problems_for(tmp_path, flow_leak('["sim/flow", "sim/flow"]')) == [
        f"{source(tmp_path)}: models.flow_leak[0]: inflow names 'sim/flow' twice: its flow would count twice"
    ]


def test_a_tag_written_bare_and_with_its_device_is_refused(tmp_path: Path) -> None:
    # Before: the bare route never got a value (readings go to `device/tag` first) and the district
    # never learnt.
    assert problems_for(tmp_path, flow_leak('["sim/flow"]', '["flow"]')) == [
        f"{source(tmp_path)}: models.flow_leak[0].outflow[0]: 'flow' here and 'sim/flow' in inflow of "
        "district 'dma' name one tag two ways: a reading of sim/flow goes only where it is written with "
        "its device, never to 'flow'; write 'sim/flow' here too (or '<device>/flow' for another device's)"
    ]
    (problem,) = problems_for(tmp_path, flow_leak('["sim/flow", "flow"]'))
    assert "models.flow_leak[0].inflow[1]: 'flow' here and 'sim/flow' in inflow of district 'dma'" in problem
    # Two districts sharing a boundary meter write it alike.
    other = '\n[[models.flow_leak]]\nname = "dma2"\ntimezone = "UTC"\ninflow = ["flow"]\n'
    (problem,) = problems_for(tmp_path, flow_leak('["sim/flow"]', more=other))
    assert "models.flow_leak[1].inflow[0]: 'flow' here and 'sim/flow' in inflow of district 'dma'" in problem
    assert load_config(write(tmp_path, flow_leak('["sim/flow"]', more=other.replace('"flow"', '"sim/flow"'))))


# -- meter groups ----------------------------------------------------------------------------------


def meter_group(keys: str) -> str:
    return GOOD + WMBUS + f'\n[[models.meter]]\nname = "block-a"\ndevice = "wm"\n{keys}\n'


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            'night = "04:00-04:00"',
            "night: the night window starts where it ends, so it would never be judged (got '04:00-04:00')",
        ),
        (
            'night = "02:30-03:00"',
            "night: use is counted per clock hour: give the window in whole hours, e.g. '02:00-03:00' "
            "(got '02:30-03:00')",
        ),
        (
            'expected = "06:30-22:15"',
            "expected: use is counted per clock hour: give the window in whole hours, e.g. '06:00-23:00' "
            "(got '06:30-22:15')",
        ),
    ],
)
def test_a_meter_window_is_of_whole_hours_and_ends(tmp_path: Path, keys: str, expected: str) -> None:
    # Before, each loaded, and the night (or the part-hour night) was never judged.
    assert problems_for(tmp_path, meter_group(keys)) == [f"{source(tmp_path)}: models.meter[0].{expected}"]


def test_an_expected_window_that_starts_where_it_ends_is_the_whole_day(tmp_path: Path) -> None:
    (group,) = load_config(write(tmp_path, meter_group('expected = "06:00-06:00"'))).models["meter"]
    assert group.expected == "06:00-06:00"


def checked_against_devices(tmp_path: Path, text: str) -> list[str]:
    """What `load_config` says of the file (each factory's `check_devices` among its checks), without
    the file's name."""
    try:
        load_config(write(tmp_path, text))
    except ConfigError as exc:
        return [p.removeprefix(f"{source(tmp_path)}: ") for p in exc.problems]
    return []


def test_a_meter_group_names_the_meters_of_its_device(tmp_path: Path) -> None:
    # Before, flat3 was never watched and nothing said so.
    assert checked_against_devices(tmp_path, meter_group('meters = ["flat1", "flat3"]')) == [
        "models.meter[0].meters[1]: device 'wm' has no meter 'flat3' (its meters: flat1, flat2)"
    ]
    assert checked_against_devices(tmp_path, meter_group('meters = ["flat1", "flat2"]')) == []


def test_a_meter_group_volume_tag_is_one_its_meters_make(tmp_path: Path) -> None:
    selected = '  id = "30000000"\n\n    [[devices.meters.records]]\n    quantity = "volume"\n'
    text = meter_group('volume_tag = "volumes"').replace('  id = "30000000"\n', selected)
    assert checked_against_devices(tmp_path, text) == [
        "models.meter[0].volume_tag: meter(s) flat1 of device 'wm' have no tag <meter>.volumes (flat1's "
        "records make flat1.volume): name the tag of the total-volume register, or select its record in "
        "the device's records"
    ]
    # flat2 reads "all" records: its tags are known once read, and not judged here.
    assert checked_against_devices(tmp_path, text.replace('"volumes"', '"volume"')) == []


# -- hydrophones and microphones -------------------------------------------------------------------


def leak(keys: str, more: str = "") -> str:
    return GOOD + AUDIO + f'\n[[models.leak]]\ndevice = "hyd"\ntimezone = "UTC"\n{keys}\n' + more


def test_a_leak_table_listens_to_at_least_one_channel(tmp_path: Path) -> None:
    # Before, an empty list loaded: it meant all channels at run time, and none by its look.
    assert problems_for(tmp_path, leak("channels = []")) == [
        f"{source(tmp_path)}: models.leak[0].channels: name at least one channel, or leave 'channels' out "
        "to listen to all of them"
    ]


def test_one_leak_table_per_device(tmp_path: Path) -> None:
    text = leak('channels = ["A"]', '\n[[models.leak]]\ndevice = "hyd"\ntimezone = "UTC"\nchannels = ["B"]\n')
    assert problems_for(tmp_path, text) == [
        f"{source(tmp_path)}: models.leak[1].device: device 'hyd' already has a table (models.leak[0]): a "
        "device's leak processor, model slot and sensor state go by its name, so two tables would "
        "overwrite each other's and raise events twice; list its channels in one table"
    ]


def test_leak_channels_are_the_devices(tmp_path: Path) -> None:
    # Before, only a warning at run time said channel C was never listened to.
    assert checked_against_devices(tmp_path, leak('channels = ["A", "C"]')) == [
        "models.leak[0].channels[1]: device 'hyd' has no channel 'C' (its channels: A, B)"
    ]
    assert checked_against_devices(tmp_path, leak("")) == []
    # No channel_names: the channels are named by position.
    unnamed = leak('channels = ["mic"]').replace('channel_names = ["A", "B"]', "")
    assert checked_against_devices(tmp_path, unnamed) == [
        "models.leak[0].channels[0]: device 'hyd' has no channel 'mic' "
        "(its channels: A, B, C, ... by position)"
    ]
    counted = leak('channels = ["B"]').replace('channel_names = ["A", "B"]', "channels = 1")
    assert checked_against_devices(tmp_path, counted) == [
        "models.leak[0].channels[0]: device 'hyd' has no channel 'B' (its channels: A)"
    ]


def test_machine_sound_channels_are_the_devices(tmp_path: Path) -> None:
    # Before, only `edge-agent status` said "channels mic not in the device's A, B", and the
    # machine learnt nothing.
    text = GOOD + AUDIO + '\n[[models.machine_sound]]\nname = "p1"\ndevice = "hyd"\nchannels = ["mic"]\n'
    assert checked_against_devices(tmp_path, text) == [
        "models.machine_sound[0].channels[0]: device 'hyd' has no channel 'mic' (its channels: A, B)"
    ]
    assert checked_against_devices(tmp_path, text.replace("mic", "B")) == []
