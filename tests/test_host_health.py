"""The gateway's own health: a Raspberry Pi's power and heat, and the room left on its card.

The Pi's firmware cannot run here: its sysfs files are written in the test's directory with the
contents a Pi 4 gives (`get_throttled` as `vcgencmd get_throttled` prints it, millidegrees in
`thermal_zone0/temp`) and the watch is pointed at that directory as its root. The card is a real
ext4 file system on a loop device (conftest's `card`), filled with a real file.
"""

from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import pytest

from tests.support.agent_proc import status_once_the_host_is_seen
from tests.support.boards import FLOW_PLC
from tests.support.ext4_card import Card
from tests.support.testing import STATUS_SCHEMA, agent_config, outbox_events
from water_edge.agent import host_health
from water_edge.agent.host_health import HostWatch, sample
from water_edge.agent.metrics_export import exposition_text


def pi_sysfs(root: Path, *, throttled: str | None = "0x0", millidegrees: int | None = 48_686) -> Path:
    if throttled is not None:
        firmware = root / "sys/devices/platform/soc/soc:firmware"
        firmware.mkdir(parents=True, exist_ok=True)
        (firmware / "get_throttled").write_text(f"{throttled}\n")
    if millidegrees is not None:
        zone = root / "sys/class/thermal/thermal_zone0"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text("cpu-thermal\n")
        (zone / "temp").write_text(f"{millidegrees}\n")
    return root


async def test_a_weak_supply_and_a_hot_cabinet_are_said_once_each_and_heat_clears(tmp_path: Path) -> None:
    root = pi_sysfs(tmp_path / "pi", throttled="0x50005", millidegrees=82_345)
    watch = HostWatch(tmp_path, root=root)
    events = await watch.check()
    assert [(e.kind, e.severity) for e in events] == [
        ("host_undervoltage", "warning"),
        ("host_overheating", "warning"),
    ]
    assert events[0].detail["now"] is True
    assert events[0].detail["since_boot"] is True
    assert events[1].detail["temperature_c"] == pytest.approx(82.345)
    health = watch.health()
    assert health is not None
    (line,) = health.status_lines()
    assert line.startswith("host     82 °C  UNDER-VOLTAGE NOW  CPU THROTTLED  card ")
    problems = health.problems()
    assert [p.split(":")[0] for p in problems] == [
        "power supply under-voltage now, the CPU throttled",
        "the board is hot at 82 °C and throttled",
    ]
    assert await watch.check() == [], "said once while it lasts"
    # The supply is changed and the cabinet ventilated: the firmware keeps the since-boot bits.
    pi_sysfs(root, throttled="0x50000", millidegrees=77_000)
    assert await watch.check() == [], "77 °C: not cool yet (hysteresis)"
    pi_sysfs(root, throttled="0x50000", millidegrees=61_000)
    assert [e.kind for e in await watch.check()] == ["host_overheating_cleared"]
    health = watch.health()
    assert health is not None
    assert [p.split(":")[0] for p in health.problems()] == ["power supply under-voltage since boot"]
    assert "UNDER-VOLTAGE since boot" in health.status_lines()[0]


async def test_a_cpu_slowed_by_a_weak_supply_is_not_taken_for_heat(tmp_path: Path) -> None:
    """The firmware throttles on under-voltage too: at 48 °C that is the supply, not the cabinet."""
    root = pi_sysfs(tmp_path / "pi", throttled="0x50005", millidegrees=48_000)
    watch = HostWatch(tmp_path, root=root)
    assert [e.kind for e in await watch.check()] == ["host_undervoltage"]
    health = watch.health()
    assert health is not None
    assert [p.split(":")[0] for p in health.problems()] == [
        "power supply under-voltage now, the CPU throttled"
    ]
    # The supply mended, the CPU still slowed (the soft temperature limit): that is heat.
    pi_sysfs(root, throttled="0x50008", millidegrees=79_000)
    assert [e.kind for e in await watch.check()] == ["host_overheating"]
    health = watch.health()
    assert health is not None
    assert health.problems()[1].startswith("the CPU is throttled at 79 °C: ")


