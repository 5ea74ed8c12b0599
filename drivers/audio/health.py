"""The audio driver's typed health (`core.health.Health`): capture, gap and ring counters as the status
document shows them under the device's `driver`, and the driver's own status lines.

The source's own counters (`SourceHealth`: device callbacks, file loops, stream blocks) sit flat
beside the driver's, as they always have in the status document; a field belonging to another
kind of source, or to a source that is not open, is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from water_edge.core.sensor_faults import describe

SourceKind = Literal["device", "file", "stream"]


@dataclass(frozen=True, slots=True)
class Gap:
    """One loss of frames: when, why (`input_overflow`, `stream_gap`, `ring_overrun`), how many."""

    ts_ns: int
    cause: str
    frames: int


@dataclass(frozen=True, slots=True)
class GapCounts:
    """Dropped frames by cause and the latest gaps (`GapLog.snapshot()`)."""

    dropped_frames: int
    dropped_by_cause: dict[str, int]
    gaps: int
    recent_gaps: tuple[Gap, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceHealth:
    """What an open source counts (`Source.health()`); each kind fills its own fields."""

    device: str | None = None  # device: the configured PortAudio device
    callbacks: int | None = None
    input_overflows: int | None = None
    repeated_blocks: int | None = None  # blocks bitwise equal to the one before: dropped as gaps
    clock_error_ms: float | None = None  # frame timestamps minus the gateway clock, last measured
    clock_rate_hz: float | None = None  # the rate the frames are counted at (the card's own)
    path: str | None = None  # file
    loop: bool | None = None
    loops: int | None = None
    finished: bool | None = None
    url: str | None = None  # stream
    blocks: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioHealth(SourceHealth):
    open: bool
    source: SourceKind
    frames_captured: int
    windows: int
    window_listeners: int
    listener_errors: int
    nonfinite_frames: int  # frames that held NaN or infinite samples, read as 0
    clipped_frames: int  # frames with a sample at full scale: the input gain is too high
    # channel -> the fault its latest window shows (none: absent); "<channel>.<fault>" -> windows
    sensor_faults: dict[str, str] = field(default_factory=dict)
    fault_windows: dict[str, int] = field(default_factory=dict)
    dropped_frames: int
    dropped_by_cause: dict[str, int]
    gaps: int
    recent_gaps: tuple[Gap, ...]  # the last 20
    sample_rate: int | None  # None while not open, as are the channels and the ring
    channels: int | None
    ring_capacity_frames: int | None
    ring_fill_frames: int | None

    def status_lines(self) -> list[str]:
        if not self.open or self.sample_rate is None:
            head = f"{self.source} closed"
        else:
            head = f"{self.source} {self.sample_rate} Hz x {self.channels}"
        lines = [
            f"{head}  windows {self.windows}  dropped frames {self.dropped_frames} (gaps {self.gaps})"
            + (f"  listener errors {self.listener_errors}" if self.listener_errors else "")
        ]
        if self.dropped_by_cause:
            lines.append("dropped " + ", ".join(f"{c} {n}" for c, n in sorted(self.dropped_by_cause.items())))
        if self.nonfinite_frames:
            lines.append(f"{self.nonfinite_frames} frames held NaN or infinite samples (read as 0)")
        if self.clipped_frames:
            share = self.clipped_frames / max(1, self.frames_captured)
            lines.append(
                f"CLIPPING: {self.clipped_frames} frames at full scale ({share:.2%} of those captured): "
                "lower the input gain"
            )
        for channel, fault in sorted(self.sensor_faults.items()):
            lines.append(f"SENSOR FAULT {channel}: {describe(fault)}: kept out of the models' baselines")
        if self.fault_windows:
            lines.append(
                "windows with a sensor fault: "
                + ", ".join(f"{key} {n}" for key, n in sorted(self.fault_windows.items()))
            )
        if self.clock_rate_hz is not None and self.clock_error_ms is not None:
            lines.append(
                f"clock: frames counted at {self.clock_rate_hz:g} Hz, "
                f"{self.clock_error_ms:+g} ms from the gateway clock at the last check"
            )
        if self.repeated_blocks:
            lines.append(f"{self.repeated_blocks} repeated blocks from the sound card (dropped as gaps)")
        return lines
