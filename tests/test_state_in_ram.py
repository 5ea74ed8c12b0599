"""A state directory whose writes stay in RAM: the outbox and the learnt state are lost at reboot.

Raspberry Pi OS's Overlay File System (raspi-config) is an overlay whose upper, written layer is a
tmpfs: the tests mount exactly that, for real (a tmpfs, and an overlay over it), and run the agent
on it. Machines the tests cannot mount on (not root, no overlay in the kernel) are told apart by
skips with the reason; what needs no mount (zram, a container's overlay) is read from mount tables
written as the kernel writes them.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.support.agent_proc import running_agent, status_once_the_host_is_seen
from tests.support.boards import FLOW_PLC
from tests.support.cli import edge_agent
from tests.support.testing import STATUS_SCHEMA, agent_config, outbox_events
from water_edge.agent.host_health import HostWatch
from water_edge.agent.metrics_export import exposition_text
from water_edge.core.mounts import in_ram, mount_of, parse_mountinfo

# /proc/self/mountinfo of a Raspberry Pi OS (bookworm) with the Overlay File System on: the card's
# root read-only below, every write in the tmpfs at /media/root-rw.
PI_OVERLAY = (
    (
        "22 1 0:21 / / rw,relatime shared:1 - overlay overlayroot rw,lowerdir=/media/root-ro,"
        "upperdir=/media/root-rw/overlay,workdir=/media/root-rw/overlay-workdir\n"
    )
    + """\
23 22 179:2 / /media/root-ro ro,relatime shared:2 - ext4 /dev/mmcblk0p2 ro
24 22 0:22 / /media/root-rw rw,relatime shared:3 - tmpfs tmpfs-root rw
25 22 179:1 / /boot/firmware rw,relatime shared:4 - vfat /dev/mmcblk0p1 rw,fmask=0022
"""
)
# A card as shipped, with log2ram's zram under /var/log and a USB disk with a space in its name.
PI_CARD = """\
22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw
30 22 254:0 / /var/log rw,nosuid,nodev,noexec,relatime shared:9 - ext4 /dev/zram0 rw,discard
31 22 8:1 / /media/usb\\040disk rw,relatime shared:10 master:2 - ext4 /dev/sda1 rw
32 31 0:40 / /media/usb\\040disk/scratch rw,relatime shared:11 - tmpfs tmpfs rw,size=1024k
"""
# Inside a container: an overlay whose upper layer is on the host's disk, not visible here.
CONTAINER = (
    (
        "500 400 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/A,"
        "upperdir=/var/lib/docker/overlay2/abc/diff,workdir=/var/lib/docker/overlay2/abc/work\n"
    )
    + """\
