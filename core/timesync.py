"""Whether the gateway's clock is synchronised, as the kernel (or systemd-timesyncd) sees it.

A gateway without a real-time clock boots with a wrong date (1970, or the last shutdown time with
fake-hwclock) until NTP syncs. The kernel knows: `adjtimex(2)` with no mode set only reads, and its
status carries STA_UNSYNC until a time daemon (chrony, ntpd, systemd-timesyncd) has disciplined the
clock; its return value is TIME_ERROR (5) while unsynchronised; `offset`, `maxerror` and
`esterror` say how far off the clock may be. Reading needs no privilege (setting needs
CAP_SYS_TIME, which the agent never has). Where the call is filtered (a unit with ProtectClock=),
systemd-timesyncd's flag file `/run/systemd/timesync/synchronized` is the other view.

`SyncSource` is the seam: `AdjtimexSource`, `FlagFileSource`, and in tests anything with `read()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

STA_UNSYNC: Final = 0x0040
STA_NANO: Final = 0x2000
TIME_ERROR: Final = 5
TIMESYNCD_FLAG: Final = Path("/run/systemd/timesync/synchronized")


@dataclass(frozen=True, slots=True)
class SyncState:
    """One reading of the clock's synchronisation; `synchronised` is None when it cannot be known."""

    synchronised: bool | None
    source: str
    offset_ns: int | None = None  # what the kernel still has to slew
    maxerror_us: int | None = None  # the kernel's bound on the clock's error
    esterror_us: int | None = None
    error: str | None = None  # why it cannot be known


@runtime_checkable
class SyncSource(Protocol):
    def read(self) -> SyncState: ...


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """`struct timex` from <sys/timex.h> (Linux, 64-bit and 32-bit alike: longs and ints)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


class AdjtimexSource:
    """The kernel's view through `adjtimex(2)` in read-only mode (modes = 0)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(name, use_errno=True)
        self._call = self._libc.adjtimex
        self._call.argtypes = [ctypes.POINTER(_Timex)]
        self._call.restype = ctypes.c_int

    def read(self) -> SyncState:
        tx = _Timex()
        state = self._call(ctypes.byref(tx))
        if state < 0:
            errno = ctypes.get_errno()
            return SyncState(None, "adjtimex", error=f"adjtimex: {os.strerror(errno)}")
        unsynced = bool(tx.status & STA_UNSYNC) or state == TIME_ERROR
        offset = tx.offset if tx.status & STA_NANO else tx.offset * 1000
        return SyncState(not unsynced, "adjtimex", offset, tx.maxerror, tx.esterror)


class FlagFileSource:
    """systemd-timesyncd's view: the flag file exists once it has synchronised the clock."""

    def __init__(self, path: Path = TIMESYNCD_FLAG) -> None:
        self.path = path

    def read(self) -> SyncState:
        return SyncState(self.path.exists(), f"flag file {self.path}")


class NoSource:
    """`sync_source = "none"`: the clock is taken as it is (a gateway with a good RTC and no NTP)."""

    def read(self) -> SyncState:
        return SyncState(None, "none", error="not checked ([clock] sync_source = none)")


def best_source() -> SyncSource:
    """adjtimex where the call is allowed, else timesyncd's flag file."""
    source = AdjtimexSource()
    if source.read().synchronised is None and TIMESYNCD_FLAG.parent.is_dir():
        return FlagFileSource()
    return source
