"""A Raspberry Pi's SD card going read-only, for real: an ext4 image on a loop device, mounted with
`errors=remount-ro`, failed through ext4's own error path (`/sys/fs/ext4/<dev>/trigger_fs_error`,
what a failed block read does) and mended as a technician or a reboot does (unmounted, `e2fsck`,
mounted again). `ext4_card()` skips the test, with the reason, where this machine may not mount or
lacks the tools; conftest's `card` fixture is it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TOOLS = ("mount", "umount", "losetup", "mkfs.ext4", "e2fsck")


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


@dataclass
class Card:
    """An ext4 file system on a loop device, mounted at `mount` with errors=remount-ro."""

    image: Path
    mount: Path
    devices: list[str] = field(default_factory=list)

    def attach_and_mount(self) -> None:
        device = _run("losetup", "--find", "--show", str(self.image))
        self.devices.append(device)
        _run("mount", "-t", "ext4", "-o", "errors=remount-ro", device, str(self.mount))

    def fail(self) -> None:
        """ext4's error path: the file system takes no more writes (EROFS), as after I/O errors."""
        name = Path(self.devices[-1]).name
        Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("1")

    def replace(self) -> None:
        """Unmount (lazily: the agent still holds files on it), check, mount again: a reboot."""
        _run("umount", "-l", str(self.mount))
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, timeout=60, check=False)
        self.attach_and_mount()

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("umount", "-l", str(self.mount))
        for device in self.devices:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("losetup", "-d", device)


@contextlib.contextmanager
def ext4_card() -> Iterator[Card]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to mount an ext4 image")
    base = Path(tempfile.mkdtemp(prefix="readonly-card-"))
    card = Card(base / "card.img", base / "mnt")
    card.mount.mkdir()
    try:
        _run("truncate", "-s", "64M", str(card.image))
        _run("mkfs.ext4", "-q", "-F", str(card.image))
        try:
            card.attach_and_mount()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"this machine may not mount a loop device here: {exc.stderr.strip()}")
        if not Path(f"/sys/fs/ext4/{Path(card.devices[-1]).name}/trigger_fs_error").exists():
            pytest.skip("this kernel's ext4 has no trigger_fs_error to fail the file system")
        yield card
    finally:
        card.remove()  # never leave a mount or a loop device behind
        shutil.rmtree(base, ignore_errors=True)