501 500 0:51 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
502 500 0:52 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
"""
)


def mount_table(root: Path, text: str) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(text)
    return root


def test_the_mount_table_is_read_as_the_kernel_writes_it() -> None:
    mounts = parse_mountinfo(PI_CARD + "a line that is not a mount\n")
    assert [m.mount_point for m in mounts] == ["/", "/var/log", "/media/usb disk", "/media/usb disk/scratch"]
    assert mount_of(Path("/media/usb disk/x"), mounts) == mounts[2]  # the octal space, optional fields
    assert mount_of(Path("/media/usb diskette"), mounts) == mounts[0]  # a prefix is not a parent
    assert mount_of(Path("/media/usb disk/scratch"), mounts) == mounts[3]
    assert mounts[0].super_options == {"rw": ""}


@pytest.mark.parametrize(
    ("table", "state_dir", "medium"),
    [
        (PI_OVERLAY, "/var/lib/edge-agent", "overlay over tmpfs"),  # not made yet: where it would be
        (PI_OVERLAY, "/boot/firmware/edge", None),
        (PI_CARD, "/var/lib/edge-agent", None),
        (PI_CARD, "/var/log/edge-agent", "zram"),
        (PI_CARD, "/media/usb disk/scratch/state", "tmpfs"),
        (CONTAINER, "/var/lib/edge-agent", None),  # its upper layer cannot be seen: nothing said
        (CONTAINER, "/dev/shm", "tmpfs"),
    ],
)
def test_what_keeps_a_directory_in_ram_is_named(
    tmp_path: Path, table: str, state_dir: str, medium: str | None
) -> None:
    assert in_ram(Path(state_dir), mount_table(tmp_path, table)) == medium


def test_a_machine_without_proc_says_nothing(tmp_path: Path) -> None:
    assert in_ram(Path("/var/lib/edge-agent"), tmp_path) is None


async def test_the_overlay_file_system_is_said_once_and_an_accepted_one_only_shown(tmp_path: Path) -> None:
    root = mount_table(tmp_path, PI_OVERLAY)
    state = Path("/var/lib/edge-agent")
    watch = HostWatch(state, root=root)
    (event,) = await watch.check()
    assert event.kind == "host_state_in_ram"
    assert event.detail["state_dir"] == str(state)
    assert event.detail["medium"] == "overlay over tmpfs"
    assert "raspi-config" in event.detail["what_to_do"]
    assert await watch.check() == [], "said once per start"
    health = watch.health()
    assert health is not None
    (problem,) = health.problems()
    assert problem.startswith(f"the state directory {state} is in RAM (overlay over tmpfs): the outbox")
    assert "state IN RAM (overlay over tmpfs): LOST AT REBOOT" in health.status_lines()[0]

    accepted = HostWatch(state, root=root, accept_state_in_ram=True)
    assert await accepted.check() == []
    health = accepted.health()
    assert health is not None
    assert health.problems() == []
    assert "LOST AT REBOOT (accepted)" in health.status_lines()[0]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def overlay_root() -> Iterator[Path]:
    """raspi-config's Overlay File System in small: a tmpfs, and an overlay over a directory on disk
    whose writes go to that tmpfs. Yields the overlay's mount point."""
    base = Path(tempfile.mkdtemp(prefix="ovl-"))
    ram, lower, merged = base / "rw", base / "ro", base / "root"
    for folder in (ram, lower, merged):
        folder.mkdir()
    mounted: list[Path] = []
    try:
        try:
            _mount("-t", "tmpfs", "-o", "size=32m", "tmpfs-root", str(ram))
            mounted.append(ram)
            (ram / "upper").mkdir()
            (ram / "work").mkdir()
            options = f"lowerdir={lower},upperdir={ram / 'upper'},workdir={ram / 'work'}"
            _mount("-t", "overlay", "-o", options, "overlayroot", str(merged))
            mounted.append(merged)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            reason = getattr(exc, "stderr", None) or exc
            pytest.skip(f"this machine may not mount a tmpfs and an overlay here: {reason}")
        yield merged
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)
        subprocess.run(["rm", "-rf", str(base)], capture_output=True, timeout=30, check=False)


def _accepting(text: str) -> str:
    head, sep, rest = text.partition("\nstate_dir = ")
    line, _, tail = rest.partition("\n")
    return f"{head}{sep}{line}\naccept_state_in_ram = true\n{tail}"


def test_an_agent_on_the_overlay_file_system_says_its_state_is_lost_at_reboot(overlay_root: Path) -> None:
    """A real agent with its state on a real overlay over a tmpfs: check-config warns, the status
    line, the verdict, the schema, Prometheus and the event in the outbox say it; accepted, the
    status line alone does and the verdict is its own again."""
    state = overlay_root / "var/lib/edge-agent"
    socket = overlay_root.parent / "status.sock"
    config = overlay_root.parent / "agent.toml"
    text = agent_config(state, status_socket=socket, devices=[FLOW_PLC])
    config.write_text(text)

    checked = edge_agent("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    (warning,) = [line for line in checked.stderr.splitlines() if "gateway.state_dir" in line]
    assert f"{state} is in RAM on this machine (overlay over tmpfs)" in warning

    snap, shown = status_once_the_host_is_seen(config, socket)
    jsonschema.validate(snap, STATUS_SCHEMA)
    assert snap["host"]["state_in_ram"] == "overlay over tmpfs"
    assert snap["verdict"]["state"] == "degraded"
    (problem,) = [p for p in snap["verdict"]["problems"] if "in RAM" in p]
    assert problem.startswith(f"the state directory {state} is in RAM (overlay over tmpfs)")
    assert shown.returncode == 1
    (line,) = [line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("host ")]
    assert line.endswith("state IN RAM (overlay over tmpfs): LOST AT REBOOT")
    exposed = dict(line.rpartition(" ")[::2] for line in exposition_text(snap).splitlines())
    assert float(exposed["edge_agent_host_state_in_ram"]) == 1
    (event,) = outbox_events(state / "outbox.sqlite", "host_state_in_ram")
    assert event.detail == {
        "state_dir": str(state),
        "medium": "overlay over tmpfs",
        "what_to_do": event.detail["what_to_do"],
    }

    config.write_text(_accepting(text))
    checked = edge_agent("check-config", str(config))
    assert "gateway.state_dir" not in checked.stderr
    with running_agent(config) as agent:
        snap = agent.wait_status(lambda s: s.get("host") is not None, timeout=30)
        assert agent.stop() == 0
    assert snap["host"]["state_in_ram_accepted"] is True
    assert not [p for p in snap["verdict"]["problems"] if "in RAM" in p]
