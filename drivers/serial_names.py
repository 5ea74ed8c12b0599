"""Which USB serial adapter a port name leads to, and the names of it that do not change.

The kernel numbers USB serial adapters (`/dev/ttyUSB0`, `/dev/ttyACM0`) in the order it finds
them at boot. With two adapters on a gateway (an M-Bus master and an RS-485 line, two RS-485
lines) the numbers can swap at a reboot, and a device configured on `/dev/ttyUSB0` then polls the
other adapter's line: its meters look dead, or, on two Modbus lines with alike unit IDs, another
line's values are stored under its tags. udev gives every adapter names that hold:
`/dev/serial/by-id/...` (the adapter's vendor, model and serial number: it follows the adapter to
any USB socket) and `/dev/serial/by-path/...` (the USB socket it is plugged into). Adapters
without a serial number of their own (many CH340 and CP210x) share one by-id name, which udev
then gives to only one of them; for those only by-path tells them apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# udev's persistent names for serial devices (60-serial.rules): (by-id, by-path)
LINK_DIRS: Final = (Path("/dev/serial/by-id"), Path("/dev/serial/by-path"))
_KERNEL_NUMBERED: Final = re.compile(r"^/dev/tty(USB|ACM)[0-9]+$")


@dataclass(frozen=True, slots=True)
class StableNames:
    """The udev names that lead to one serial device node."""

    device: str  # the node they lead to, e.g. /dev/ttyUSB0
    by_id: tuple[str, ...]
    by_path: tuple[str, ...]
    by_id_shared: bool  # some adapter has no by-id name of its own: by-id may change hands

    def preferred(self) -> str | None:
        """The name to configure: by-id when every adapter has its own, else by-path."""
        if self.by_id and not self.by_id_shared:
            return self.by_id[0]
        if self.by_path:
            return self.by_path[0]
        return self.by_id[0] if self.by_id else None

    def adapter(self) -> str | None:
        """What identifies the adapter behind the node, for telling whether it changed: its by-id
        name when that is its own, else the USB socket it is plugged into."""
        name = self.preferred()
        return None if name is None else Path(name).name


def _links(directory: Path) -> dict[str, str]:
    """{link path: the node it leads to} for the links in `directory` (none when it is absent)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {}
    found = {}
    for entry in entries:
        try:
            found[entry.path] = os.path.realpath(entry.path)
        except OSError:
            continue
    return found


def stable_names(port: str, link_dirs: Sequence[Path] | None = None) -> StableNames:
    """The by-id and by-path names leading to where `port` leads (`link_dirs`: udev's by-id and
    by-path directories; the tests give their own)."""
    by_id_dir, by_path_dir = LINK_DIRS if link_dirs is None else link_dirs
    device = os.path.realpath(port)
    by_id, by_path = _links(by_id_dir), _links(by_path_dir)
    return StableNames(
        device=device,
        by_id=tuple(sorted(link for link, node in by_id.items() if node == device)),
        by_path=tuple(sorted(link for link, node in by_path.items() if node == device)),
        # by-path names every adapter; one left without a by-id name shares its by-id with another
        by_id_shared=bool(set(by_path.values()) - set(by_id.values())),
    )


def is_stable(port: str, link_dirs: Sequence[Path] | None = None) -> bool:
    """True when `port` is itself one of udev's persistent names."""
    dirs = LINK_DIRS if link_dirs is None else link_dirs
    parent = os.path.dirname(os.path.abspath(port))
    return any(parent == os.path.abspath(d) for d in dirs)


def numbered_port(port: str, link_dirs: Sequence[Path] | None = None) -> StableNames | None:
    """The stable names of `port` when it is a name the kernel numbers (`/dev/ttyUSB0`,
    `/dev/ttyACM1`, or any node udev has persistent names for) rather than a link to it; None for
    a stable name, a site's own udev link, an on-board UART, a pseudo-terminal or a FIFO."""
    if is_stable(port, link_dirs) or os.path.islink(port):
        return None  # udev's names, or a link of a site's own udev rule (/dev/mbus-master)
    names = stable_names(port, link_dirs)
    if _KERNEL_NUMBERED.match(port) or names.by_id or names.by_path:
        return names
    return None


def numbered_port_advice(port: str, names: StableNames) -> str:
    """Why a kernel-numbered port name is a risk, and the name to put instead."""
    why = (
        f"{port} is numbered by the kernel in the order it finds USB adapters, and with two adapters "
        "the numbers can swap at a reboot: this device would then poll the other adapter's line"
    )
    stable = names.preferred()
    if stable is None:
        return (
            f"{why}; name the adapter by its link in /dev/serial/by-id/ or /dev/serial/by-path/ "
            "(ls -l /dev/serial/by-id/ /dev/serial/by-path/ with it plugged in)"
        )
    if stable in names.by_id:
        return f"{why}; use its stable name {stable} (the adapter's own, in whichever USB socket)"
    shared = (
        " (adapters without a serial number of their own share one by-id name)" if names.by_id_shared else ""
    )
    return f"{why}; use its stable name {stable} (the USB socket it is plugged into){shared}"


def port_to_configure(port: str, link_dirs: Sequence[Path] | None = None) -> str:
    """The name to put in a config for `port`: its stable name when it is a kernel-numbered one
    that has one (what `scan` prints), else `port` as given."""
    names = numbered_port(port, link_dirs)
    stable = None if names is None else names.preferred()
    return port if stable is None else stable


__all__ = [
    "LINK_DIRS",
    "StableNames",
    "is_stable",
    "numbered_port",
    "numbered_port_advice",
    "port_to_configure",
    "stable_names",
]
