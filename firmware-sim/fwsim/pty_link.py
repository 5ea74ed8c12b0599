"""Pseudo-terminal pairs standing in for serial cables: the sim holds the master end, a driver
opens the slave path (`/dev/pts/N`) as it would `/dev/ttyUSB0`.

A stable symlink (`link`) points at the current slave, like a udev `/dev/serial/by-id/...` name:
`unplug()` closes the pair (the driver's reads fail, as when a USB adapter is pulled) and
`plug()` makes a new pair and repoints the link, so a driver configured with the link finds the
device again when it reopens.
"""

from __future__ import annotations

import contextlib
import os
import pty
import tty
from pathlib import Path


class PtyLink:
    """One pseudo-terminal pair with a stable symlink to its slave side."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master_fd = -1
        self._slave_fd = -1
        self.path = ""

    @property
    def plugged(self) -> bool:
        return self.master_fd >= 0

    def plug(self) -> str:
        """Open a new pair in raw mode; returns the slave path."""
        self.unplug()
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master_fd, self._slave_fd = master, slave
        # Holding the slave open ourselves keeps the master from seeing a hang-up (EIO) while no
        # driver has the port open.
        self.path = os.ttyname(slave)
        tmp = self.link.with_name(self.link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.path)
        os.replace(tmp, self.link)
        return self.path

    def unplug(self) -> None:
        for fd in (self.master_fd, self._slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self._slave_fd = -1

    def close(self) -> None:
        self.unplug()
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
