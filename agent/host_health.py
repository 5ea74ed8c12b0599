"""The gateway's own health in its cabinet: power, heat and room on the card.

A Raspberry Pi on a weak or long-cabled supply runs below 4.63 V: the firmware flags it, and the
USB bus that carries the M-Bus master and RS-485 adapters resets under load (a serial device
drops, comes back renumbered) and the SD card takes corrupt writes. A cabinet in the summer sun
takes the SoC past 80 °C, where the firmware slows the CPU and inference falls behind. And the
card fills with other things than the outbox (journald, apt, a technician's captures) until
nothing can be written. None of this is seen from the centre unless the agent says so.

`HostWatch` reads, every `interval_s` (off the event loop; a few small sysfs files and a statvfs):
- the firmware's throttled flags (`/sys/devices/platform/soc/soc:firmware/get_throttled`, a
  Raspberry Pi; else the `rpi_volt` hwmon's under-voltage alarm), now and since boot;
- the SoC temperature (`/sys/class/thermal/thermal_zone*/temp`: the CPU's zone, else the
  hottest);
- the free space of the file system that holds the state directory (the outbox);
- whether that file system keeps its writes in RAM (core.mounts: a tmpfs, zram, raspi-config's
  Overlay File System), where the outbox and the learnt state are lost at every reboot.
What a machine does not have (no Pi firmware, no thermal zone) is left out, never an error.
Each condition makes the agent degraded while it lasts (an under-voltage seen since boot until the
next boot: the firmware keeps that flag, and the supply that caused it is still there) and is sent
once as an event when it begins (`host_undervoltage`, `host_overheating`, `host_disk_low`,
`host_state_in_ram`), with a `..._cleared` when heat or space come back. A state directory in RAM on
purpose (a throwaway demo, a gateway that only relays) is said in the status line alone once
`[gateway] accept_state_in_ram` says so.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from water_edge.agent.storage_wear import storage_wear, worn
from water_edge.core import mounts, units
from water_edge.core.reading import Event, now_ns

log = structlog.get_logger(__name__)

SYSFS_ROOT = Path("/")  # where /sys is looked for (the tests give a directory of their own)
THROTTLED_FILE: Final = "sys/devices/platform/soc/soc:firmware/get_throttled"
HWMON_DIR: Final = "sys/class/hwmon"
THERMAL_DIR: Final = "sys/class/thermal"
CPU_ZONES: Final = ("cpu-thermal", "cpu_thermal", "soc_thermal", "x86_pkg_temp")

# The firmware's get_throttled bits (Raspberry Pi documentation, vcgencmd get_throttled).
UNDERVOLTAGE_NOW: Final = 1 << 0
CAPPED_NOW: Final = 1 << 1
THROTTLED_NOW: Final = 1 << 2
SOFT_TEMP_LIMIT_NOW: Final = 1 << 3
UNDERVOLTAGE_SINCE_BOOT: Final = 1 << 16
THROTTLED_SINCE_BOOT: Final = 1 << 18

HOT_C: Final = 80.0  # a Pi 4/5 begins to slow down here
COOL_C: Final = 75.0  # hysteresis: overheating clears below this
LOW_FREE_FRACTION: Final = 0.05
LOW_FREE_BYTES: Final = 200 * 1024 * 1024
INTERVAL_S: Final = 30.0

SUPPLY_ADVICE: Final = (
    "use a 5.1 V supply rated for the board (3 A for a Pi 4, 5 A for a Pi 5) with a short, thick "
    "cable, and power USB adapters from a powered hub: under-voltage resets USB serial adapters and "
    "corrupts SD card writes"
)
HEAT_ADVICE: Final = (
    "the CPU slows down to cool: shade or ventilate the cabinet, fit a heatsink or a fan; inference "
    "falls behind while it lasts"
)
WEAR_ADVICE: Final = (
    "the eMMC holding the state directory is near the end of its rated life: export the learnt "
    "state (edge-agent state export) and plan the board's replacement before it fails"
)
RAM_ADVICE: Final = (
    "the outbox and every learnt baseline and calibration are lost at each reboot or power cut: "
    "put gateway.state_dir on the card; on Raspberry Pi OS turn the Overlay File System off "
    "(raspi-config, Performance Options), or keep state_dir out of what log2ram/folder2ram move "
    "to RAM; set [gateway] accept_state_in_ram = true if that loss is intended"
)
DISK_ADVICE: Final = (
    "free space on the card (journalctl --vacuum-size=100M, apt clean, old captures); the outbox "
    "cannot grow past what is left and the agent stops when it cannot write"
)


@dataclass(frozen=True, slots=True)
class HostHealth:
    """What the gateway's board says about itself (`core.health.Health`, `Problems`)."""

    undervoltage_now: bool | None  # None: no Pi firmware to ask
    undervoltage_since_boot: bool | None
    throttled_now: bool | None  # the CPU slowed or capped now (heat or power)
    throttled_since_boot: bool | None
    temperature_c: float | None  # None: no thermal zone
    filesystem: str  # the state directory, whose file system is measured
    free_bytes: int | None  # None: statvfs failed
    size_bytes: int | None
    # The eMMC's own wear estimate (agent.storage_wear); None: a disk that reports none (SD cards)
    storage_device: str | None = None
    storage_wear_pct: int | None = None
    storage_pre_eol: str | None = None
    # What keeps the state directory's writes in RAM ("tmpfs", "overlay over tmpfs"...); None: a disk
    state_in_ram: str | None = None
    state_in_ram_accepted: bool = False  # [gateway] accept_state_in_ram

    @property
    def hot(self) -> bool:
        return self.temperature_c is not None and self.temperature_c >= HOT_C

    @property
    def disk_low(self) -> bool:
        if self.free_bytes is None or not self.size_bytes:
            return False
        return self.free_bytes < LOW_FREE_BYTES or self.free_bytes < LOW_FREE_FRACTION * self.size_bytes

    @property
    def heat_throttled(self) -> bool:
        """Slowed by heat: hot, or throttled while the supply holds (under-voltage throttles too)."""
        return self.hot or (bool(self.throttled_now) and not self.undervoltage_now)

    @property
    def state_lost_at_reboot(self) -> bool:
        """The state directory is in RAM and nobody said that is intended."""
        return self.state_in_ram is not None and not self.state_in_ram_accepted

    @property
    def storage_worn(self) -> bool:
        return self.storage_device is not None and worn(self.storage_wear_pct, self.storage_pre_eol)

    def _wear_text(self) -> str:
        used = "" if self.storage_wear_pct is None else f"{min(self.storage_wear_pct, 100)} % worn"
        if self.storage_wear_pct is not None and self.storage_wear_pct > 100:
            used = "worn past its rating"
        eol = (
            ""
            if self.storage_pre_eol in (None, "normal")
            else f"reserve blocks {self.storage_pre_eol.upper()}"
        )
        return ", ".join(p for p in (used, eol) if p) or "wear normal"

    def status_lines(self) -> list[str]:
        parts = []
        if self.temperature_c is not None:
            parts.append(f"{self.temperature_c:.0f} °C")
        if self.undervoltage_now is not None:
            power = "power OK"
            if self.undervoltage_now:
                power = "UNDER-VOLTAGE NOW"
            elif self.undervoltage_since_boot:
                power = "UNDER-VOLTAGE since boot"
            parts.append(power)
        if self.throttled_now:
            parts.append("CPU THROTTLED")
        if self.free_bytes is not None and self.size_bytes:
            free = f"{units.size(self.free_bytes)} free of {units.size(self.size_bytes)}"
            parts.append(f"card {free}{'  LOW' if self.disk_low else ''}")
        if self.storage_device is not None:
            parts.append(f"{self.storage_device} {self._wear_text()}")
        if self.state_in_ram is not None:
            accepted = " (accepted)" if self.state_in_ram_accepted else ""
            parts.append(f"state IN RAM ({self.state_in_ram}): LOST AT REBOOT{accepted}")
        return [f"host     {'  '.join(parts)}"] if parts else []

    def problems(self) -> list[str]:
        found = []
        if self.undervoltage_now or self.undervoltage_since_boot:
            when = "now" if self.undervoltage_now else "since boot"
            slowed = ", the CPU throttled" if self.undervoltage_now and self.throttled_now else ""
            found.append(f"power supply under-voltage {when}{slowed}: {SUPPLY_ADVICE}")
        if self.heat_throttled:
            heat = "" if self.temperature_c is None else f" at {self.temperature_c:.0f} °C"
            what = f"the board is hot{heat}" if self.hot else f"the CPU is throttled{heat}"
            also = " and throttled" if self.hot and self.throttled_now else ""
            found.append(f"{what}{also}: {HEAT_ADVICE}")
        if self.storage_worn:
            found.append(f"{self.storage_device} {self._wear_text()}: {WEAR_ADVICE}")
        if self.state_lost_at_reboot:
            medium = self.state_in_ram
            found.append(f"the state directory {self.filesystem} is in RAM ({medium}): {RAM_ADVICE}")
        if self.disk_low and self.free_bytes is not None:
            found.append(
                f"the card holding {self.filesystem} has {units.size(self.free_bytes)} free: {DISK_ADVICE}"
            )
        return found


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def throttled_flags(root: Path) -> int | None:
    """The firmware's throttled bitmask, or the `rpi_volt` hwmon's under-voltage alarm as bits 0
    and 16 (it holds no history); None on a machine with neither."""
    text = _read_text(root / THROTTLED_FILE)
    if text:
        try:
            return int(text, 16)
        except ValueError:
            log.debug("host.throttled_unreadable", text=text[:32])
    try:
        hwmons = sorted((root / HWMON_DIR).iterdir())
    except OSError:
        return None
    for hwmon in hwmons:
        if _read_text(hwmon / "name") == "rpi_volt":
            alarm = _read_text(hwmon / "in0_lcrit_alarm")
            if alarm in ("0", "1"):
                return UNDERVOLTAGE_NOW | UNDERVOLTAGE_SINCE_BOOT if alarm == "1" else 0
    return None


