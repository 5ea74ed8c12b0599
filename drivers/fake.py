"""A driver with no I/O, for unit tests and dry runs: each tag is a deterministic function of time.

`fail_after_reads` and `unreachable` let tests exercise the supervisor's down/up handling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from water_edge.core.errors import DriverIOError
from water_edge.core.names import NAME_PATTERN
from water_edge.core.reading import Reading, now_ns
from water_edge.drivers.base import DeviceConfig, TagInfo


class FakeTag(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    unit: str = ""
    # value = offset + amplitude * sin(2*pi*t/period_s); a constant when amplitude is 0
    offset: float = 0.0
    amplitude: float = 0.0
    period_s: float = Field(default=60.0, gt=0)


class FakeConfig(DeviceConfig):
    kind: Literal["fake"]
    tags: list[FakeTag] = Field(min_length=1)
    unreachable: bool = False
    fail_after_reads: int | None = Field(default=None, ge=0)

    def point_count(self) -> int:
        return len(self.tags)


@dataclass(frozen=True, slots=True)
class FakeHealth:
    """The fake driver's state (`core.health.Health`), under the device's `driver` in the status document."""

    open: bool
    reads: int

    def status_lines(self) -> list[str]:
        return [f"reads {self.reads}  open {'yes' if self.open else 'no'}"]


class FakeDriver:
    config_model: ClassVar[type[DeviceConfig]] = FakeConfig

    def __init__(self, config: FakeConfig) -> None:
        self.name = config.name
        self._config = config
        self._reads = 0
        self._open = False

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(config)

    def tags(self) -> Sequence[TagInfo]:
        return [TagInfo(t.name, t.unit) for t in self._config.tags]

    async def open(self) -> None:
        if self._config.unreachable:
            raise DriverIOError(f"{self.name}: unreachable (fake)")
        self._open = True

    async def read(self) -> list[Reading]:
        if not self._open:
            raise DriverIOError(f"{self.name}: not open")
        limit = self._config.fail_after_reads
        if limit is not None and self._reads >= limit:
            self._open = False
            raise DriverIOError(f"{self.name}: connection lost (fake)")
        self._reads += 1
        ts = now_ns()
        t = ts / 1e9
        return [
            Reading(
                self.name,
                tag.name,
                ts,
                tag.offset + tag.amplitude * math.sin(2 * math.pi * t / tag.period_s),
                "good",
                tag.unit,
            )
            for tag in self._config.tags
        ]

    async def aclose(self) -> None:
        self._open = False

    def health(self) -> FakeHealth:
        return FakeHealth(open=self._open, reads=self._reads)
