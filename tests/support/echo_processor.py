"""A processor kind from outside the product, for tests: `[[models.echo]]` emits one `echo` event
per batch of its stream (of at least `min_readings`). `register(directory)` installs it the way a
plug-in distribution would: an `edge_agent.processors` entry point in a `.dist-info` on `sys.path`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from water_edge.core.names import NAME_PATTERN
from water_edge.core.processor import EventSink, Processor, ProcessorContext, ReadingSource
from water_edge.core.reading import Event


class EchoSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: str = Field(pattern=NAME_PATTERN)
    min_readings: int = Field(default=1, ge=1)  # smaller batches are counted, not echoed


@dataclass(frozen=True)
class EchoHealth:
    batches: int

    def status_lines(self) -> list[str]:
        return [f"{self.batches} batches echoed"]


class EchoProcessor:
    def __init__(self, section: EchoSection) -> None:
        self.name = f"echo:{section.stream}"
        self.streams = frozenset({section.stream})  # WantsStreams: only its own stream
        self.section = section
        self.batches = 0

    async def run(self, source: ReadingSource, emit: EventSink) -> None:
        async for stream, readings in source:
            self.batches += 1
            if len(readings) >= self.section.min_readings:
                await emit(Event("echo", stream, readings[0].ts_ns, "info", detail={"n": len(readings)}))

    def health(self) -> EchoHealth:
        return EchoHealth(self.batches)


class EchoFactory:
    config_model: ClassVar[type[BaseModel]] = EchoSection

    def __init__(self, sections: Sequence[EchoSection]) -> None:
        self.sections = list(sections)

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections)

    def processors(self) -> list[Processor]:
        return [EchoProcessor(s) for s in self.sections]


def register(directory: Path) -> Path:
    """Write the `.dist-info` of a distribution declaring the `echo` kind; put `directory` on sys.path."""
    info = directory / "echo_processor-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-processor\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[edge_agent.processors]\necho = tests.support.echo_processor:EchoFactory\n"
    )
    return directory