def temperature_c(root: Path) -> float | None:
    """The CPU's thermal zone in °C, else the hottest zone; None without any."""
    try:
        zones = sorted((root / THERMAL_DIR).glob("thermal_zone*"))
    except OSError:
        return None
    found: dict[str, float] = {}
    for zone in zones:
        raw = _read_text(zone / "temp")
        try:
            found[_read_text(zone / "type") or zone.name] = int(raw or "") / 1000
        except ValueError:
            continue
    for name in CPU_ZONES:
        if name in found:
            return found[name]
    return max(found.values()) if found else None


def sample(root: Path, state_dir: Path, *, accept_state_in_ram: bool = False) -> HostHealth:
    """One look at the board (blocking: a few sysfs reads, a statvfs and the mount table)."""
    flags = throttled_flags(root)

    def bit(mask: int) -> bool | None:
        return None if flags is None else bool(flags & mask)

    free: int | None
    size: int | None
    try:
        fs = os.statvfs(state_dir)
        free, size = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
    except OSError:
        free = size = None
    wear = storage_wear(root, state_dir)
    return HostHealth(
        undervoltage_now=bit(UNDERVOLTAGE_NOW),
        undervoltage_since_boot=bit(UNDERVOLTAGE_SINCE_BOOT),
        throttled_now=bit(CAPPED_NOW | THROTTLED_NOW | SOFT_TEMP_LIMIT_NOW),
        throttled_since_boot=bit(THROTTLED_SINCE_BOOT),
        temperature_c=temperature_c(root),
        filesystem=str(state_dir),
        free_bytes=free,
        size_bytes=size,
        storage_device=None if wear is None else wear.device,
        storage_wear_pct=None if wear is None else wear.wear_pct,
        storage_pre_eol=None if wear is None else wear.pre_eol,
        state_in_ram=mounts.in_ram(state_dir, root),
        state_in_ram_accepted=accept_state_in_ram,
    )