def test_a_pi_without_the_firmware_file_is_read_through_its_rpi_volt_sensor(tmp_path: Path) -> None:
    root = pi_sysfs(tmp_path, throttled=None)
    for i, (name, alarm) in enumerate((("cpu_thermal", None), ("rpi_volt", "1"))):
        hwmon = root / f"sys/class/hwmon/hwmon{i}"
        hwmon.mkdir(parents=True)
        (hwmon / "name").write_text(f"{name}\n")
        if alarm is not None:
            (hwmon / "in0_lcrit_alarm").write_text(f"{alarm}\n")
    health = sample(root, tmp_path)
    assert (health.undervoltage_now, health.undervoltage_since_boot) == (True, True)
    (root / "sys/class/hwmon/hwmon1/in0_lcrit_alarm").write_text("0\n")
    assert sample(root, tmp_path).undervoltage_now is False


def test_what_a_machine_does_not_have_is_left_out(tmp_path: Path) -> None:
    """An x86 box, a VM: no firmware flags, no thermal zone; nothing to say of them."""
    health = sample(tmp_path / "empty-sysfs", tmp_path)
    assert (health.undervoltage_now, health.throttled_now, health.temperature_c) == (None, None, None)
    assert health.problems() == []
    assert health.free_bytes is not None
    assert health.free_bytes > 0
    assert health.status_lines()[0].startswith("host     card ")
    # Garbage in the firmware's file and the zone's: read as absent, never a crash.
    pi_sysfs(tmp_path / "odd", throttled="not hex", millidegrees=None)
    zone = tmp_path / "odd/sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("n/a\n")
    odd = sample(tmp_path / "odd", tmp_path)
    assert (odd.undervoltage_now, odd.temperature_c) == (None, None)


def emmc(root: Path, state_dir: Path, life_time: str, pre_eol: str) -> None:
    """A CM4's eMMC under `state_dir`: /sys/dev/block/MAJ:MIN of the state directory's own file
    system leads to a partition of mmcblk0, whose device reports its wear."""
    dev = os.stat(state_dir).st_dev
    disk = root / "sys/devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0"
    (disk / "mmcblk0p2").mkdir(parents=True, exist_ok=True)
    (disk / "mmcblk0p2/partition").write_text("2\n")
    (disk / "device").mkdir(exist_ok=True)
    (disk / "device/life_time").write_text(f"{life_time}\n")
    (disk / "device/pre_eol_info").write_text(f"{pre_eol}\n")
    links = root / "sys/dev/block"
    links.mkdir(parents=True, exist_ok=True)
    link = links / f"{os.major(dev)}:{os.minor(dev)}"
    link.unlink(missing_ok=True)
    link.symlink_to(disk / "mmcblk0p2")


async def test_an_emmc_near_the_end_of_its_life_is_said_once_with_what_to_do(tmp_path: Path) -> None:
    root = pi_sysfs(tmp_path / "cm4")
    state = tmp_path / "state"
    state.mkdir()
    emmc(root, state, "0x02 0x03", "0x01")
    watch = HostWatch(state, root=root)
    assert await watch.check() == []
    health = watch.health()
    assert health is not None
    assert (health.storage_device, health.storage_wear_pct, health.storage_pre_eol) == (
        "mmcblk0",
        30,
        "normal",
    )
    assert health.status_lines()[0].endswith("mmcblk0 30 % worn")
    assert health.problems() == []
    emmc(root, state, "0x02 0x0a", "0x02")  # the MLC area at 90-100 %, reserve blocks at 80 %
    (worn,) = await watch.check()
    assert worn.kind == "host_storage_worn"
    assert (worn.detail["device"], worn.detail["wear_pct"], worn.detail["pre_eol"]) == (
        "mmcblk0",
        100,
        "warning",
    )
    health = watch.health()
    assert health is not None
    (problem,) = health.problems()
    assert problem.startswith("mmcblk0 100 % worn, reserve blocks WARNING: ")
    assert "edge-agent state export" in problem
    assert await watch.check() == [], "said once"
    emmc(root, state, "0x0b 0x0b", "0x03")
    health = sample(root, state)
    assert health.status_lines()[0].endswith("mmcblk0 worn past its rating, reserve blocks URGENT")


