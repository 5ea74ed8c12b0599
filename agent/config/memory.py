"""How much memory the agent will need for a config, before it runs: `check-config` warns when that
is more than the systemd unit allows (`MemoryMax=`) or than a small Raspberry Pi can spare.

The figures are measured, not guessed: `bench/bench_config_memory.py` runs the real agent against
the simulated PLC at several tag counts and reports the resident set at each; the constants below
are its results on this project's 2-core x86-64 test machine (a 64-bit ARM Pi runs the same
CPython and libraries; its figures are within a few per cent). An estimate: a config near a limit
deserves a measurement on the gateway (`systemctl status edge-agent` shows the memory in use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from water_edge.agent.config.load import Config

MIB = 2**20
# bench_config_memory: the agent with the demo station's 43 tags, its uplink, outbox and status.
BASE_MIB = 59.5
# bench_config_memory: the slope from 43 to 25,043 polled Modbus tags at 1 s (config, request plan,
# the readings of one poll in flight, the pipeline's batch and the outbox's pages for them).
PER_TAG_KIB = 2.65
# bench_config_memory (`own_costs`), each over the station alone, 2026-12-05: what a driver or an
# analytics kind brings besides the libraries kinds share (counted once, by `SHARED_BY`).
SHARED_MIB = {"numpy": 8.7, "tflite": 13.3}
SHARED_BY = {
    "numpy": {"device:audio", "model:pump", "model:leak", "model:machine_sound", "model:flow_leak"},
    "tflite": {"model:pump", "model:leak"},
}
# An audio device's own figure was measured with 10 s of 16 kHz stereo buffered (3.7 MiB of
# `audio_buffers`); the buffers are counted for each device from its own settings.
PER_DEVICE_KIND_MIB = {"opcua": 15.6, "wmbus": 2.8, "audio": 10.0 - 3.7}
# flow_leak: not in the demo; its state (its burst detector imports no scipy: `student_t`).
PER_PROCESSOR_KIND_MIB = {"pump": 4.0, "leak": 9.7, "machine_sound": 13.7, "meter": 0.4, "flow_leak": 5.0}
# What the shipped unit allows (deploy/edge-agent.service), when the installed one cannot be read.
SHIPPED_MEMORY_MAX = 256 * MIB
UNIT_FILES = (Path("/etc/systemd/system/edge-agent.service"), Path("/lib/systemd/system/edge-agent.service"))
# A Raspberry Pi with 1 GiB (Pi 3, Zero 2 W with 512 MiB is smaller still) shares it with the OS,
# Mosquitto bridges, page cache for the outbox: the agent should stay under half of it.
PI_BUDGET = 512 * MIB


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    total_mib: float
    base_mib: float
    tags: int
    tags_mib: float
    audio_mib: float
    processors_mib: float

    def explain(self) -> str:
        parts = [f"{self.base_mib:.0f} MiB to run", f"{self.tags_mib:.0f} MiB for {self.tags:,} tags"]
        if self.audio_mib >= 1:
            parts.append(f"{self.audio_mib:.0f} MiB of audio buffers")
        if self.processors_mib:
            parts.append(f"{self.processors_mib:.0f} MiB for drivers' and analytics' libraries and state")
        return " + ".join(parts)


def count_tags(config: Config) -> int:
    """Tags and meters: each becomes readings every poll."""
    return sum(device.point_count() for device in config.devices)


def estimate(config: Config) -> MemoryEstimate:
    from water_edge.drivers.audio.config import AudioConfig

    tags = count_tags(config)
    audio = sum(
        d.buffer_s * (d.sample_rate or 48_000) * (d.channels or 2) * 4 * 3  # ring + windows + copies
        for d in config.devices
        if isinstance(d, AudioConfig)
    )
    kinds = {f"device:{d.kind}" for d in config.devices} | {f"model:{kind}" for kind in config.models}
    drivers = sum(PER_DEVICE_KIND_MIB.get(kind.removeprefix("device:"), 0.0) for kind in kinds)
    processors = sum(PER_PROCESSOR_KIND_MIB.get(kind, 10.0) for kind in config.models)
    shared = sum(SHARED_MIB[lib] for lib, users in SHARED_BY.items() if users & kinds)
    tags_mib = tags * PER_TAG_KIB / 1024
    total = BASE_MIB + tags_mib + audio / MIB + drivers + processors + shared
    return MemoryEstimate(
        round(total, 1), BASE_MIB, tags, tags_mib, audio / MIB, drivers + processors + shared
    )


def unit_memory_max() -> tuple[int, str]:
    """The installed unit's `MemoryMax=` in bytes and where it was read (the shipped value else)."""
    for path in UNIT_FILES:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        found = re.search(r"^\s*MemoryMax\s*=\s*(\d+)([KMGT]?)\s*$", text, re.M)
        if found:
            scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[found.group(2)]
            return int(found.group(1)) * scale, str(path)
    return SHIPPED_MEMORY_MAX, "the shipped deploy/edge-agent.service"


def warnings(config: Config) -> list[str]:
    """One line per limit the config will exceed, with the figures; empty when it fits."""
    guess = estimate(config)
    need = guess.total_mib * MIB
    limit, where = unit_memory_max()
    out = []
    if need > limit:
        out.append(
            f"the agent will need about {guess.total_mib:.0f} MiB for this config ({guess.explain()}), "
            f"more than MemoryMax={limit // MIB}M in {where}: systemd would kill it. Split the tags "
            f"over more gateways, poll fewer tags, or raise MemoryMax if the gateway has the RAM"
        )
    if need > PI_BUDGET:
        out.append(
            f"about {guess.total_mib:.0f} MiB is more than a 1 GiB Raspberry Pi can give the agent "
            f"(about {PI_BUDGET // MIB} MiB beside the OS and page cache)"
        )
    return out