class HostWatch:
    """Samples the board every `interval_s` and sends an event when a condition begins or ends."""

    def __init__(
        self,
        state_dir: Path,
        *,
        root: Path | None = None,
        interval_s: float = INTERVAL_S,
        emit: Callable[[Event], Awaitable[None]] | None = None,
        accept_state_in_ram: bool = False,
    ) -> None:
        self.state_dir, self.interval_s = state_dir, interval_s
        self.accept_state_in_ram = accept_state_in_ram
        self.root = SYSFS_ROOT if root is None else root
        self.latest: HostHealth | None = None
        self._emit = emit
        self._undervoltage_said = False
        self._hot = False
        self._disk_low = False
        self._worn_said = False
        self._in_ram_said = False

    def health(self) -> HostHealth | None:
        return self.latest

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # an odd sysfs or a failing emit never stops the agent
                log.exception("host.check_failed")
            await asyncio.sleep(self.interval_s)

    async def check(self) -> list[Event]:
        """Sample once; the events this sample begins or ends (also emitted when bound)."""
        now = await asyncio.to_thread(
            sample, self.root, self.state_dir, accept_state_in_ram=self.accept_state_in_ram
        )
        self.latest = now
        events = self._changes(now)
        for event in events:
            log.warning(f"host.{event.kind.removeprefix('host_')}", **event.detail)
            if self._emit is not None:
                await self._emit(event)
        return events

    def _changes(self, now: HostHealth) -> list[Event]:
        events = []
        if (now.undervoltage_now or now.undervoltage_since_boot) and not self._undervoltage_said:
            self._undervoltage_said = True
            events.append(
                self._event(
                    "host_undervoltage",
                    "warning",
                    now=bool(now.undervoltage_now),
                    since_boot=bool(now.undervoltage_since_boot),
                    what_to_do=SUPPLY_ADVICE,
                )
            )
        hot = now.heat_throttled
        cooled = now.temperature_c is None or now.temperature_c < COOL_C
        if hot and not self._hot:
            self._hot = True
            detail = {"temperature_c": now.temperature_c, "throttled": now.throttled_now}
            events.append(self._event("host_overheating", "warning", **detail, what_to_do=HEAT_ADVICE))
        elif self._hot and not now.heat_throttled and cooled:
            self._hot = False
            events.append(self._event("host_overheating_cleared", "info", temperature_c=now.temperature_c))
        if now.storage_worn and not self._worn_said:
            self._worn_said = True
            wear = {
                "device": now.storage_device,
                "wear_pct": now.storage_wear_pct,
                "pre_eol": now.storage_pre_eol,
            }
            events.append(self._event("host_storage_worn", "warning", **wear, what_to_do=WEAR_ADVICE))
        if now.state_lost_at_reboot and not self._in_ram_said:
            self._in_ram_said = True  # once per start: after a reboot it is a new start, with nothing kept
            ram = {"state_dir": now.filesystem, "medium": now.state_in_ram}
            events.append(self._event("host_state_in_ram", "warning", **ram, what_to_do=RAM_ADVICE))
        if now.disk_low != self._disk_low:
            self._disk_low = now.disk_low
            space = {"filesystem": now.filesystem, "free_bytes": now.free_bytes, "size_bytes": now.size_bytes}
            if now.disk_low:
                events.append(self._event("host_disk_low", "warning", **space, what_to_do=DISK_ADVICE))
            else:
                events.append(self._event("host_disk_low_cleared", "info", **space))
        return events

    @staticmethod
    def _event(kind: str, severity: Any, **detail: Any) -> Event:
        return Event(kind, "agent", now_ns(), severity, detail=detail)