def test_a_disk_that_reports_no_wear_is_left_out(tmp_path: Path) -> None:
    """An SD card (no life_time), or a disk with no sysfs entry at all."""
    root = pi_sysfs(tmp_path / "pi")
    state = tmp_path / "state"
    state.mkdir()
    assert sample(root, state).storage_device is None
    emmc(root, state, "garbage", "0x00")
    assert sample(root, state).storage_device is None


def test_this_machine_is_sampled_without_error(tmp_path: Path) -> None:
    health = sample(Path("/"), tmp_path)
    assert health.size_bytes is not None
    assert health.free_bytes is not None
    assert 0 < health.free_bytes <= health.size_bytes


async def test_a_card_filling_up_is_said_and_cleared_when_room_comes_back(
    card: Card, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 64 MiB test card stands for a gateway's card: 16 MiB free is its 'low'."""
    monkeypatch.setattr(host_health, "LOW_FREE_BYTES", 16 * 1024 * 1024)
    state = card.mount / "state"
    state.mkdir()
    watch = HostWatch(state, root=card.mount / "no-sysfs")
    assert await watch.check() == []
    filler = card.mount / "captures.bin"
    with filler.open("wb") as f:  # a technician's captures
        f.write(os.urandom(50 * 1024 * 1024))
        f.flush()
        os.fsync(f.fileno())
    (low,) = await watch.check()
    assert low.kind == "host_disk_low"
    assert low.detail["filesystem"] == str(state)
    assert low.detail["free_bytes"] < 16 * 1024 * 1024
    health = watch.health()
    assert health is not None
    assert health.problems()[0].startswith(f"the card holding {state} has ")
    assert health.status_lines()[0].endswith("LOW")
    filler.unlink()
    assert [e.kind for e in await watch.check()] == ["host_disk_low_cleared"]


def test_an_agent_on_a_nearly_full_card_says_so_in_status_and_to_the_centre(card: Card) -> None:
    """The real agent, its state on the 64 MiB card: under the product's 200 MiB, so low. Status,
    the verdict, the schema, the Prometheus figures and the event in the outbox all say it."""
    state = card.mount / "state"
    socket = card.mount.parent / "status.sock"
    config = card.mount.parent / "agent.toml"
    text = agent_config(state, status_socket=socket, devices=[FLOW_PLC], buffer={"max_bytes": "8MiB"})
    config.write_text(text)
    snap, shown = status_once_the_host_is_seen(config, socket)
    jsonschema.validate(snap, STATUS_SCHEMA)
    host = snap["host"]
    assert host["filesystem"] == str(state)
    assert 0 < host["free_bytes"] < 64 * 1024 * 1024
    assert snap["verdict"]["state"] == "degraded"
    (problem,) = [p for p in snap["verdict"]["problems"] if "card" in p]
    assert problem.startswith(f"the card holding {state} has ")
    assert shown.returncode == 1
    (line,) = [line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("host ")]
    assert line.endswith("LOW")
    exposed = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in exposition_text(snap).splitlines())
        if name.startswith("edge_agent_host_")
    }
    names = {
        "free_bytes": "filesystem_free_bytes",
        "size_bytes": "filesystem_size_bytes",
        "temperature_c": "temperature_celsius",  # a machine with a thermal zone (none in a VM)
        "undervoltage_now": "undervoltage",  # a Raspberry Pi's firmware
        "undervoltage_since_boot": "undervoltage_since_boot",
        "throttled_now": "throttled",
    }
    expected = {
        f"edge_agent_host_{names[k]}": float(v) for k, v in host.items() if k in names and v is not None
    }
    expected["edge_agent_host_state_in_ram"] = float(host["state_in_ram"] is not None)  # 0: on the card
    if host["storage_wear_pct"] is not None:  # an eMMC that reports its wear (none here)
        expected["edge_agent_host_storage_wear_ratio"] = host["storage_wear_pct"] / 100
    assert exposed == expected, "what the machine cannot tell is left out"
    (event,) = outbox_events(state / "outbox.sqlite", "host_disk_low")
    assert event.detail["filesystem"] == str(state)
