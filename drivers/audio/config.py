"""The `[[devices]]` schema of a hydrophone (`kind = "audio"`), validated without touching hardware.

One model covers the three sources; the keys a source needs are checked against `source`, so
`check-config` catches a file source without `path` or a stream source without `stream_url`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal, Self

from pydantic import Field, field_validator, model_validator

from water_edge.core.hosts import check_host, check_port
from water_edge.core.local_zone import check_zone
from water_edge.core.names import NAME_PATTERN
from water_edge.core.night_length import check_night_length, night_keys
from water_edge.drivers.base import DeviceConfig

# Nominal octave-band centres (IEC 61260); bands whose upper edge passes Nyquist are left out.
OCTAVE_CENTRES_HZ: Final = (31.5, 63.0, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0)
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_STREAM_URL = re.compile(
    r"^(tcp://(?:\[(?P<host6>[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)\]|(?P<host>[^:/\s\[\]]+)):(?P<port>\d{1,5})|unix://\S+)$"
)


class AudioConfig(DeviceConfig):
    kind: Literal["audio"]
    source: Literal["device", "file", "stream"]

    # --- device (PortAudio): name substring or index; None = the system's default input ---
    device: str | int | None = None
    dtype: Literal["float32", "int16", "int32"] = "float32"
    blocksize: int = Field(default=1024, ge=0, le=65536)
    latency: Literal["low", "high"] | float = "high"

    # --- file: a WAV file played in real time (or `playback_speed` times faster) ---
    path: Path | None = None
    loop: bool = False
    playback_speed: float = Field(default=1.0, gt=0, le=1000)

    # --- stream: firmware-sim's live hydrophone stream ---
    stream_url: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)

    def endpoint_text(self) -> str:
        if self.source == "stream":
            return str(self.stream_url)
        if self.source == "file":
            return str(self.path)
        return "default input" if self.device is None else f"sound card {self.device}"

    # Required for a device; for a file or stream it is an expectation checked at open().
    sample_rate: int | None = Field(default=None, ge=1000, le=384_000)
    channels: int | None = Field(default=None, ge=1, le=32)
    channel_names: list[str] | None = None
    # dBFS -> dB re 1 uPa, per channel (the hydrophone + preamp + ADC sensitivity).
    calibration_db: list[float] | None = None

    window_s: float = Field(default=1.0, ge=0.05, le=60)
    hop_s: float = Field(default=0.5, ge=0.01, le=60)
    level_interval_s: int = Field(default=10, ge=1, le=3600)
    bands_hz: list[float] = Field(default_factory=lambda: list(OCTAVE_CENTRES_HZ), min_length=1)
    night_start: str = "02:00"
    night_end: str = "04:00"
    night_history: int = Field(default=7, ge=2, le=365)
    # The zone the night window is read in (IANA name); None: the machine's own zone.
    timezone: str | None = None
    # Ring buffer between capture and analysis; frames beyond it are dropped and counted.
    buffer_s: float = Field(default=10.0, ge=1, le=600)
    # No audio for this long from a device or stream means it is gone (DriverIOError).
    stall_timeout_s: float = Field(default=5.0, ge=0.5, le=300)

    @field_validator("night_start", "night_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("expected local time as 'HH:MM', e.g. '02:00'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return check_zone(value)

    @field_validator("stream_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _STREAM_URL.match(value)
        if match is None:
            raise ValueError("expected 'tcp://HOST:PORT', 'tcp://[IPv6]:PORT' or 'unix:///path/to/socket'")
        host = match["host"] or match["host6"]
        if host is not None:
            check_host(host)
            check_port(match["port"])
        return value

    @field_validator("channel_names")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len(set(value)) != len(value):
            raise ValueError("channel names must be distinct")
        for name in value:
            if not re.match(NAME_PATTERN, name) or len(name) > 32:
                raise ValueError(f"channel name {name!r}: letters, digits, '_', '.', '-' (max 32)")
        return value

    @field_validator("bands_hz")
    @classmethod
    def _bands(cls, value: list[float]) -> list[float]:
        if any(f <= 0 for f in value) or sorted(set(value)) != value:
            raise ValueError("expected band centre frequencies in Hz, positive and increasing")
        return value

    @model_validator(mode="after")
    def _check_source(self) -> Self:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs 'path' (a WAV file)")
        if self.source == "stream" and self.stream_url is None:
            raise ValueError("source 'stream' needs 'stream_url' ('tcp://HOST:PORT' or 'unix:///path')")
        if self.source != "file" and (self.path is not None or self.loop):
            raise ValueError("'path' and 'loop' are for source 'file' only")
        if self.source != "stream" and self.stream_url is not None:
            raise ValueError("'stream_url' is for source 'stream' only")
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must not exceed window_s ({self.window_s})")
        n = self.channels
        for key, value in (("channel_names", self.channel_names), ("calibration_db", self.calibration_db)):
            if value is not None and n is not None and len(value) != n:
                raise ValueError(f"'{key}' has {len(value)} entries but channels = {n}")
        if (
            self.channel_names is not None
            and self.calibration_db is not None
            and len(self.channel_names) != len(self.calibration_db)
        ):
            raise ValueError("'channel_names' and 'calibration_db' must have one entry per channel")
        if self.night_start == self.night_end:
            raise ValueError("night_start and night_end must differ")
        check_night_length(self.night_start, self.night_end, night_keys)
        return self

    @property
    def expected_channels(self) -> int | None:
        """Channels the config implies (explicitly or through per-channel lists)."""
        for value in (self.channels, self.channel_names, self.calibration_db):
            if isinstance(value, int):
                return value
            if isinstance(value, list):
                return len(value)
        return None

    def names_for(self, channels: int) -> list[str]:
        """Channel names: configured, or A, B, C, ... as two-sensor layouts name them."""
        if self.channel_names is not None:
            return list(self.channel_names)
        return [chr(ord("A") + i) if i < 26 else f"ch{i}" for i in range(channels)]


def bands_below_nyquist(centres: list[float], sample_rate: int) -> list[float]:
    """The bands whose upper edge (fc * 2**0.5) lies at or below Nyquist."""
    return [fc for fc in centres if fc * 2**0.5 <= sample_rate / 2]
