"""The driver interface: nothing above `drivers/` knows a register address.

A polled driver is built from its validated config (`from_config`, no I/O, so `check-config`
runs on a laptop), then `open()`, `read()` once per poll, `aclose()`. `read()` returns one
reading per configured tag; a tag whose request failed comes back as a `bad` reading with a
reason. `open()` and `read()` raise `DriverIOError` when the device as a whole cannot be reached;
the supervisor then backs off, reconnects, and stands in bad readings for every tag meanwhile.

Optional capabilities are `runtime_checkable` protocols the agent tests with `isinstance`:
`Streaming` (pushed data), `Writable` (the opt-in PLC write the write guard uses) and
`WindowSource` (audio analysis windows for the models; defined in `core.processor`, where the
processors that consume it can see it, and re-exported here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from water_edge.core.health import Health
from water_edge.core.names import NAME_PATTERN
from water_edge.core.processor import WindowSource
from water_edge.core.reading import Reading

__all__ = [
    "DeviceConfig",
    "Driver",
    "DriverFactory",
    "Streaming",
    "StreamingDriver",
    "TagInfo",
    "WindowSource",
    "Writable",
]


class DeviceConfig(BaseModel):
    """Keys every `[[devices]]` section has; each driver subclasses this with its own keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    kind: str
    enabled: bool = True
    poll_interval_ms: int = Field(default=1000, ge=10, le=86_400_000)
    # MQTT stream (last topic level) the readings go to; defaults to the device name.
    stream: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)
    # Values held upstream (`agent.frozen_values`): a `values_frozen` event when no tag that has
    # moved changes for this long while the device answers. Off unless set.
    frozen_after_s: float | None = Field(default=None, ge=1, le=7 * 86_400)

    @model_validator(mode="after")
    def _frozen_after_polls(self) -> Self:
        if self.frozen_after_s is not None and self.frozen_after_s * 1000 < 3 * self.poll_interval_ms:
            raise ValueError(
                f"frozen_after_s ({self.frozen_after_s:g}) must span at least 3 polls "
                f"(poll_interval_ms {self.poll_interval_ms}): a few unchanged polls are normal"
            )
        return self

    @property
    def stream_name(self) -> str:
        return self.stream or self.name

    def endpoint_text(self) -> str:
        """Where the device is reached, as `status` shows it (`10.0.0.5:502`, `/dev/ttyUSB0`)."""
        return ""

    def point_count(self) -> int:
        """The tags (or meters) configured: what `check-config` counts and sizes memory by."""
        return 0

    def serial_line(self) -> tuple[str, str] | None:
        """(port, protocol and line settings) of a device on a serial line that other devices may
        share: every device naming one port must describe it alike."""
        return None

    def serial_lines(self) -> list[tuple[str, str]]:
        """Every serial line the device uses, as `serial_line` (a device with several receivers
        names several)."""
        line = self.serial_line()
        return [] if line is None else [line]

    def tag_names(self) -> frozenset[str] | None:
        """Every tag the device's readings carry, or None when they are only known once read (a
        meter's records, a sound card's levels)."""
        return None

    def frozen_check_note(self) -> str | None:
        """Why `frozen_after_s` cannot judge this device as configured, if it cannot."""
        return None

    def unlearnt_tag_prefixes(self) -> tuple[str, ...]:
        """Tags, by prefix, that are observations rather than measurements the centre expects
        continuously (a receiver's survey of meters it is not configured for): the agent does not
        keep them among the tags the device has read (`agent.learnt_tags`), so they get no stand-in
        `bad` readings while the device is down; the device's own state says it is down."""
        return ()


@dataclass(frozen=True, slots=True)
class TagInfo:
    """What the supervisor needs to stand in a bad reading for a tag."""

    name: str
    unit: str = ""


class Driver(Protocol):
    """A polled device."""

    name: str

    def tags(self) -> Sequence[TagInfo]: ...

    async def open(self) -> None: ...

    async def read(self) -> list[Reading]: ...

    async def aclose(self) -> None: ...

    def health(self) -> Health: ...


@runtime_checkable
class Streaming(Protocol):
    """A device that pushes data (OPC UA subscriptions, audio levels) instead of being polled.

    The supervisor calls `open()`, then iterates `stream()`, submitting each list of readings as
    it comes; `read()` remains for one-shot reads (`edge-agent probe`). `stream()` raises
    `DriverIOError` when the device is lost; the supervisor then backs off and reopens.
    """

    def stream(self) -> AsyncIterator[list[Reading]]: ...


class StreamingDriver(Driver, Streaming, Protocol):
    """A driver with the `Streaming` capability."""


@runtime_checkable
class Writable(Protocol):
    """The opt-in write capability (Modbus TCP/RTU) that `agent.writes.WriteGuard` sits above.

    `write` sends holding registers or coils; `read_back` reads what the write left, so every
    write can be verified. Both raise `DriverError`s like `read()`."""

    async def write(
        self, unit_id: int, table: Any, address: int, registers_or_bits: Sequence[int] | Sequence[bool]
    ) -> None: ...

    async def read_back(
        self, unit_id: int, table: Any, address: int, count: int = 1
    ) -> list[int] | list[bool]: ...


class DriverFactory(Protocol):
    """What an `edge_agent.drivers` entry point names: a class with its config model."""

    config_model: ClassVar[type[DeviceConfig]]

    @classmethod
    def from_config(cls, config: Any) -> Self: ...
